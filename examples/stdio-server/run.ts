/**
 * A stdio MCP server (@modelcontextprotocol/server-filesystem, confined to a temp directory) exposed over mTLS by the
 * agent, with nothing else listening, end to end with the real `mcpmesh` command:
 *
 *   node --import tsx examples/stdio-server/run.ts        # exits 0 when every check passes
 */
import { mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { Example, text, refusal } from "../_shared/harness.ts";

/** Inodes of the listening TCP sockets on this host (IPv4 and IPv6), from /proc/net. */
function listeningInodes(): Set<string> {
  const out = new Set<string>();
  for (const f of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    if (!existsSync(f)) continue;
    for (const line of readFileSync(f, "utf8").split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === "0A") out.add(cols[9]); // state 0A = LISTEN; column 10 = inode
    }
  }
  return out;
}

/** The pids whose parent is `pid`. */
function childrenOf(pid: number): number[] {
  return readdirSync("/proc").filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid;
    } catch {
      return false;
    }
  }).map(Number);
}

/** The socket inodes a process holds open. */
function socketInodes(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1];
    } catch {
      return undefined;
    }
  }).filter((x): x is string => x !== undefined);
}

const ex = new Example("stdio-server");
await ex.run(async () => {
  ex.say("1. a directory to share, and nothing else");
  const shared = join(ex.dir, "shared");
  mkdirSync(shared);
  writeFileSync(join(shared, "hello.txt"), "hello from the filesystem server\n");
  writeFileSync(join(ex.dir, "secret.txt"), "outside the shared directory\n");

  ex.say("2. a CA; the agent; a reader and an editor");
  const { caDir, caUrl } = await ex.startCa("example.org");
  await ex.enroll(caDir, "agents/files", "agent", "agent-id");
  const readerDir = await ex.enroll(caDir, "team/reader");
  const editorDir = await ex.enroll(caDir, "team/editor");

  ex.say("3. the agent runs the filesystem server as its stdio child (examples/stdio-server/agent.yaml)");
  const serverJs = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-filesystem/dist/index.js");
  const { url, agent } = await ex.startAgent(join(import.meta.dirname, "agent.yaml"), { ca: caUrl, upstream: { command: [process.execPath, serverJs, shared], cwd: ex.dir } });

  ex.say("4. the reader");
  const reader = await ex.client(url, readerDir);
  const tools = (await reader.listTools()).tools.map((t) => t.name);
  ex.check(tools.includes("read_text_file") && !tools.includes("write_file"), `sees read tools only (${tools.length}: ${tools.slice(0, 4).join(", ")}, ...)`);
  ex.check(text(await reader.callTool({ name: "read_text_file", arguments: { path: join(shared, "hello.txt") } })).includes("hello from the filesystem server"), "reads a shared file through the agent");
  ex.check((await refusal(reader.callTool({ name: "write_file", arguments: { path: join(shared, "x.txt"), content: "x" } }))) === -32602, "write_file is refused");
  const outside = await refusal(reader.callTool({ name: "read_text_file", arguments: { path: join(ex.dir, "secret.txt") } }));
  ex.check(String(outside).startsWith("isError") && !String(outside).includes("outside the shared directory"), "a file outside the shared directory stays out of reach (the server's own confinement)");

  ex.say("5. the editor");
  const editor = await ex.client(url, editorDir);
  await editor.callTool({ name: "write_file", arguments: { path: join(shared, "notes.txt"), content: "written over mTLS" } });
  ex.check(readFileSync(join(shared, "notes.txt"), "utf8") === "written over mTLS", "writes a file");

  ex.say("6. nothing but the agent listens");
  const listening = listeningInodes();
  const kids = childrenOf(agent.child.pid!);
  ex.check(kids.length >= 1, `the agent supervises its stdio child (pid ${kids.join(", ")})`);
  const childListens = kids.flatMap((pid) => socketInodes(pid)).filter((i) => listening.has(i));
  ex.check(childListens.length === 0, "the filesystem server holds no listening socket: its only channel is the agent's pipe");
  ex.check(socketInodes(agent.child.pid!).some((i) => listening.has(i)), "the agent holds the one listening (mTLS) socket");
});

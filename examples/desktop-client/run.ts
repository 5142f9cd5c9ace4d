/**
 * Desktop clients and SDK apps reaching an agent, end to end with the real `mcpmesh` command: the snippets in this
 * directory (Claude Desktop, Cursor, VS Code) are started exactly as those clients start them — a stdio MCP server
 * `mcpmesh connect ...` — by the MCP SDK's stdio client; `mcpmesh connect --print-config` is checked against them;
 * and app.ts (createMeshFetch + StreamableHTTPClientTransport) runs as its own process.
 *
 *   node --import tsx examples/desktop-client/run.ts        # exits 0 when every check passes
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { Example, BIN, REPO, text } from "../_shared/harness.ts";

const AGENT_ID = "spiffe://example.org/agents/notes";

interface StdioServer {
  type?: string;
  command: string;
  args: string[];
}

/** The snippet's server, with its placeholders pointed at this run's agent and identity. */
function fromSnippet(file: string, key: "mcpServers" | "servers", url: string, identityDir: string): StdioServer {
  const json = JSON.parse(readFileSync(join(import.meta.dirname, file), "utf8")) as Record<string, Record<string, StdioServer>>;
  const s = json[key].notes;
  const args = s.args.map((a) => (a === "https://127.0.0.1:8443/mcp" ? url : a === "/home/me/.mcpmesh/writer-id" ? identityDir : a));
  return { ...s, args };
}

const ex = new Example("desktop-client");
await ex.run(async () => {
  ex.say("1. the notes server behind an agent (as in examples/notes-server)");
  const server = await ex.start([process.execPath, "--import", "tsx", join(REPO, "examples", "notes-server", "server.ts"), "0"], /notes MCP server on (\S+)/, "notes server");
  const { caDir, caUrl } = await ex.startCa("example.org");
  await ex.enroll(caDir, "agents/notes", "agent", "agent-id");
  const writer = await ex.enroll(caDir, "team/writer");
  const { url } = await ex.startAgent(join(REPO, "examples", "notes-server", "agent.yaml"), { ca: caUrl, upstream: { url: server.ready } });

  ex.say("2. each desktop snippet, started as the client starts it (a stdio server)");
  for (const [file, key] of [["claude_desktop_config.json", "mcpServers"], ["cursor-mcp.json", "mcpServers"], ["vscode-mcp.json", "servers"]] as const) {
    const s = fromSnippet(file, key, url, writer);
    // `mcpmesh` on PATH is this checkout's bin/mcpmesh.js.
    const transport = new StdioClientTransport({ command: s.command === "mcpmesh" ? process.execPath : s.command, args: s.command === "mcpmesh" ? [BIN, ...s.args] : s.args, stderr: "pipe", env: ex.env as Record<string, string> });
    const client = new Client({ name: `snippet-${file}`, version: "1.0.0" });
    await client.connect(transport);
    const tools = (await client.listTools()).tools.map((t) => t.name).sort();
    const notes = text(await client.callTool({ name: "list-notes", arguments: {} }));
    await client.close();
    ex.check(tools.join(",") === "add-note,list-notes,read-note" && notes.includes("welcome"), `${file}: through mcpmesh connect the writer sees ${tools.join(", ")} and lists the notes`);
  }

  ex.say("3. mcpmesh connect --print-config writes the same snippets");
  for (const [client, key] of [["claude", "mcpServers"], ["cursor", "mcpServers"], ["vscode", "servers"]] as const) {
    const printed = JSON.parse(await ex.mcpmesh(["connect", "--print-config", client, "--identity", writer, "--expect", AGENT_ID, "--name", "notes", url])) as Record<string, Record<string, StdioServer>>;
    const s = printed[key]?.notes;
    ex.check(s && s.args.includes("connect") && s.args.includes(url) && s.args.includes(writer) && s.args.includes(AGENT_ID) && (key !== "servers" || s.type === "stdio"), `--print-config ${client}: ${key}.notes runs ${s ? "connect " + url : "(missing)"}`);
  }

  ex.say("4. an SDK app with the mesh fetch (app.ts)");
  const app = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "app.ts"), url, writer, AGENT_ID], { cwd: REPO, env: ex.env });
  let out = "";
  app.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
  app.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
  const code = await new Promise<number | null>((r) => app.on("close", (c) => r(c)));
  ex.check(code === 0 && out.includes("tools: ") && out.includes("list-notes: \"welcome"), `app.ts: ${out.trim().split("\n").join(" / ")}`);
  const wrong = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "app.ts"), url, writer, "spiffe://example.org/agents/other"], { cwd: REPO, env: ex.env });
  const wrongCode = await new Promise<number | null>((r) => wrong.on("close", (c) => r(c)));
  ex.check(wrongCode !== 0, "app.ts refuses an agent that is not the expected SPIFFE ID");
});

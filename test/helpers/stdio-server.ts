/**
 * A real MCP server (the SDK's McpServer) over stdio, for the agent's `upstream.command`. Run it as
 * `node --import tsx test/helpers/stdio-server.ts` (see `stdioServerCommand()`). Same tools as startMcpServer, plus
 * stdio-only tools for supervision tests:
 * - `crash {code?}`: exits the process mid-call (default code 1), the response never comes.
 * - `pid`: the process id, so tests can see a restart (new pid) and check the child is gone after close.
 * - `env {name}`: the value of one environment variable, or "<unset>" (the env policy test).
 * - `stderr {lines, length?}`: writes that many lines of `length` "x" to stderr (rate bounding of the log).
 * - `stdout-noise`: writes a line that is not JSON-RPC to stdout (must be dropped by the agent, never forwarded).
 * - `stdout-flood {bytes}`: writes that many bytes to stdout with no newline (an unbounded line).
 * - `stop-reading`: answers, then stops reading stdin (a stuck server).
 * - `hold-late`: like `hold`, but once released it answers even if the call was cancelled meanwhile (the SDK drops
 *   the answer to a cancelled request, so this one is written to stdout by hand), and appends `{"lateAnswer": id}` to
 *   the record file: an upstream that ignores `notifications/cancelled`.
 * - `slow-progress {steps, everyMs}`: answers after steps × everyMs, sending a progress notification at each step if
 *   the call carries a progressToken (and nothing otherwise).
 * - `notify-flood {count, bytes}`: sends that many logging notifications of `bytes` "x" each (waiting for stdout's
 *   drain, as the SDK does), then answers how many it sent; stops early, answering, if stdout breaks.
 * - `sample {prompt}`: sends the client a sampling request (sampling/createMessage) and returns its text.
 * - `release-held`, `change-description {tool, description}`: what startMcpServer offers as methods, as tools here.
 *
 * Environment: `MCPMESH_TEST_RECORD` = a file to which every line received on stdin is appended as one JSON line
 * (the parsed message, or `{"unparsed": line}`), so tests prove nothing denied reached it;
 * `MCPMESH_TEST_CRASH_IF` = a file path: if that file exists when the process starts, it exits at once with code 3
 * (a crash loop the test can switch on and off); `MCPMESH_TEST_IGNORE_SIGTERM=1`: SIGTERM and stdin EOF are ignored.
 */
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { z } from "zod";
import { McpServer, type RegisteredTool } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { buildTestServer, newToolState, releaseHeld, TEST_SERVER_INFO, TEST_SERVER_OPTIONS } from "./test-tools.ts";

/** The path of this script. */
export const STDIO_SERVER_SCRIPT = fileURLToPath(import.meta.url);

/** `upstream.command` that runs this fixture: the current node with tsx (by absolute URL: any cwd works). */
export function stdioServerCommand(): string[] {
  return [process.execPath, "--import", import.meta.resolve("tsx"), STDIO_SERVER_SCRIPT];
}

/** Everything the fixture processes recorded in `file` (all processes append to the same file). */
export function readStdioRecord(file: string): { messages: any[]; rpcMethods: string[]; toolCalls: string[] } {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    // nothing recorded yet
  }
  const messages = text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
  return {
    messages,
    rpcMethods: messages.map((m) => m?.method).filter((m): m is string => typeof m === "string"),
    toolCalls: messages.filter((m) => m?.method === "tools/call").map((m) => m?.params?.name),
  };
}

async function main(): Promise<void> {
  const crashIf = process.env.MCPMESH_TEST_CRASH_IF;
  if (crashIf && existsSync(crashIf)) {
    process.stderr.write(`stdio-server: crash-at-start pid=${process.pid}\n`);
    process.exit(3);
  }
  const recordFile = process.env.MCPMESH_TEST_RECORD;
  if (recordFile) {
    let pending = "";
    process.stdin.on("data", (chunk: Buffer) => {
      pending += chunk.toString("utf8");
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl).replace(/\r$/, "");
        pending = pending.slice(nl + 1);
        if (line === "") continue;
        let rec: unknown;
        try {
          rec = JSON.parse(line);
        } catch {
          rec = { unparsed: line };
        }
        appendFileSync(recordFile, JSON.stringify(rec) + "\n");
      }
    });
  }

  const state = newToolState();
  const server = new McpServer(TEST_SERVER_INFO, TEST_SERVER_OPTIONS);
  const tools: Map<string, RegisteredTool> = buildTestServer(server, state);
  server.registerTool("crash", { description: "Exits the process mid-call", inputSchema: { code: z.number().int().min(0).max(255).optional() } },
    async ({ code }) => {
      process.stderr.write(`stdio-server: crashing pid=${process.pid}\n`);
      process.exit(code ?? 1);
    });
  server.registerTool("pid", { description: "The process id", inputSchema: {}, annotations: { readOnlyHint: true } },
    async () => ({ content: [{ type: "text", text: String(process.pid) }] }));
  server.registerTool("env", { description: "One environment variable", inputSchema: { name: z.string() }, annotations: { readOnlyHint: true } },
    async ({ name }) => ({ content: [{ type: "text", text: process.env[name] ?? "<unset>" }] }));
  server.registerTool("stderr", { description: "Writes lines to stderr", inputSchema: { lines: z.number().int().min(1).max(100_000), length: z.number().int().min(0).max(1_000_000).optional() } },
    async ({ lines, length }) => {
      const line = "x".repeat(length ?? 10) + "\n";
      for (let i = 0; i < lines; i++) process.stderr.write(line);
      return { content: [{ type: "text", text: `wrote ${lines}` }] };
    });
  server.registerTool("stdout-noise", { description: "Writes a non-JSON-RPC line to stdout", inputSchema: {} },
    async () => {
      process.stdout.write("this is not json-rpc\n");
      process.stdout.write(JSON.stringify({ hello: "not a jsonrpc message" }) + "\n");
      return { content: [{ type: "text", text: "noisy" }] };
    });
  server.registerTool("stdout-flood", { description: "Writes bytes to stdout without a newline", inputSchema: { bytes: z.number().int().min(1).max(100_000_000) } },
    async ({ bytes }) => {
      process.stdout.write("x".repeat(bytes));
      return { content: [{ type: "text", text: "flooded" }] };
    });
  server.registerTool("hold-late", { description: "Waits until released, then answers even if cancelled", inputSchema: {} },
    async (_args, extra) => {
      await new Promise<void>((resolve) => state.waiting.push(resolve));
      if (extra.signal.aborted) {
        process.stdout.write(JSON.stringify({ jsonrpc: "2.0", id: extra.requestId, result: { content: [{ type: "text", text: "late" }] } }) + "\n");
        if (recordFile) appendFileSync(recordFile, JSON.stringify({ lateAnswer: extra.requestId }) + "\n");
      }
      return { content: [{ type: "text", text: "released" }] };
    });
  server.registerTool("slow-progress", { description: "Answers slowly, with progress at each step if asked", inputSchema: { steps: z.number().int().min(1).max(100), everyMs: z.number().int().min(1).max(10_000) } },
    async ({ steps, everyMs }, extra) => {
      const token = extra._meta?.progressToken;
      for (let i = 1; i <= steps; i++) {
        await new Promise((r) => setTimeout(r, everyMs));
        if (token !== undefined) await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress: i, total: steps } });
      }
      return { content: [{ type: "text", text: `done after ${steps} steps` }] };
    });
  server.registerTool("notify-flood", { description: "Sends many large logging notifications", inputSchema: { count: z.number().int().min(1).max(100_000), bytes: z.number().int().min(1).max(1_000_000) } },
    async ({ count, bytes }) => {
      const data = "x".repeat(bytes);
      let sent = 0;
      try {
        for (; sent < count; sent++) await server.server.sendLoggingMessage({ level: "info", data: { seq: sent, data } });
      } catch {
        // stdout closed: the agent ended the session
      }
      return { content: [{ type: "text", text: `sent ${sent}` }] };
    });
  server.registerTool("stop-reading", { description: "Stops reading stdin (after answering)", inputSchema: {} },
    async () => {
      setImmediate(() => process.stdin.pause());
      return { content: [{ type: "text", text: "deaf" }] };
    });
  server.registerTool("sample", { description: "Asks the client to sample (server → client request)", inputSchema: { prompt: z.string() } },
    async ({ prompt }) => {
      const r = await server.server.createMessage({ messages: [{ role: "user", content: { type: "text", text: prompt } }], maxTokens: 16 });
      return { content: [{ type: "text", text: r.content.type === "text" ? r.content.text : `(${r.content.type})` }] };
    });
  server.registerTool("release-held", { description: "Releases every held call", inputSchema: {} },
    async () => {
      const n = state.waiting.length;
      releaseHeld(state);
      return { content: [{ type: "text", text: `released ${n}` }] };
    });
  server.registerTool("change-description", { description: "Changes a tool's description (list_changed)", inputSchema: { tool: z.string(), description: z.string() } },
    async ({ tool, description }) => {
      state.descriptions.set(tool, description);
      tools.get(tool)?.update({ description });
      return { content: [{ type: "text", text: "changed" }] };
    });

  const transport = new StdioServerTransport();
  if (process.env.MCPMESH_TEST_IGNORE_SIGTERM === "1") {
    // A stubborn server: only SIGKILL stops it.
    process.on("SIGTERM", () => process.stderr.write("stdio-server: ignoring SIGTERM\n"));
    // Stays up even once stdin is closed and nothing else is pending.
    setInterval(() => {}, 1 << 30);
  } else {
    // A stdio server lives as long as its client: stdin closed means the agent is gone.
    process.stdin.on("end", () => process.exit(0));
  }
  await server.connect(transport);
  process.stderr.write(`stdio-server: started pid=${process.pid}\n`);
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  main().catch((e) => {
    process.stderr.write(`stdio-server: ${(e as Error).stack}\n`);
    process.exit(70);
  });
}

import { createServer, type IncomingMessage, type Server } from "node:http";
import { randomUUID } from "node:crypto";
import { z } from "zod";
import { McpServer, type RegisteredTool } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";

/** Every HTTP request the upstream received, raw: how tests prove that nothing denied reached it. */
export interface ReceivedRequest {
  method: string;
  headers: IncomingMessage["headers"];
  body: string;
  /** The JSON-RPC methods in the body (batch-aware), for convenient assertions. */
  rpcMethods: string[];
  /** tools/call tool names in the body. */
  toolCalls: string[];
}

export interface TestMcpServer {
  url: string;
  port: number;
  received: ReceivedRequest[];
  /** Calls of the `hold` tool now waiting; `releaseHeld()` lets them all finish. */
  held(): number;
  releaseHeld(): void;
  /** Changes a tool's description on every live session and notifies list_changed (a "rug pull"). */
  changeDescription(tool: string, description: string): void;
  reset(): void;
  close(): Promise<void>;
}

/**
 * A real MCP server (the SDK's McpServer behind its StreamableHTTPServerTransport) on 127.0.0.1, stateful, with a
 * small set of tools covering read, write, identity-bound arguments and progress.
 */
export async function startMcpServer(opts: { socketPath?: string } = {}): Promise<TestMcpServer> {
  const received: ReceivedRequest[] = [];
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const registered: Map<string, RegisteredTool>[] = [];
  const descriptions = new Map<string, string>();
  let waiting: (() => void)[] = [];
  const releaseHeld = () => {
    const w = waiting;
    waiting = [];
    for (const r of w) r();
  };

  const build = () => {
    const server = new McpServer({ name: "test-upstream", version: "1.0.0" }, { capabilities: { tools: { listChanged: true }, logging: {} } });
    const tools = new Map<string, RegisteredTool>();
    tools.set("echo", server.registerTool("echo", { description: descriptions.get("echo") ?? "Echoes its input", inputSchema: { text: z.string().max(1000) }, annotations: { readOnlyHint: true } },
      async ({ text }) => ({ content: [{ type: "text", text }] })));
    tools.set("get-weather", server.registerTool("get-weather", { description: "Weather for a city", inputSchema: { city: z.string() }, annotations: { readOnlyHint: true } },
      async ({ city }) => ({ content: [{ type: "text", text: `sunny in ${city}` }] })));
    tools.set("add", server.registerTool("add", { description: "Adds two numbers", inputSchema: { a: z.number(), b: z.number() } },
      async ({ a, b }) => ({ content: [{ type: "text", text: String(a + b) }] })));
    tools.set("delete-file", server.registerTool("delete-file", { description: "Deletes a file", inputSchema: { path: z.string() }, annotations: { readOnlyHint: false, destructiveHint: true } },
      async ({ path }) => ({ content: [{ type: "text", text: `deleted ${path}` }] })));
    tools.set("tenant-report", server.registerTool("tenant-report", { description: "Report for one tenant", inputSchema: { tenant: z.string(), month: z.string().optional() } },
      async ({ tenant }) => ({ content: [{ type: "text", text: `report for ${tenant}` }] })));
    tools.set("slow-count", server.registerTool("slow-count", { description: "Counts with progress", inputSchema: { steps: z.number().int().min(1).max(10) } },
      async ({ steps }, extra) => {
        const token = extra._meta?.progressToken;
        for (let i = 1; i <= steps; i++) {
          if (token !== undefined) await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress: i, total: steps } });
        }
        await server.server.sendLoggingMessage({ level: "info", data: `counted to ${steps}` }, extra.sessionId);
        return { content: [{ type: "text", text: `counted ${steps}` }] };
      }));
    tools.set("hold", server.registerTool("hold", { description: "Waits until the test releases it", inputSchema: {} },
      async () => {
        await new Promise<void>((resolve) => waiting.push(resolve));
        return { content: [{ type: "text", text: "released" }] };
      }));
    registered.push(tools);
    return server;
  };

  const httpServer: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    let parsed: any;
    try {
      parsed = body ? JSON.parse(body) : undefined;
    } catch {
      parsed = undefined;
    }
    const msgs = Array.isArray(parsed) ? parsed : parsed ? [parsed] : [];
    received.push({
      method: req.method ?? "",
      headers: req.headers,
      body,
      rpcMethods: msgs.map((m: any) => m?.method).filter((m: unknown) => typeof m === "string"),
      toolCalls: msgs.filter((m: any) => m?.method === "tools/call").map((m: any) => m?.params?.name),
    });
    const sid = req.headers["mcp-session-id"];
    let transport = typeof sid === "string" ? transports.get(sid) : undefined;
    if (!transport) {
      if (typeof sid === "string" || req.method !== "POST") {
        res.writeHead(404, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32001, message: "Session not found" } }));
        return;
      }
      const t: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => {
          transports.set(id, t);
        },
      });
      t.onclose = () => {
        if (t.sessionId) transports.delete(t.sessionId);
      };
      await build().connect(t);
      transport = t;
    }
    await transport.handleRequest(req, res, parsed);
  });
  await new Promise<void>((resolve) => (opts.socketPath ? httpServer.listen(opts.socketPath, () => resolve()) : httpServer.listen(0, "127.0.0.1", () => resolve())));
  const port = opts.socketPath ? 0 : (httpServer.address() as { port: number }).port;
  return {
    url: opts.socketPath ? "http://localhost/mcp" : `http://127.0.0.1:${port}/mcp`,
    port,
    received,
    changeDescription(tool, description) {
      descriptions.set(tool, description);
      for (const tools of registered) tools.get(tool)?.update({ description });
    },
    reset() {
      received.length = 0;
    },
    held: () => waiting.length,
    releaseHeld,
    async close() {
      releaseHeld();
      for (const t of transports.values()) await t.close().catch(() => {});
      await new Promise<void>((resolve) => {
        httpServer.close(() => resolve());
        httpServer.closeAllConnections();
      });
    },
  };
}

import { createServer, type IncomingMessage, type Server } from "node:http";
import { randomUUID } from "node:crypto";
import { McpServer, type RegisteredTool } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { buildTestServer, newToolState, releaseHeld as releaseHeldCalls, TEST_SERVER_INFO, TEST_SERVER_OPTIONS } from "./test-tools.ts";

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

/** Appends one HTTP request to a `received` list; returns the parsed JSON body (undefined if none or not JSON). */
export function recordRequest(received: ReceivedRequest[], req: IncomingMessage, body: string): any {
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
  return parsed;
}

/**
 * A real MCP server (the SDK's McpServer behind its StreamableHTTPServerTransport) on 127.0.0.1, stateful, with a
 * small set of tools covering read, write, identity-bound arguments and progress.
 */
export async function startMcpServer(opts: { socketPath?: string } = {}): Promise<TestMcpServer> {
  const received: ReceivedRequest[] = [];
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const registered: Map<string, RegisteredTool>[] = [];
  const state = newToolState();
  const releaseHeld = () => releaseHeldCalls(state);

  const build = () => {
    const server = new McpServer(TEST_SERVER_INFO, TEST_SERVER_OPTIONS);
    registered.push(buildTestServer(server, state));
    return server;
  };

  const httpServer: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const parsed = recordRequest(received, req, body);
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
      state.descriptions.set(tool, description);
      for (const tools of registered) tools.get(tool)?.update({ description });
    },
    reset() {
      received.length = 0;
    },
    held: () => state.waiting.length,
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

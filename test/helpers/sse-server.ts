import { createServer, type Server, type ServerResponse } from "node:http";
import { McpServer, type RegisteredTool } from "@modelcontextprotocol/sdk/server/mcp.js";
import { SSEServerTransport } from "@modelcontextprotocol/sdk/server/sse.js";
import { recordRequest, type ReceivedRequest, type TestMcpServer } from "./mcp-server.ts";
import { buildTestServer, newToolState, releaseHeld as releaseHeldCalls, TEST_SERVER_INFO, TEST_SERVER_OPTIONS } from "./test-tools.ts";

export interface TestSseMcpServer extends TestMcpServer {
  /** The number of SSE streams now open. */
  streams(): number;
  /** Ends every open SSE stream abruptly (destroys the sockets): an upstream that drops the stream. */
  dropStreams(): void;
}

/**
 * A real MCP server (the SDK's McpServer) over the legacy HTTP+SSE transport (2024-11-05, the SDK's
 * SSEServerTransport) on 127.0.0.1: `GET /sse` opens a session's stream, `POST /messages?sessionId=` carries the
 * client's messages. Same tools and the same `received` recorder as startMcpServer; `url` is the `/sse` URL.
 */
export async function startSseMcpServer(opts: { socketPath?: string } = {}): Promise<TestSseMcpServer> {
  const received: ReceivedRequest[] = [];
  const transports = new Map<string, { transport: SSEServerTransport; res: ServerResponse }>();
  const registered: Map<string, RegisteredTool>[] = [];
  const state = newToolState();
  const releaseHeld = () => releaseHeldCalls(state);

  const httpServer: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const parsed = recordRequest(received, req, body);
    const url = new URL(req.url ?? "/", "http://localhost");
    if (req.method === "GET" && url.pathname === "/sse") {
      const transport = new SSEServerTransport("/messages", res);
      transports.set(transport.sessionId, { transport, res });
      transport.onclose = () => transports.delete(transport.sessionId);
      const server = new McpServer(TEST_SERVER_INFO, TEST_SERVER_OPTIONS);
      registered.push(buildTestServer(server, state));
      await server.connect(transport);
      return;
    }
    if (req.method === "POST" && url.pathname === "/messages") {
      const entry = transports.get(url.searchParams.get("sessionId") ?? "");
      if (!entry) {
        res.writeHead(404, { "content-type": "text/plain" }).end("Session not found");
        return;
      }
      if (parsed === undefined) {
        res.writeHead(400, { "content-type": "text/plain" }).end("Invalid JSON");
        return;
      }
      await entry.transport.handlePostMessage(req, res, parsed);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("Not found");
  });
  await new Promise<void>((resolve) => (opts.socketPath ? httpServer.listen(opts.socketPath, () => resolve()) : httpServer.listen(0, "127.0.0.1", () => resolve())));
  const port = opts.socketPath ? 0 : (httpServer.address() as { port: number }).port;
  return {
    url: opts.socketPath ? "http://localhost/sse" : `http://127.0.0.1:${port}/sse`,
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
    streams: () => transports.size,
    dropStreams() {
      for (const { res } of transports.values()) res.socket?.destroy();
    },
    async close() {
      releaseHeld();
      for (const { transport } of transports.values()) await transport.close().catch(() => {});
      await new Promise<void>((resolve) => {
        httpServer.close(() => resolve());
        httpServer.closeAllConnections();
      });
    },
  };
}

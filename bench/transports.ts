/**
 * Per-call latency of every downstream × upstream transport pair: the real SDK client (Streamable HTTP, legacy SSE,
 * WebSocket over mTLS) through a real `mcpmesh agent run` to the test McpServer over Streamable HTTP, legacy SSE and
 * stdio; sequential `echo` calls after 20 warm-up calls, median and p95.
 *
 *   N=200 node --import tsx bench/transports.ts
 *
 * Uses the test fixtures (test/helpers): a throwaway mesh in a temp dir, everything on loopback.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { createMesh } from "../test/helpers/mesh.ts";
import { startMcpServer } from "../test/helpers/mcp-server.ts";
import { startSseMcpServer } from "../test/helpers/sse-server.ts";
import { stdioServerCommand } from "../test/helpers/stdio-server.ts";
import { startAgentProcess } from "../test/helpers/agent-process.ts";
import { OneMessagePerTask } from "../test/helpers/one-message-per-task.ts";
import { MeshWebSocketTransport } from "../identity/ws-transport.ts";
import { createMeshFetch } from "../identity/fetch.ts";

const N = Number(process.env.N ?? 200);
const mesh = await createMesh();
const alice = await mesh.issue("team-a/alice");
const agentDir = await mesh.issue("agents/b", { kind: "agent" });
const http = await startMcpServer();
const sse = await startSseMcpServer();
const ups: Record<string, unknown> = { http: { url: http.url }, sse: { sse: sse.url }, stdio: { command: stdioServerCommand() } };
for (const [up, cfg] of Object.entries(ups)) {
  const agent = await startAgentProcess(mesh.dir, { listen: "127.0.0.1:0", identity: agentDir, upstream: cfg, rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }] }, { env: { MCPMESH_LOG_LEVEL: "info" } });
  for (const down of ["streamable-http", "sse", "ws"]) {
    const f = createMeshFetch(alice);
    const base = agent.url;
    const t = down === "streamable-http" ? new StreamableHTTPClientTransport(new URL(base), { fetch: f })
      : down === "sse" ? new OneMessagePerTask(new SSEClientTransport(new URL(base.replace(/\/mcp$/, "/sse")), { fetch: f }))
      : new OneMessagePerTask(new MeshWebSocketTransport(new URL(base.replace(/\/mcp$/, "/ws").replace("https:", "wss:")), alice));
    const c = new Client({ name: "b", version: "1" });
    await c.connect(t);
    for (let i = 0; i < 20; i++) await c.callTool({ name: "echo", arguments: { text: "w" } });
    const lat: number[] = [];
    for (let i = 0; i < N; i++) {
      const t0 = performance.now();
      await c.callTool({ name: "echo", arguments: { text: "x" } });
      lat.push(performance.now() - t0);
    }
    lat.sort((a, b) => a - b);
    console.log(`${down.padEnd(16)} → ${up.padEnd(6)} n=${N} median ${lat[Math.floor(N / 2)].toFixed(2)} ms  p95 ${lat[Math.floor(N * 0.95)].toFixed(2)} ms`);
    await c.close();
    await f.close();
  }
  await agent.stop();
}
await http.close();
await sse.close();
await mesh.close();

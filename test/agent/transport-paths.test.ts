/**
 * Where each endpoint's transports live: Streamable HTTP at `path`, legacy SSE and WebSocket next to it. Paths that
 * collide on one listener refuse to start, naming both endpoints; a second endpoint's transports work on its own paths.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { transportPaths } from "../../agent/agent.ts";
import { createMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rpc } from "../helpers/e2e.ts";
import { rawSse, rawWs } from "../helpers/raw-transports.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

const cleanups = new Cleanups();
after(() => cleanups.run());

test("transportPaths: a trailing /mcp segment is replaced, any other path gets the transports appended", () => {
  const table: [string, ReturnType<typeof transportPaths>][] = [
    ["/mcp", { mcp: "/mcp", sse: "/sse", sseMessage: "/sse/message", ws: "/ws" }],
    ["/team/mcp", { mcp: "/team/mcp", sse: "/team/sse", sseMessage: "/team/sse/message", ws: "/team/ws" }],
    ["/ro", { mcp: "/ro", sse: "/ro/sse", sseMessage: "/ro/sse/message", ws: "/ro/ws" }],
    ["/ro/", { mcp: "/ro/", sse: "/ro/sse", sseMessage: "/ro/sse/message", ws: "/ro/ws" }],
    ["/mcpx", { mcp: "/mcpx", sse: "/mcpx/sse", sseMessage: "/mcpx/sse/message", ws: "/mcpx/ws" }],
  ];
  for (const [path, expected] of table) assert.deepEqual(transportPaths(path), expected, path);
});

test("colliding transport paths refuse to start; each endpoint's SSE and WebSocket doors are its own", async () => {
  const mesh = await createMesh();
  cleanups.add(() => mesh.close());
  const up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/paths", { kind: "agent" });
  const ops = await mesh.issue("ops/olga");
  const TD = "spiffe://example.org";
  await assert.rejects(
    startAgentProcess(mesh.dir, {
      identity: agentDir,
      upstream: { url: up.url },
      endpoints: [
        { id: "main", listen: "127.0.0.1:0", rules: [{ clients: ["*"], tools: ["echo"] }] },
        { id: "clash", listen: "127.0.0.1:0", path: "/sse", rules: [{ clients: ["*"], tools: ["echo"] }] },
      ],
    }),
    /\/sse .*collides with the (sse|mcp) path of endpoint (main|clash)/,
  );

  const agent = await startAgentProcess(mesh.dir, {
    identity: agentDir,
    upstream: { url: up.url },
    endpoints: [
      { id: "read", listen: "127.0.0.1:0", rules: [{ clients: [`${TD}/team-a/*`], tools: ["echo"] }] },
      { id: "admin", listen: "127.0.0.1:0", path: "/admin/mcp", clients: [`${TD}/ops/*`], rules: [{ clients: ["*"], tools: ["*"] }] },
    ],
    pinning: { file: join(mesh.dir, "pins-paths.json") },
  });
  cleanups.add(() => agent.stop());
  const base = agent.url.replace(/\/mcp$/, "");
  // olga is admitted on admin only: its doors answer, the read endpoint's refuse her.
  const ws = await rawWs(`${base}/admin/ws`, ops);
  const init = rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } });
  ws.send(init);
  assert.equal((await ws.inbox.reply(init.id)).result.protocolVersion, "2025-06-18");
  await ws.close();
  const f = createMeshFetch(ops);
  cleanups.add(() => f.close());
  const sse = await rawSse(`${base}/admin/sse`, f);
  assert.match(sse.endpoint, /^\/admin\/sse\/message\?sessionId=/);
  sse.close();
  const refused = await rawWs(`${base}/ws`, ops).catch((e) => e);
  assert.equal(refused.status, 403);
  assert.equal((await f(`${base}/sse`)).status, 403);
  await agent.waitForLog((l) => l.event === "endpoint_refused" && l.endpoint === "read" && l.identity === `${TD}/ops/olga`);
});

/**
 * `mcpmesh connect` over each of the agent's downstream transports: `auto` on the legacy `/sse` path falls back
 * from Streamable HTTP to SSE (POST initialize answered 4xx, then the SSE GET, per the spec's backwards-compatibility
 * section), `--transport sse` goes straight to it, and `wss://…/ws` uses the WebSocket transport (subprotocol `mcp`).
 * Every way, the SDK client over stdio lists, calls, and is denied exactly as over Streamable HTTP.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rejection } from "../helpers/e2e.ts";
import { startConnectClient } from "../helpers/connect.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let alice: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  alice = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [
      { id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "get-*"] },
      { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

const cases: { name: string; url: () => string; args: string[]; kind: string; fallback: boolean }[] = [
  { name: "auto on /sse falls back to SSE", url: () => agent.url.replace(/\/mcp$/, "/sse"), args: [], kind: "sse", fallback: true },
  { name: "--transport sse", url: () => agent.url.replace(/\/mcp$/, "/sse"), args: ["--transport", "sse"], kind: "sse", fallback: false },
  { name: "wss:// → WebSocket", url: () => agent.url.replace(/\/mcp$/, "/ws").replace(/^https:/, "wss:"), args: ["--expect", `${TD}/agents/weather`], kind: "ws", fallback: false },
];

for (const c of cases) {
  test(`connect ${c.name}: list, call, denied call`, async () => {
    const p = await startConnectClient([c.url(), "--identity", alice, ...c.args]);
    after(() => p.close());
    assert.deepEqual((await p.client.listTools()).tools.map((t) => t.name).sort(), ["echo", "get-weather"]);
    assert.deepEqual((await p.client.callTool({ name: "get-weather", arguments: { city: "Porto" } })).content, [{ type: "text", text: "sunny in Porto" }]);
    const before = up.received.flatMap((r) => r.toolCalls).length;
    const e = await rejection(p.client.callTool({ name: "delete-file", arguments: { path: "/x" } }));
    assert.match(e.message, /Unknown tool: delete-file/);
    assert.equal(up.received.flatMap((r) => r.toolCalls).length, before);
    await p.waitForLog((l) => l.event === "agent_connected" && l.transport === c.kind);
    assert.equal(p.logs().some((l) => l.event === "transport_fallback"), c.fallback);
    assert.deepEqual(p.errors, []);
  });
}

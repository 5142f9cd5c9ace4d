/**
 * Network drops between `mcpmesh connect` and a running agent (a loopback TCP relay the test cuts and restores), and
 * agent restarts under the SSE and WebSocket transports:
 * - a drop the agent survives keeps the session (probed with ping, no second initialize reaches the upstream); the call
 *   in flight when the wire was cut gets an error, a call made while it is down waits and then goes through;
 * - over SSE and WebSocket, where the session dies with the stream, connect re-initializes on a new one.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect as netConnect, type Server, type Socket } from "node:net";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { freePort } from "../helpers/ports.ts";
import { rejection } from "../helpers/e2e.ts";
import { startConnectClient } from "../helpers/connect.ts";

const TD = "spiffe://example.org";

/** A TCP relay on a fixed loopback port that can be cut (listener closed, every connection reset) and restored. */
class CuttableWire {
  #server: Server | null = null;
  readonly #sockets = new Set<Socket>();
  constructor(
    readonly port: number,
    readonly target: number,
  ) {}
  async up(): Promise<void> {
    const server = createServer((client) => {
      const upstream = netConnect(this.target, "127.0.0.1");
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on("close", () => this.#sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => server.once("error", reject).listen(this.port, "127.0.0.1", () => resolve()));
    this.#server = server;
  }
  async down(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const s of this.#sockets) s.resetAndDestroy();
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}

async function fixture(): Promise<{ mesh: TestMesh; up: TestMcpServer; alice: string; config: Record<string, unknown>; port: number }> {
  const mesh = await createMesh();
  after(() => mesh.close());
  const up = await startMcpServer();
  after(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const port = await freePort();
  const config = {
    listen: `127.0.0.1:${port}`,
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "hold"] }],
  };
  return { mesh, up, alice, config, port };
}

const text = (r: Record<string, unknown>) => r.content;

test("a network drop the agent survives: the session is kept, the cut call gets an error, a call made meanwhile waits", async () => {
  const { mesh, up, alice, config, port } = await fixture();
  const agent = await startAgentProcess(mesh.dir, config);
  after(() => agent.stop());
  const wire = new CuttableWire(await freePort(), port);
  await wire.up();
  after(() => wire.down());
  const c = await startConnectClient([`https://127.0.0.1:${wire.port}/mcp`, "--identity", alice]);
  after(() => c.close());
  assert.deepEqual(text(await c.client.callTool({ name: "echo", arguments: { text: "one" } })), [{ type: "text", text: "one" }]);

  const held = c.client.callTool({ name: "hold", arguments: {} }, undefined, { timeout: 120_000 });
  while (up.held() === 0) await new Promise((r) => setTimeout(r, 20));
  await wire.down();
  const e = await rejection(held);
  assert.equal(e.code, -32002, e.message);

  const during = c.client.callTool({ name: "echo", arguments: { text: "two" } }, undefined, { timeout: 120_000 });
  await c.waitForLog((l) => l.event === "agent_connect_failed" && /ECONNREFUSED/.test(l.reason));
  await wire.up();
  assert.deepEqual(text(await during), [{ type: "text", text: "two" }]);
  await c.waitForLog((l) => l.event === "agent_reconnected" && l.session === "kept");
  assert.deepEqual(text(await c.client.callTool({ name: "echo", arguments: { text: "three" } })), [{ type: "text", text: "three" }]);
  assert.equal(c.logs().filter((l) => l.event === "agent_reinitialized").length, 0);
  const inits = up.received.filter((r) => r.rpcMethods.includes("initialize") && r.headers["x-mcpmesh-identity"] === `${TD}/team-a/alice`);
  assert.equal(inits.length, 1, "one session from start to end");
  assert.deepEqual(c.errors, []);
  up.releaseHeld();
});

for (const kind of ["sse", "ws"] as const) {
  test(`agent restart under ${kind}: connect opens a new stream, re-initializes, and calls work again`, async () => {
    const { mesh, up, alice, config, port } = await fixture();
    let agent: AgentProcess = await startAgentProcess(mesh.dir, config);
    after(() => agent.stop());
    const url = kind === "sse" ? `https://127.0.0.1:${port}/sse` : `wss://127.0.0.1:${port}/ws`;
    const c = await startConnectClient([url, "--identity", alice, "--transport", kind]);
    after(() => c.close());
    assert.deepEqual(text(await c.client.callTool({ name: "echo", arguments: { text: "before" } })), [{ type: "text", text: "before" }]);
    const held = c.client.callTool({ name: "hold", arguments: {} }, undefined, { timeout: 120_000 });
    while (up.held() === 0) await new Promise((r) => setTimeout(r, 20));
    agent.child.kill("SIGKILL");
    const e = await rejection(held);
    assert.equal(e.code, -32002, e.message);
    await c.waitForLog((l) => l.event === "agent_connect_failed");
    agent = await startAgentProcess(mesh.dir, config);
    await c.waitForLog((l) => l.event === "agent_reinitialized" && l.transport === kind, 60_000);
    assert.deepEqual(text(await c.client.callTool({ name: "echo", arguments: { text: "after" } })), [{ type: "text", text: "after" }]);
    assert.deepEqual(c.errors, []);
    up.releaseHeld();
  });
}

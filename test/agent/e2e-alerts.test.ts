/**
 * End to end: anomaly alerts from the real agent, delivered to a local webhook receiver. Thresholds are small and the
 * window long (10m), so each scripted pattern fires its alert by counts alone (no timing); normal traffic from
 * another identity fires nothing. The receiver refuses its first delivery, so the retry path is exercised too.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, meshRoots, rejection, tlsProbe, type MeshClient } from "../helpers/e2e.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let hook: Server;
const received: any[] = [];
let refusedFirst = false;
const ids: Record<string, string> = {};
const clients: Record<string, MeshClient> = {};

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  hook = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      if (!refusedFirst) {
        refusedFirst = true;
        res.writeHead(503).end();
        return;
      }
      received.push(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, "127.0.0.1", () => r()));
  cleanups.add(() => new Promise<void>((r) => hook.close(() => r())));
  const agentDir = await mesh.issue("agents/alerts", { kind: "agent" });
  for (const p of ["normal/alice", "spiky/sam", "probe/pat", "explore/eve", "write/will", "flood/fred"]) ids[p] = await mesh.issue(p);
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    tools: { echo: { access: "read" }, "get-weather": { access: "read" }, add: { access: "write" } },
    rules: [
      { id: "all", clients: ["normal", "spiky", "probe", "explore", "write"].map((t) => `${TD}/${t}/*`), tools: ["echo", "get-weather", "add"] },
      { id: "flood", clients: [`${TD}/flood/*`], tools: ["echo"], rate: "2/h" },
    ],
    alerts: {
      webhook: `http://127.0.0.1:${(hook.address() as { port: number }).port}/alerts`,
      retry: "20ms",
      window: "10m",
      spikeMinCalls: 8,
      spikeFactor: 2,
      failures: 3,
      handshakeFailures: 3,
      writeBurst: 3,
      firstUseAfter: 3,
      maxCalls: 50,
    },
    pinning: { file: join(mesh.dir, "pins-alerts.json") },
  });
  cleanups.add(() => agent.stop());
  for (const p of Object.keys(ids)) {
    clients[p] = await connectClient(agent.url, ids[p]);
    cleanups.add(() => clients[p].close());
  }
});

after(() => cleanups.run());

const echo = (p: string, text = "x") => clients[p].client.callTool({ name: "echo", arguments: { text } });

async function alertOf(kind: string, pred: (a: any) => boolean = () => true): Promise<any> {
  for (let i = 0; i < 400; i++) {
    const a = received.find((x) => x.alert === kind && pred(x));
    if (a) return a;
    await sleep(25);
  }
  throw new Error(`no ${kind} alert delivered; got ${JSON.stringify(received.map((x) => x.alert))}`);
}

test("normal traffic fires no alert", async () => {
  await echo("normal/alice");
  await echo("normal/alice");
  await clients["normal/alice"].client.callTool({ name: "get-weather", arguments: { city: "Oslo" } });
  await clients["normal/alice"].client.listTools();
  // Flush: a later alert from another identity proves the queue went past alice's traffic.
  for (let i = 0; i < 3; i++) await rejection(clients["probe/pat"].client.callTool({ name: "delete-file", arguments: { path: "/" } }));
  await alertOf("repeated_failures");
  assert.deepEqual(received.filter((a) => a.identity === `${TD}/normal/alice`), []);
  assert.equal(agent.logs().filter((l) => l.level === 55 && l.identity === `${TD}/normal/alice`).length, 0);
});

test("repeated authorization failures: identity, window and numbers", async () => {
  const a = await alertOf("repeated_failures");
  assert.equal(a.identity, `${TD}/probe/pat`);
  assert.equal(a.tool, "delete-file");
  assert.equal(a.count, 3);
  assert.equal(a.threshold, 3);
  assert.equal(a.window, "10m");
  assert.match(a.message, /3 authorization\/validation failures within 10m/);
  // The same event at the alert level in the agent's log.
  const l = await agent.waitForLog((x) => x.level === 55 && x.alert === "repeated_failures");
  assert.equal(l.identity, `${TD}/probe/pat`);
});

test("a spike of one tool against the identity's baseline", async () => {
  for (let i = 0; i < 8; i++) await echo("spiky/sam");
  const a = await alertOf("call_spike");
  assert.equal(a.identity, `${TD}/spiky/sam`);
  assert.equal(a.tool, "echo");
  assert.equal(a.count, 8);
  assert.equal(a.baseline, 0);
});

test("first use of a tool after the learning period", async () => {
  for (let i = 0; i < 3; i++) await echo("explore/eve");
  await clients["explore/eve"].client.callTool({ name: "get-weather", arguments: { city: "Rome" } });
  const a = await alertOf("first_tool_use");
  assert.equal(a.identity, `${TD}/explore/eve`);
  assert.equal(a.tool, "get-weather");
  assert.deepEqual(a.detail.knownTools, ["echo"]);
});

test("a burst of write calls", async () => {
  for (let i = 0; i < 3; i++) await clients["write/will"].client.callTool({ name: "add", arguments: { a: i, b: i } });
  const a = await alertOf("write_burst");
  assert.equal(a.identity, `${TD}/write/will`);
  assert.equal(a.tool, "add");
  assert.equal(a.count, 3);
});

test("calls beyond the configured rate: a volume no rule anticipated", async () => {
  await echo("flood/fred");
  await echo("flood/fred");
  const e = await rejection(echo("flood/fred"));
  assert.equal(e.code, -32029);
  const a = await alertOf("unanticipated_volume");
  assert.equal(a.identity, `${TD}/flood/fred`);
  assert.equal(a.tool, "echo");
  assert.equal(a.detail.scope, "rule");
});

test("repeated handshake failures from one address", async () => {
  for (let i = 0; i < 3; i++) await tlsProbe(agent.url, { ca: meshRoots(mesh) });
  const a = await alertOf("handshake_failures");
  assert.equal(a.remote, "127.0.0.1");
  assert.equal(a.count, 3);
  assert.equal(a.detail.lastReason, "no_client_certificate");
});

test("each alert was delivered once, after a refused first delivery was retried", () => {
  assert.ok(refusedFirst);
  const kinds = received.map((a) => a.alert).sort();
  assert.deepEqual(kinds, ["call_spike", "first_tool_use", "handshake_failures", "repeated_failures", "unanticipated_volume", "write_burst"]);
});

/**
 * End to end: abuse of connections and sessions. Slowloris on the TLS handshake (TCP connections that send a few
 * bytes of a ClientHello, then nothing) and on the HTTP headers (authenticated connections that dribble a header line)
 * do not starve a legitimate SDK client; the timeouts close them. Caps: connections per identity, sessions per
 * identity, connections in total — each refusal logged, the agent serving again once load drops.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect as tcpConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, rawPost, rpc } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
const ids: Record<string, string> = {};
let port: number;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/abuse", { kind: "agent" });
  for (const p of ["team-a/alice", "team-a/mallory", "team-a/sam"]) ids[p] = await mesh.issue(p);
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    limits: { maxConnections: 300, maxConnectionsPerIdentity: 8, maxSessionsPerIdentity: 3 },
    rules: [{ clients: [`${TD}/team-a/*`], tools: ["echo"] }],
    pinning: { file: `${mesh.dir}/pins-abuse.json` },
  });
  cleanups.add(() => agent.stop());
  port = Number(new URL(agent.url).port);
});

after(() => cleanups.run());

function tracked<T extends Socket>(s: T): T & { gone: Promise<void> } {
  const closed = new Promise<void>((resolve) => s.once("close", () => resolve()));
  s.on("error", () => {});
  cleanups.add(() => s.destroy());
  return Object.assign(s, { gone: closed });
}

function tlsAs(who: string): Promise<TLSSocket & { gone: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const s = tracked(
      tlsConnect({ host: "127.0.0.1", port, ca: readFileSync(join(ids[who], "ca.pem")), cert: readFileSync(join(ids[who], "cert.pem")), key: readFileSync(join(ids[who], "key.pem")), checkServerIdentity: () => undefined }),
    );
    s.once("secureConnect", () => resolve(s));
    s.once("error", reject);
  });
}

async function echoWorks(who: string): Promise<void> {
  const c = await connectClient(agent.url, ids[who]);
  try {
    const r = await c.client.callTool({ name: "echo", arguments: { text: "still here" } });
    assert.deepEqual(r.content, [{ type: "text", text: "still here" }]);
  } finally {
    await c.close();
  }
}

test("slowloris on the handshake and on the headers does not starve a legitimate client; timeouts close them", async () => {
  // 150 TCP connections stuck in the handshake: a TLS record header and two bytes, then silence.
  const hand = Array.from({ length: 150 }, () => {
    const s = tracked(tcpConnect(port, "127.0.0.1"));
    s.on("connect", () => s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])));
    return s;
  });
  // Authenticated connections that send a header line every 500 ms and never finish the request (one over the cap).
  const slow: (TLSSocket & { gone: Promise<void> })[] = [];
  for (let i = 0; i < 9; i++) slow.push(await tlsAs("team-a/mallory"));
  const timers: NodeJS.Timeout[] = [];
  for (const s of slow) {
    s.write("POST /mcp HTTP/1.1\r\nHost: x\r\n");
    timers.push(setInterval(() => s.writable && s.write(`X-Slow-${Math.random().toString(16).slice(2)}: 1\r\n`), 500));
  }
  cleanups.add(() => timers.forEach(clearInterval));
  await agent.waitForLog((l) => l.event === "connection_limit" && l.limit === "maxConnectionsPerIdentity" && l.identity === `${TD}/team-a/mallory`);

  await echoWorks("team-a/alice");
  await echoWorks("team-a/sam");

  // The handshake timeout (10 s) and the headers timeout (10 s) end every one of them; nothing waits on a clock here
  // beyond the test runner's own limit.
  await Promise.all([...hand.map((s) => s.gone), ...slow.map((s) => s.gone)]);
  timers.forEach(clearInterval);
  await echoWorks("team-a/mallory");
});

test("sessions per identity are capped: the least recently used idle one makes room; with every one streaming, 429", async () => {
  const f = createMeshFetch(ids["team-a/sam"]);
  const init = () => rawPost(f, agent.url, rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "cap", version: "1" } }));
  const ping = (sid: string) => rawPost(f, agent.url, rpc("ping"), { "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18" });
  const streams: AbortController[] = [];
  try {
    const sids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await init();
      assert.equal(r.status, 200);
      sids.push(r.headers.get("mcp-session-id")!);
    }
    await agent.waitForLog((l) => l.event === "session_evicted" && l.identity === `${TD}/team-a/sam`);
    // The oldest is gone (the cap is 3), the three newest live.
    const statuses = [];
    for (const sid of sids) statuses.push((await ping(sid)).status);
    assert.equal(statuses.filter((s) => s === 404).length >= 1, true, JSON.stringify(statuses));
    assert.deepEqual(statuses.slice(-3), [200, 200, 200]);
    // Every live session holds an open stream: a new one cannot evict anything.
    for (const sid of sids.slice(-3)) {
      const ac = new AbortController();
      streams.push(ac);
      const res = await f(agent.url, { method: "GET", headers: { accept: "text/event-stream", "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18" }, signal: ac.signal });
      assert.equal(res.status, 200);
    }
    const before = up.received.length;
    const refused = await init();
    assert.equal(refused.status, 429);
    assert.equal(refused.messages[0].error.code, -32000);
    assert.match(refused.messages[0].error.message, /Too many sessions/);
    assert.deepEqual(up.received.slice(before).filter((r) => r.method === "POST"), [], "the refused initialize reached the upstream");
  } finally {
    for (const ac of streams) ac.abort();
    await f.close();
  }
  // Another identity is unaffected by sam's cap.
  await echoWorks("team-a/alice");
});

test("the total connection cap closes connections beyond it; the agent serves again once they are gone", async () => {
  const flood: (Socket & { gone: Promise<void> })[] = [];
  for (let i = 0; i < 300; i++) {
    const s = tracked(tcpConnect(port, "127.0.0.1"));
    await new Promise<void>((resolve) => {
      s.once("connect", () => resolve());
      s.once("close", () => resolve());
    });
    flood.push(s);
  }
  const extra = tracked(tcpConnect(port, "127.0.0.1"));
  await extra.gone;
  await agent.waitForLog((l) => l.event === "connection_limit" && l.limit === "maxConnections");
  for (const s of flood) s.destroy();
  await Promise.all(flood.map((s) => s.gone));
  await echoWorks("team-a/alice");
});

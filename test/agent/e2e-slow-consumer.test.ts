/**
 * End to end: a client of a message edge (legacy SSE, WebSocket, the Streamable HTTP bridge) that stops reading while the upstream keeps sending. These
 * edges relay a message channel, not one stream the agent could pause, so the agent bounds what it holds for the
 * client instead: past 16 × limits.maxBodyBytes queued, the session is ended with a `slow_consumer` warning, the
 * client's connection is closed, the upstream's stream for that session is released, and the agent keeps serving.
 * First the legacy SSE and WebSocket edges in front of a Streamable HTTP upstream (test/helpers/flood-upstream.ts:
 * 8192 × 16 KB notifications on its standalone stream, one stream at a time); then the Streamable HTTP edge in front of a stdio upstream (the agent's
 * message bridge), whose `notify-flood` tool sends 4000 × 16 KB logging notifications to the session's GET stream.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, type TLSSocket } from "node:tls";
import type { AgentProcess } from "../helpers/agent-process.ts";
import { startFloodAgent, type FloodUpstream } from "../helpers/flood-upstream.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rawSession } from "../helpers/e2e.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";
import { loadIdentity } from "../../identity/store.ts";
import { createMesh } from "../helpers/mesh.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { stdioServerCommand } from "../helpers/stdio-server.ts";
import { call } from "../helpers/e2e.ts";
import { rawWs } from "../helpers/raw-transports.ts";

const CAP = 16 * 1_048_576; // 16 × the default limits.maxBodyBytes

const cleanups = new Cleanups();
let up: FloodUpstream;
let agent: AgentProcess;
let alice: string;
let f: MeshFetch;

before(async () => {
  ({ up, agent, alice } = await startFloodAgent(cleanups, "slow-consumer"));
  f = createMeshFetch(alice);
  cleanups.add(() => f.close());
});

after(() => cleanups.run());

/** The session was ended once: one `slow_consumer` warning since `from`, at the cap, for `transport`. */
async function endedAtCap(a: AgentProcess, from: number, transport: string, identity: string, cap: number, slack: number): Promise<void> {
  const warned = await a.waitForLog((l) => l.event === "slow_consumer" && l.transport === transport, 120_000);
  assert.equal(warned.identity, identity);
  assert.equal(warned.limitBytes, cap);
  assert.ok(warned.queuedBytes > cap && warned.queuedBytes < cap + slack, `queued ${warned.queuedBytes} bytes when ended (cap ${cap})`);
  assert.equal(a.logs().slice(from).filter((l) => l.event === "slow_consumer").length, 1, "one warning per session");
}

/** The agent released the flood upstream's stream for the ended session before the upstream finished writing it. */
async function upstreamReleased(): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (up.open() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal(up.open(), 0, "the upstream's stream is still held open for a session that ended");
  assert.equal(up.finished, false, "the upstream wrote its whole stream: the agent kept taking it after the cap");
}

/** Opens GET /sse on a raw mTLS socket, reads up to the endpoint event, then stops reading (the socket is paused). */
function openUnreadSse(): Promise<{ sock: TLSSocket; messagePath: string; closed: Promise<void> }> {
  const id = loadIdentity(alice);
  const u = new URL(agent.url);
  return new Promise((resolve, reject) => {
    const sock = connect({ host: u.hostname, port: Number(u.port), cert: id.certPem, key: id.keyPem, ca: id.rootsPem, minVersion: "TLSv1.3", ALPNProtocols: ["http/1.1"] });
    cleanups.add(() => void sock.destroy());
    const closed = new Promise<void>((r) => sock.once("close", () => r()));
    let text = "";
    const onData = (d: Buffer) => {
      text += d.toString("latin1");
      const m = /event: endpoint\r?\ndata: (\S+)/.exec(text);
      if (!m) return;
      sock.off("data", onData);
      sock.pause();
      resolve({ sock, messagePath: m[1], closed });
    };
    sock.on("data", onData);
    sock.once("error", reject);
    sock.once("secureConnect", () => sock.write(`GET /sse HTTP/1.1\r\nhost: ${u.host}\r\naccept: text/event-stream\r\n\r\n`));
  });
}

test("a legacy SSE client that stops reading has its session ended at the cap; the upstream stream is released; others are served", { timeout: 180_000 }, async () => {
  const from = agent.logs().length;
  const { sock, messagePath, closed } = await openUnreadSse();
  const messageUrl = new URL(messagePath, agent.url).href;
  const post = (body: unknown) => f(messageUrl, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  assert.equal((await post({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2024-11-05", capabilities: {}, clientInfo: { name: "slow", version: "1" } } })).status, 202);
  assert.equal((await post({ jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);

  // The upstream now floods the session's standalone stream; the client reads nothing.
  await endedAtCap(agent, from, "sse", "spiffe://example.org/team-a/alice", CAP, 256 * 1024);
  await upstreamReleased();

  // The client's connection is closed (seen once it reads again), and its session is gone.
  sock.resume();
  await closed;
  const gone = await post({ jsonrpc: "2.0", id: 2, method: "ping" });
  assert.equal(gone.status, 404, "the ended session still accepts messages");

  // Everyone else is still served.
  const s = await rawSession(f, agent.url, "2025-06-18");
  const pong = await s.post({ jsonrpc: "2.0", id: 3, method: "ping" });
  assert.ok(pong.status < 300, `a new session after the slow consumer: HTTP ${pong.status}`);
});

test("a WebSocket client that stops reading has its session ended at the cap; the upstream stream is released", { timeout: 180_000 }, async () => {
  const deadline0 = Date.now() + 60_000;
  while (up.open() > 0 && Date.now() < deadline0) await new Promise((r) => setTimeout(r, 100)); // the SSE scenario's stream is gone
  const from = agent.logs().length;
  const writtenBefore = up.written;
  const c = await rawWs(agent.url.replace(/\/mcp$/, "/ws"), alice);
  cleanups.add(() => void c.ws.terminate());
  c.send({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "slow-ws", version: "1" } } });
  await c.inbox.reply(1);
  // Stop reading before the flood starts (it starts once the session is initialized).
  (c.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();
  c.send({ jsonrpc: "2.0", method: "notifications/initialized" });

  await endedAtCap(agent, from, "ws", "spiffe://example.org/team-a/alice", CAP, 256 * 1024);
  await upstreamReleased();
  assert.ok(up.written - writtenBefore < 100 * 1024 * 1024, `the upstream wrote ${up.written - writtenBefore} bytes for this session: the agent kept taking it after the cap`);

  (c.ws as unknown as { _socket: { resume(): void } })._socket.resume();
  const code = await c.closed;
  assert.notEqual(code, 1000, "a terminated socket, not a closing handshake");
});

test("a Streamable HTTP client of a stdio upstream that stops reading its GET stream has its session ended at the cap", { timeout: 180_000 }, async () => {
  const mesh = await createMesh();
  cleanups.add(() => mesh.close());
  const agentDir = await mesh.issue("agents/slow-stdio", { kind: "agent" });
  const bobDir = await mesh.issue("team-a/bob");
  const stdioAgent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { command: stdioServerCommand() },
    limits: { maxBodyBytes: 262_144 },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["*"] }],
    pinning: { file: `${mesh.dir}/pins-slow-stdio.json` },
  });
  cleanups.add(() => stdioAgent.stop());
  const cap = 16 * 262_144;
  const fb = createMeshFetch(bobDir);
  cleanups.add(() => fb.close());
  const s = await rawSession(fb, stdioAgent.url, "2025-06-18");
  assert.equal((await s.post({ jsonrpc: "2.0", id: 1, method: "tools/list", params: {} })).status, 200);

  // The GET stream, on a raw socket that stops reading once the response headers are in.
  const id = loadIdentity(bobDir);
  const u = new URL(stdioAgent.url);
  const sock = connect({ host: u.hostname, port: Number(u.port), cert: id.certPem, key: id.keyPem, ca: id.rootsPem, minVersion: "TLSv1.3", ALPNProtocols: ["http/1.1"] });
  cleanups.add(() => void sock.destroy());
  const closed = new Promise<void>((r) => sock.once("close", () => r()));
  await new Promise<void>((resolve, reject) => {
    let head = "";
    const onData = (d: Buffer) => {
      head += d.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      sock.off("data", onData);
      sock.pause();
      assert.match(head, /^HTTP\/1\.1 200/);
      resolve();
    };
    sock.on("data", onData);
    sock.once("error", reject);
    sock.once("secureConnect", () => sock.write(`GET ${u.pathname} HTTP/1.1\r\nhost: ${u.host}\r\naccept: text/event-stream\r\nmcp-session-id: ${s.sid}\r\nmcp-protocol-version: ${s.version}\r\n\r\n`));
  });

  const from = stdioAgent.logs().length;
  const flood = s.post(call("notify-flood", { count: 4000, bytes: 16_384 })).catch((e: Error) => e);
  await endedAtCap(stdioAgent, from, "streamable-http", "spiffe://example.org/team-a/bob", cap, 64 * 1024);
  await flood; // the call's own stream ends with the session
  assert.equal(stdioAgent.logs().slice(from).filter((l) => l.event === "slow_consumer").length, 1, "one warning per session");

  sock.resume();
  await closed;
  assert.equal((await s.post({ jsonrpc: "2.0", id: 3, method: "ping" })).status, 404, "the ended session still accepts messages");
  const again = await rawSession(fb, stdioAgent.url, "2025-06-18");
  const echo = await again.post(call("echo", { text: "still served" }));
  assert.equal(echo.status, 200);
  assert.match(JSON.stringify(echo.messages), /still served/);
});

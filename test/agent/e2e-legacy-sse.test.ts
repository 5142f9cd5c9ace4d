/**
 * End to end: the legacy HTTP+SSE edge (`/sse`, protocol 2024-11-05 style) of the real `mcpmesh agent run`, here in
 * front of a legacy SSE upstream (the SDK's SSEServerTransport). The endpoint event names the agent's own message
 * path, never the upstream's; POSTs are answered 202 and every answer, denials included, arrives on the client's
 * stream; a session is bound to the identity that opened it; bad input on the message path is refused the way the
 * Streamable HTTP edge refuses it; revoking the certificate closes the stream within a second; an upstream that drops
 * its stream gets the calls in flight answered with an error and the client's stream ended.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startSseMcpServer, type TestSseMcpServer } from "../helpers/sse-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, rpc, summary } from "../helpers/e2e.ts";
import { rawSse, type RawSse } from "../helpers/raw-transports.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestSseMcpServer;
let agent: AgentProcess;
let sseUrl: string;
const dirs: Record<string, string> = {};
const fetches: Record<string, MeshFetch> = {};

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  await mesh.startCa();
  up = await startSseMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/sse", { kind: "agent" });
  for (const p of ["team-a/alice", "team-a/bob", "team-a/eve"]) {
    dirs[p] = await mesh.issue(p);
    fetches[p] = createMeshFetch(dirs[p]);
    cleanups.add(() => fetches[p].close());
  }
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    ca: mesh.caUrl,
    upstream: { sse: up.url },
    limits: { maxBodyBytes: 4096, maxArgumentBytes: 2048, maxMessageDepth: 16 },
    rules: [
      { id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "slow-count", "hold"] },
      { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
    pinning: { file: join(mesh.dir, "pins-sse.json") },
  });
  cleanups.add(() => agent.stop());
  await agent.waitForLog((l) => l.event === "crl_loaded");
  sseUrl = agent.url.replace(/\/mcp$/, "/sse");
});

after(() => cleanups.run());

/** A raw legacy SSE session, initialized at `version`. */
async function session(who: string, version = "2024-11-05"): Promise<RawSse> {
  const s = await rawSse(sseUrl, fetches[who]);
  cleanups.add(() => s.close());
  const init = rpc("initialize", { protocolVersion: version, capabilities: {}, clientInfo: { name: "raw-sse", version: "1" } });
  assert.equal((await s.post(init)).status, 202);
  const r = await s.inbox.reply(init.id);
  assert.equal(r.result?.protocolVersion, version);
  assert.equal((await s.post({ jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);
  // A round trip after it: messages are forwarded in order, so the upstream has everything sent so far.
  const ping = rpc("ping");
  await s.post(ping);
  assert.deepEqual((await s.inbox.reply(ping.id)).result, {});
  return s;
}

const upstreamCalls = () => up.received.flatMap((r) => r.toolCalls);

test("GET /sse: the endpoint event names the agent's own message path, never the upstream's", async () => {
  const s = await rawSse(sseUrl, fetches["team-a/alice"]);
  try {
    assert.match(s.endpoint, /^\/sse\/message\?sessionId=[0-9a-f-]{36}$/);
    const u = new URL(s.messageUrl);
    assert.equal(u.origin, new URL(agent.url).origin);
    // The upstream's own endpoint (/messages?sessionId=...) and its session id stay behind the agent.
    assert.ok(!s.endpoint.includes("/messages"));
    assert.ok(up.received.some((r) => r.method === "GET"), "the agent opened its own stream to the upstream");
  } finally {
    s.close();
  }
});

test("POSTs are answered 202; an allowed call's result, its progress and a denial all arrive on the stream", async () => {
  const s = await session("team-a/alice");
  const echo = call("echo", { text: "over sse" });
  assert.equal((await s.post(echo)).status, 202);
  assert.deepEqual((await s.inbox.reply(echo.id)).result?.content, [{ type: "text", text: "over sse" }]);

  const denied = call("delete-file", { path: "/etc/passwd" });
  const posted = await s.post(denied);
  assert.equal(posted.status, 202, "a denial is not an HTTP error: the client reads answers from its stream");
  const answer = await s.inbox.reply(denied.id);
  assert.equal(answer.error?.code, -32602);
  assert.match(answer.error?.message, /Unknown tool: delete-file/);
  assert.ok(!upstreamCalls().includes("delete-file"), summary(up.received));
  const line = await agent.waitForLog((l) => l.log === "audit" && l.tool === "delete-file" && l.identity === `${TD}/team-a/alice`);
  assert.equal(line.transport, "sse");
  assert.equal(line.decision, "deny");

  // Progress notifications come before their response, in order.
  const counted = { ...call("slow-count", { steps: 3 }), params: { name: "slow-count", arguments: { steps: 3 }, _meta: { progressToken: "tok-1" } } };
  await s.post(counted);
  await s.inbox.reply(counted.id);
  const seq = s.inbox.messages.filter((m) => m.params?.progressToken === "tok-1" || m.id === counted.id);
  assert.deepEqual(seq.map((m) => m.params?.progress ?? "result"), [1, 2, 3, "result"]);
});

test("a session belongs to the identity that opened it: another identity's POST gets 404 and nothing is forwarded", async () => {
  const alice = await session("team-a/alice");
  const before = up.received.length;
  const seen = alice.inbox.messages.length;
  const stolen = call("echo", { text: "bob-in-alice-session" });
  const r = await alice.post(stolen, { f: fetches["team-a/bob"] });
  assert.equal(r.status, 404);
  assert.equal(JSON.parse(r.text).error.code, -32001);
  // Unknown and missing session ids look the same.
  for (const url of [alice.messageUrl.replace(/sessionId=[^&]+/, "sessionId=00000000-0000-0000-0000-000000000000"), alice.messageUrl.replace(/\?.*$/, "")]) {
    const r2 = await alice.post(stolen, { url, f: fetches["team-a/bob"] });
    assert.equal(r2.status, 404, url);
  }
  assert.equal(up.received.length, before, summary(up.received.slice(before)));
  assert.ok(!up.received.some((x) => x.body.includes("bob-in-alice-session")));
  assert.equal(alice.inbox.messages.length, seen, "nothing was injected into alice's stream");
  const refused = await agent.waitForLog((l) => l.event === "session_refused" && l.identity === `${TD}/team-a/bob` && l.transport === "sse");
  assert.equal(refused.reason, "session belongs to another identity");
  // alice's own session still works.
  const mine = call("echo", { text: "still mine" });
  await alice.post(mine);
  assert.deepEqual((await alice.inbox.reply(mine.id)).result?.content, [{ type: "text", text: "still mine" }]);
});

test("bad input on the message path is refused like on /mcp, and none of it reaches the upstream", async () => {
  const s = await session("team-a/alice", "2025-06-18");
  const before = up.received.length;
  const deep = `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","d":${"[".repeat(40)}${"]".repeat(40)}}}}`;
  const cases: { name: string; body: unknown; headers?: Record<string, string>; status: number; code?: number }[] = [
    { name: "not JSON", body: "{nope", status: 400, code: -32700 },
    { name: "not UTF-8", body: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), status: 400, code: -32700 },
    { name: "duplicate keys", body: '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete-file","arguments":{}}}', status: 400, code: -32600 },
    { name: "__proto__ key", body: '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"__proto__":{"x":1}}}}', status: 400, code: -32600 },
    { name: "nesting beyond maxMessageDepth", body: deep, status: 400, code: -32600 },
    { name: "body beyond maxBodyBytes", body: JSON.stringify(call("echo", { text: "x".repeat(5000) })), status: 413 },
    { name: "Mcp-Method header disagreeing with the body", body: call("delete-file", { path: "/x" }), headers: { "mcp-method": "tools/list" }, status: 400, code: -32600 },
    { name: "Mcp-Name header disagreeing with the body", body: call("echo", { text: "x" }), headers: { "mcp-name": "delete-file" }, status: 400, code: -32600 },
  ];
  for (const c of cases) {
    const r = await s.post(c.body, { headers: c.headers });
    assert.equal(r.status, c.status, `${c.name}: ${r.text}`);
    if (c.code !== undefined) assert.equal(JSON.parse(r.text).error.code, c.code, c.name);
  }
  // A batch on a 2025-06-18 session: accepted for reading (202), refused on the stream, never forwarded.
  const b1 = call("echo", { text: "batched" });
  assert.equal((await s.post([b1])).status, 202);
  const refusal = await s.inbox.next((m) => m.id === null && m.error);
  assert.equal(refusal.error.code, -32600);
  assert.match(refusal.error.message, /batches are not part of protocol version 2025-06-18/);
  // Wrong methods on the two paths.
  const f = fetches["team-a/alice"];
  assert.equal((await f(s.messageUrl, { method: "GET" })).status, 405);
  assert.equal((await f(sseUrl, { method: "POST", body: "{}", headers: { "content-type": "application/json" } })).status, 405);
  assert.equal(up.received.length, before, summary(up.received.slice(before)));
});

test("revoking the certificate closes the SSE stream within a second; the session is gone", async (t) => {
  const s = await session("team-a/eve");
  const echo = call("echo", { text: "before revocation" });
  await s.post(echo);
  await s.inbox.reply(echo.id);
  const revokedAt = Date.now();
  mesh.authority.revoke({ identity: "team-a/eve", reason: "keyCompromise" });
  await Promise.race([s.ended, new Promise((_, reject) => setTimeout(() => reject(new Error("the stream was still open 10 s after the revocation")), 10_000).unref())]);
  const latency = Date.now() - revokedAt;
  t.diagnostic(`stream closed ${latency} ms after the revocation`);
  assert.ok(latency < 1000, `closed after ${latency} ms`);
  await agent.waitForLog((l) => l.event === "sessions_revoked" && l.identity === `${TD}/team-a/eve`);
  await assert.rejects(s.post(call("echo", { text: "after revocation" })));
  assert.ok(!up.received.some((r) => r.body.includes("after revocation")));
});

test("the upstream drops its stream: the call in flight is answered with an error and the client's stream ends", async () => {
  const s = await session("team-a/alice");
  const h = call("hold", {});
  assert.equal((await s.post(h)).status, 202);
  while (up.held() === 0) await new Promise((r) => setTimeout(r, 20));
  up.dropStreams();
  const answer = await s.inbox.reply(h.id);
  assert.ok(answer.error, JSON.stringify(answer));
  assert.equal(answer.error.code, -32000, JSON.stringify(answer));
  await s.ended;
  up.releaseHeld();
});

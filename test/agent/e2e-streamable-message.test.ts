/**
 * End to end: the Streamable HTTP edge in message mode — `/mcp` of the real `mcpmesh agent run` in front of an
 * upstream that is not Streamable HTTP (here stdio), where the agent holds the MCP session itself. Sessions are the
 * agent's, bound to the identity that initialized them; requests are answered on their POST's stream; batches follow
 * the same version rule; DELETE ends the session; the per-identity session cap applies to every downstream transport; a server → client
 * request (sampling) round-trips through the bridge, and a client response nobody asked for is dropped.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { readStdioRecord, stdioServerCommand } from "../helpers/stdio-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, rawPost, rawSession, rpc } from "../helpers/e2e.ts";
import { rawSse, rawWs } from "../helpers/raw-transports.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let agent: AgentProcess;
let record: string;
const dirs: Record<string, string> = {};
const fetches: Record<string, MeshFetch> = {};

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  const agentDir = await mesh.issue("agents/message", { kind: "agent" });
  for (const p of ["team-a/alice", "team-a/bob", "team-a/carol"]) {
    dirs[p] = await mesh.issue(p);
    fetches[p] = createMeshFetch(dirs[p]);
    cleanups.add(() => fetches[p].close());
  }
  record = join(mesh.dir, "stdio-record.jsonl");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { command: stdioServerCommand(), env: { MCPMESH_TEST_RECORD: record } },
    limits: { maxSessionsPerIdentity: 2 },
    rules: [
      { id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "add", "sample"] },
      { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
    pinning: { file: join(mesh.dir, "pins-message.json") },
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

const upstreamBodies = () => readStdioRecord(record).messages.map((m) => JSON.stringify(m));

test("sessions are the agent's and bound to the identity: another identity's Mcp-Session-Id gets 404, nothing forwarded", async () => {
  const alice = await rawSession(fetches["team-a/alice"], agent.url, "2025-06-18");
  assert.match(alice.sid, /^[0-9a-f-]{36}$/);
  const r = await alice.post(call("echo", { text: "alice's" }));
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /text\/event-stream/);
  assert.deepEqual(r.messages.at(-1).result.content, [{ type: "text", text: "alice's" }]);

  const stolen = await rawPost(fetches["team-a/bob"], agent.url, call("echo", { text: "bob-in-alice-session" }), { "mcp-session-id": alice.sid, "mcp-protocol-version": "2025-06-18" });
  assert.equal(stolen.status, 404);
  const get = await fetches["team-a/bob"](agent.url, { headers: { accept: "text/event-stream", "mcp-session-id": alice.sid } });
  assert.equal(get.status, 404);
  await get.body?.cancel();
  const del = await fetches["team-a/bob"](agent.url, { method: "DELETE", headers: { "mcp-session-id": alice.sid } });
  assert.equal(del.status, 404);
  // No session header and not an initialize: the agent holds sessions in this mode.
  const bare = await rawPost(fetches["team-a/bob"], agent.url, call("echo", { text: "no-session" }));
  assert.equal(bare.status, 400);
  assert.ok(!upstreamBodies().some((b) => b.includes("bob-in-alice-session") || b.includes("no-session")));
  // alice's session survived bob's DELETE.
  assert.equal((await alice.post(call("echo", { text: "still" }))).status, 200);
});

test("denials and the batch rule are the gatekeeper's, answered without forwarding", async () => {
  const s = await rawSession(fetches["team-a/alice"], agent.url, "2025-06-18");
  const denied = await s.post(call("delete-file", { path: "/etc/passwd" }));
  assert.equal(denied.status, 200);
  assert.equal(denied.messages[0].error.code, -32602);
  const batch = await s.post([call("echo", { text: "batched-0618" })]);
  assert.equal(batch.status, 400);
  assert.match(batch.messages[0].error.message, /batches are not part of protocol version 2025-06-18/);
  const mismatch = await s.post(call("delete-file", { path: "/x" }), { "mcp-method": "tools/list" });
  assert.equal(mismatch.status, 400);

  const old = await rawSession(fetches["team-a/carol"], agent.url, "2025-03-26");
  const a = call("echo", { text: "b-one" });
  const b = call("add", { a: 1, b: 2 });
  const both = await old.post([a, b]);
  assert.equal(both.status, 200);
  const answers = both.messages.flat();
  assert.deepEqual(answers.find((m: any) => m.id === b.id).result.content, [{ type: "text", text: "3" }]);
  assert.deepEqual(answers.find((m: any) => m.id === a.id).result.content, [{ type: "text", text: "b-one" }]);
  const bodies = upstreamBodies();
  assert.ok(!bodies.some((x) => x.includes("delete-file") || x.includes("batched-0618")));
});

test("DELETE ends the session: its id is unknown afterwards", async () => {
  const s = await rawSession(fetches["team-a/bob"], agent.url, "2025-11-25");
  const del = await fetches["team-a/bob"](agent.url, { method: "DELETE", headers: { "mcp-session-id": s.sid } });
  assert.equal(del.status, 200);
  assert.equal((await s.post(call("echo", { text: "after delete" }))).status, 404);
  await agent.waitForLog((l) => l.event === "bridge_closed" && l.reason === "client ended the session");
});

test("sampling through the bridge: the server's request reaches the client, its answer the server; unsolicited responses are dropped", async () => {
  const s = await rawWs(agent.url.replace(/\/mcp$/, "/ws"), dirs["team-a/bob"]);
  try {
    const init = rpc("initialize", { protocolVersion: "2025-06-18", capabilities: { sampling: {} }, clientInfo: { name: "raw-ws", version: "1" } });
    s.send(init);
    await s.inbox.reply(init.id);
    s.send({ jsonrpc: "2.0", method: "notifications/initialized" });
    // A response to a server request that was never made: not forwarded.
    s.send({ jsonrpc: "2.0", id: "forged-1", result: { role: "assistant", content: { type: "text", text: "forged-answer" }, model: "m" } });
    const sample = call("sample", { prompt: "say hi" });
    s.send(sample);
    const req = await s.inbox.next((m) => m.method === "sampling/createMessage");
    assert.equal(req.params.messages[0].content.text, "say hi");
    s.send({ jsonrpc: "2.0", id: req.id, result: { role: "assistant", content: { type: "text", text: "hi from the client" }, model: "test-model" } });
    const done = await s.inbox.reply(sample.id);
    assert.deepEqual(done.result.content, [{ type: "text", text: "hi from the client" }]);
    await agent.waitForLog((l) => l.event === "unsolicited_response" && l.identity === `${TD}/team-a/bob`);
    assert.ok(!upstreamBodies().some((b) => b.includes("forged-answer")));
    assert.ok(upstreamBodies().some((b) => b.includes("hi from the client")));
  } finally {
    await s.close();
  }
});

test("maxSessionsPerIdentity counts sessions of every transport: a streaming one is never evicted, a third is refused", async () => {
  // carol holds one idle /mcp session from before (evictable) — and now two streaming ones.
  const f = fetches["team-a/carol"];
  const sse = await rawSse(agent.url.replace(/\/mcp$/, "/sse"), f);
  cleanups.add(() => sse.close());
  const ws = await rawWs(agent.url.replace(/\/mcp$/, "/ws"), dirs["team-a/carol"]);
  cleanups.add(() => ws.close());
  await agent.waitForLog((l) => l.event === "session_evicted" && l.identity === `${TD}/team-a/carol`);
  const third = await rawWs(agent.url.replace(/\/mcp$/, "/ws"), dirs["team-a/carol"]).catch((e) => e);
  assert.equal(third.status, 429);
  const init = await rawPost(f, agent.url, rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } }));
  assert.equal(init.status, 429);
  // Both streaming sessions still work.
  const p = rpc("ping");
  ws.send(p);
  await ws.inbox.reply(p.id);
  const q = rpc("ping");
  await sse.post(q);
  await sse.inbox.reply(q.id);
});

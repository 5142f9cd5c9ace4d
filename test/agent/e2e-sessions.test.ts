/**
 * End to end: what the Streamable HTTP edge does with sessions and envelopes. Sessions are bound to the identity that
 * opened them (hijack → 404), batches are refused unless 2025-03-26 was negotiated and then decided per element (a
 * denied call cannot ride along), Mcp-Method/Mcp-Name headers must agree with the body, and the upstream sees the
 * caller's identity from the agent, never the client's Authorization header.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, connectClient, rawPost, rawSession, readReply, rpc, summary, type MeshClient } from "../helpers/e2e.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const ALICE = `${TD}/team-a/alice`;
const BOB = `${TD}/team-a/bob`;
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let alice: MeshClient;
let aliceSid: string;
let aliceRaw: MeshFetch;
let bobRaw: MeshFetch;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/sessions", { kind: "agent" });
  const aliceDir = await mesh.issue("team-a/alice");
  const bobDir = await mesh.issue("team-a/bob");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [
      { clients: [`${TD}/team-a/*`], tools: ["echo", "add"] },
      { clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
    pinning: { file: `${mesh.dir}/pins-sessions.json` },
  });
  cleanups.add(() => agent.stop());
  alice = await connectClient(agent.url, aliceDir);
  cleanups.add(() => alice.close());
  aliceSid = (alice.client.transport as StreamableHTTPClientTransport).sessionId!;
  assert.ok(aliceSid, "the SDK client holds a session id");
  aliceRaw = createMeshFetch(aliceDir);
  cleanups.add(() => aliceRaw.close());
  bobRaw = createMeshFetch(bobDir);
  cleanups.add(() => bobRaw.close());
});

after(() => cleanups.run());

const fromBob = () => up.received.filter((r) => r.headers["x-mcpmesh-identity"] === BOB);

test("session hijack: bob presenting alice's Mcp-Session-Id gets 404 on POST, GET and DELETE", async () => {
  const headers = { "mcp-session-id": aliceSid, "mcp-protocol-version": "2025-11-25" };
  const post = await rawPost(bobRaw, agent.url, call("echo", { text: "as alice" }), headers);
  assert.equal(post.status, 404);
  const get = await bobRaw(agent.url, { method: "GET", headers: { ...headers, accept: "text/event-stream" } });
  assert.equal(get.status, 404);
  await get.body?.cancel();
  const del = await bobRaw(agent.url, { method: "DELETE", headers });
  assert.equal(del.status, 404);
  await del.body?.cancel();
  assert.deepEqual(fromBob(), [], summary(fromBob()));
  assert.ok(!up.received.some((r) => r.body.includes("as alice")));
  const line = await agent.waitForLog((l) => l.event === "session_refused" && l.identity === BOB);
  assert.equal(line.reason, "session belongs to another identity");
  // Alice's session is untouched by all of that.
  const r = await alice.client.callTool({ name: "echo", arguments: { text: "still mine" } });
  assert.deepEqual(r.content, [{ type: "text", text: "still mine" }]);
});

test("an unknown session id is 404 as well, and indistinguishable from someone else's", async () => {
  const r = await rawPost(bobRaw, agent.url, rpc("tools/list"), { "mcp-session-id": "00000000-0000-4000-8000-000000000000", "mcp-protocol-version": "2025-11-25" });
  assert.equal(r.status, 404);
  assert.deepEqual(fromBob(), []);
});

test("batch smuggling on a 2025-06-18 session: the whole batch is refused with 400, nothing is forwarded", async () => {
  const s = await rawSession(aliceRaw, agent.url, "2025-06-18");
  const before = up.received.length;
  const r = await s.post([call("echo", { text: "cover" }), call("delete-file", { path: "/etc/shadow" })]);
  assert.equal(r.status, 400);
  assert.match(JSON.stringify(r.json), /batches are not part of protocol version 2025-06-18/);
  assert.equal(up.received.length, before, summary(up.received.slice(before)));
});

test("batch smuggling on a 2025-03-26 session: per-element errors, the denied call never reaches the upstream", async () => {
  const s = await rawSession(aliceRaw, agent.url, "2025-03-26");
  const before = up.received.length;
  const allowed = call("echo", { text: "cover" });
  const denied = call("delete-file", { path: "/etc/shadow" });
  const r = await s.post([allowed, denied]);
  assert.equal(r.status, 200);
  assert.ok(Array.isArray(r.json));
  const byId = new Map(r.messages.map((m) => [m.id, m]));
  assert.equal(byId.size, 2);
  assert.equal(byId.get(denied.id).error.code, -32602);
  assert.match(byId.get(denied.id).error.message, /Unknown tool: delete-file/);
  assert.equal(byId.get(allowed.id).error.code, -32600);
  assert.match(byId.get(allowed.id).error.message, /not executed/);
  // The agent may list the tools itself (this session never did) to judge the calls; the batch itself stays here.
  const after = up.received.slice(before);
  assert.deepEqual(after.flatMap((x) => x.toolCalls), [], `the refused batch was forwarded: ${summary(after)}`);
  for (const x of after) assert.match(x.body, /^\{"jsonrpc":"2\.0","id":"mcpmesh-tools-[^"]*","method":"tools\/list"/, summary(after));

  // A batch in which every element is allowed is forwarded and answered as a batch.
  const a = call("echo", { text: "one" });
  const b = call("add", { a: 1, b: 2 });
  const ok = await s.post([a, b]);
  assert.equal(ok.status, 200);
  const answers = new Map(ok.messages.map((m) => [m.id, m]));
  assert.equal(answers.get(a.id)?.result?.content?.[0]?.text, "one", JSON.stringify(ok.messages));
  assert.equal(answers.get(b.id)?.result?.content?.[0]?.text, "3");
  assert.ok(!up.received.some((x) => x.toolCalls.includes("delete-file")));
});

test("Mcp-Method and Mcp-Name headers that disagree with the body are refused with 400", async () => {
  const s = await rawSession(aliceRaw, agent.url, "2025-11-25");
  const before = up.received.length;
  const m1 = await s.post(call("delete-file", { path: "/x" }), { "mcp-method": "tools/list" });
  assert.equal(m1.status, 400);
  assert.match(JSON.stringify(m1.json), /Mcp-Method header does not match/);
  const m2 = await s.post(call("delete-file", { path: "/x" }), { "mcp-method": "tools/call", "mcp-name": "echo" });
  assert.equal(m2.status, 400);
  assert.match(JSON.stringify(m2.json), /Mcp-Name header does not match/);
  assert.equal(up.received.length, before, summary(up.received.slice(before)));
  // Headers that agree are fine.
  const m3 = await s.post(call("echo", { text: "agreed" }), { "mcp-method": "tools/call", "mcp-name": "echo" });
  assert.equal(m3.status, 200);
  assert.equal(m3.messages[0].result.content[0].text, "agreed");
});

test("no token passthrough: Authorization and Cookie stay at the agent; the upstream gets X-MCPMesh-Identity from the certificate", async () => {
  const s = await rawSession(aliceRaw, agent.url, "2025-11-25");
  const before = up.received.length;
  const r = await s.post(call("echo", { text: "with a token" }), {
    authorization: "Bearer secret-token-for-someone-else",
    cookie: "session=stolen",
    "x-mcpmesh-identity": `${TD}/admin`,
  });
  assert.equal(r.status, 200);
  const got = up.received.slice(before).find((x) => x.toolCalls.includes("echo"));
  assert.ok(got, summary(up.received.slice(before)));
  assert.equal(got.headers.authorization, undefined);
  assert.equal(got.headers.cookie, undefined);
  assert.equal(got.headers["x-mcpmesh-identity"], ALICE, "the identity comes from the certificate, not from the client's header");
  assert.ok(!up.received.some((x) => JSON.stringify(x.headers).includes("secret-token")));
  // Every request the upstream ever got carries the identity the agent vouches for.
  for (const x of up.received) assert.match(String(x.headers["x-mcpmesh-identity"]), /^spiffe:\/\/example\.org\/team-a\/(alice|bob)$/);
});

test("DELETE by the owner ends the session; afterwards its id is 404 for everyone", async () => {
  const s = await rawSession(aliceRaw, agent.url, "2025-11-25");
  const byBob = await bobRaw(agent.url, { method: "DELETE", headers: { "mcp-session-id": s.sid, "mcp-protocol-version": s.version } });
  assert.equal(byBob.status, 404);
  await byBob.body?.cancel();
  const still = await s.post(rpc("ping"));
  assert.equal(still.status, 200);
  const del = await aliceRaw(agent.url, { method: "DELETE", headers: { "mcp-session-id": s.sid, "mcp-protocol-version": s.version } });
  assert.equal(del.status, 200);
  await readReply(del);
  const gone = await s.post(rpc("ping"));
  assert.equal(gone.status, 404);
  assert.deepEqual(fromBob(), []);
});

/**
 * End to end: input validation in the real agent. Arguments are checked against the tool's own input schema (as the
 * SDK server declared it), the operator's overlay schema and the size/depth limits; the rejection is an `isError`
 * result on 2025-11-25 sessions and a -32602 error on older ones. Nothing rejected ever reaches the upstream.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, connectClient, rawPost, rawSession, summary, type MeshClient, type RawSession } from "../helpers/e2e.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let alice: MeshClient;
let aliceDir: string;
let raw: MeshFetch;
let old: RawSession;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/validation", { kind: "agent" });
  aliceDir = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    tools: {
      "get-weather": { schema: { type: "object", properties: { city: { enum: ["Oslo", "Bergen"] } } } },
      "tenant-report": { schema: { type: "object", properties: { tenant: { maxLength: 8 } }, additionalProperties: false } },
    },
    limits: { maxStringLength: 200, maxDepth: 6, maxBodyBytes: 65_536, maxArgumentBytes: 32_768 },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo", "add", "get-weather", "tenant-report"] }],
    pinning: { file: `${mesh.dir}/pins-validation.json` },
  });
  cleanups.add(() => agent.stop());
  alice = await connectClient(agent.url, aliceDir);
  cleanups.add(() => alice.close());
  raw = createMeshFetch(aliceDir);
  cleanups.add(() => raw.close());
  old = await rawSession(raw, agent.url, "2025-06-18");
});

after(() => cleanups.run());

const calls = () => up.received.flatMap((r) => r.toolCalls);

/** On the SDK client's (2025-11-25) session an invalid call comes back as a tool result with isError. */
async function assertRejected(name: string, args: Record<string, unknown>, why: RegExp): Promise<void> {
  const before = up.received.length;
  const r = (await alice.client.callTool({ name, arguments: args })) as { isError?: boolean; content: { type: string; text: string }[] };
  assert.equal(r.isError, true, `${name} ${JSON.stringify(args).slice(0, 80)}: ${JSON.stringify(r).slice(0, 200)}`);
  assert.match(r.content[0].text, new RegExp(`Invalid arguments for tool ${name}`));
  assert.match(r.content[0].text, why);
  const after = up.received.slice(before);
  assert.deepEqual(after.flatMap((x) => x.toolCalls), [], `upstream got a rejected call: ${summary(after)}`);
}

test("the client negotiated 2025-11-25 and valid calls pass", async () => {
  assert.equal(alice.client.getServerVersion()?.name, "test-upstream");
  const r = await alice.client.callTool({ name: "add", arguments: { a: 20, b: 22 } });
  assert.deepEqual(r.content, [{ type: "text", text: "42" }]);
  const w = await alice.client.callTool({ name: "get-weather", arguments: { city: "Bergen" } });
  assert.deepEqual(w.content, [{ type: "text", text: "sunny in Bergen" }]);
  assert.deepEqual(calls(), ["add", "get-weather"]);
});

test("the server's input schema: wrong type and missing required field", async () => {
  await assertRejected("add", { a: "1", b: 2 }, /arguments\.a: must be number/);
  await assertRejected("add", { a: 1 }, /arguments\.b: is required/);
  await assertRejected("echo", { text: 5 }, /arguments\.text: must be string/);
});

test("limits: an oversize string and deep nesting are refused before schema validation", async () => {
  // The server allows 1000 characters; the operator's limit is 200.
  await assertRejected("echo", { text: "x".repeat(500) }, /500 characters long \(limit 200\)/);
  let deep: unknown = "bottom";
  for (let i = 0; i < 20; i++) deep = [deep];
  await assertRejected("echo", { text: "ok", extra: deep }, /nest deeper than 6 levels/);
});

test("the operator's overlay schema tightens the server's: enum, maxLength, additionalProperties", async () => {
  await assertRejected("get-weather", { city: "Paris" }, /arguments\.city: must be one of the allowed values/);
  await assertRejected("tenant-report", { tenant: "a-very-long-tenant" }, /arguments\.tenant: must NOT have more than 8 characters/);
  await assertRejected("tenant-report", { tenant: "acme", extra: 1 }, /arguments\.extra: is not allowed/);
  const ok = await alice.client.callTool({ name: "tenant-report", arguments: { tenant: "acme" } });
  assert.deepEqual(ok.content, [{ type: "text", text: "report for acme" }]);
});

test("on a 2025-06-18 session invalid arguments are a -32602 error, not an isError result", async () => {
  const before = up.received.length;
  for (const [name, args] of [["add", { a: "x", b: 1 }], ["echo", { text: "y".repeat(300) }], ["get-weather", { city: "Rome" }]] as const) {
    const msg = call(name, args as Record<string, unknown>);
    const r = await old.post(msg);
    assert.equal(r.status, 200);
    assert.equal(r.messages.length, 1);
    assert.equal(r.messages[0].id, msg.id);
    assert.equal(r.messages[0].result, undefined, JSON.stringify(r.messages[0]));
    assert.equal(r.messages[0].error.code, -32602);
    assert.match(r.messages[0].error.message, new RegExp(`Invalid arguments for tool ${name}`));
  }
  assert.deepEqual(up.received.slice(before).flatMap((x) => x.toolCalls), [], summary(up.received.slice(before)));
  // The same session still works for a valid call.
  const good = await old.post(call("add", { a: 1, b: 2 }));
  assert.equal(good.messages[0].result.content[0].text, "3");
});

test("a 2025-11-25 raw session gets isError results for the same calls", async () => {
  const s = await rawSession(raw, agent.url, "2025-11-25");
  const before = up.received.length;
  const r = await s.post(call("add", { a: "x", b: 1 }));
  assert.equal(r.messages[0].error, undefined);
  assert.equal(r.messages[0].result.isError, true);
  assert.deepEqual(up.received.slice(before).flatMap((x) => x.toolCalls), []);
});

test("a body over limits.maxBodyBytes is refused with 413 and not forwarded", async () => {
  const before = up.received.length;
  const big = call("echo", { text: "z".repeat(100_000) });
  const r = await rawPost(raw, agent.url, big, { "mcp-session-id": old.sid, "mcp-protocol-version": old.version });
  assert.equal(r.status, 413);
  assert.equal(up.received.length, before, summary(up.received.slice(before)));
  const audit = agent.audit().filter((l) => l.decision === "deny");
  assert.ok(audit.length >= 9, "every rejection above was audited");
  for (const l of audit) assert.ok(!JSON.stringify(l).includes("xxxxxxxx"), "argument values are never logged");
});

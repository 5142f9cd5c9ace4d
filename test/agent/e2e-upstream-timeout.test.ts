/**
 * End to end: `upstream.timeout` on the message path (here a stdio upstream behind the agent's legacy SSE edge).
 * A request with no answer and no progress within the timeout is answered -32000 "Upstream MCP server timed out", the
 * upstream receives `notifications/cancelled` for it, and its late answer (from an upstream that ignores the
 * cancellation) never reaches the client, not even as the answer to a new request that reused the id. A request whose
 * progress keeps arriving outlives the timeout (each progress notification restarts the clock); the same slow call
 * without a progressToken times out.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { readStdioRecord, stdioServerCommand } from "../helpers/stdio-server.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, rpc } from "../helpers/e2e.ts";
import { rawSse, type RawSse } from "../helpers/raw-transports.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const TIMEOUT_MS = 3000;
const cleanups = new Cleanups();
let mesh: TestMesh;
let agent: AgentProcess;
let f: MeshFetch;
let record: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  const agentDir = await mesh.issue("agents/timeout", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  record = join(mesh.dir, "stdio-record.jsonl");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { command: stdioServerCommand(), env: { MCPMESH_TEST_RECORD: record }, timeout: "3s" },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["*"] }],
    pinning: { file: join(mesh.dir, "pins-timeout.json") },
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

async function session(): Promise<RawSse> {
  const s = await rawSse(agent.url.replace(/\/mcp$/, "/sse"), f);
  cleanups.add(() => s.close());
  const init = rpc("initialize", { protocolVersion: "2024-11-05", capabilities: {}, clientInfo: { name: "timeout", version: "1" } });
  assert.equal((await s.post(init)).status, 202);
  await s.inbox.reply(init.id);
  assert.equal((await s.post({ jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);
  const list = rpc("tools/list", {});
  await s.post(list);
  await s.inbox.reply(list.id);
  return s;
}

test("no answer within upstream.timeout: the client gets -32000, the upstream gets notifications/cancelled, a late answer is dropped", async () => {
  const s = await session();
  const from = agent.logs().length;
  const held = call("hold-late", {});
  assert.equal((await s.post(held)).status, 202);
  const answer = await s.inbox.reply(held.id, 30_000);
  assert.deepEqual(answer.error, { code: -32000, message: "Upstream MCP server timed out" });
  const warned = agent.logs().slice(from).find((l) => l.event === "upstream_timeout");
  assert.ok(warned, "upstream_timeout logged");
  assert.equal(warned.method, "tools/call");
  assert.equal(warned.timeoutMs, TIMEOUT_MS);

  // The upstream was told to stop working on it.
  const deadline = Date.now() + 20_000;
  const cancelledFor = () => readStdioRecord(record).messages.filter((m) => m?.method === "notifications/cancelled" && m?.params?.requestId === held.id);
  while (cancelledFor().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal(cancelledFor().length, 1, "notifications/cancelled for the timed-out request reached the upstream once");

  // The id is refused while the upstream may still answer it: a late answer could otherwise pass for this one's.
  const reuse = { ...call("echo", { text: "same id" }), id: held.id };
  await s.post(reuse);
  await s.inbox.next((m) => m?.id === held.id && m?.error?.message === "Invalid Request: a request with this id is still in flight");
  const withHeldId = () => readStdioRecord(record).messages.filter((m) => m?.id === held.id && m?.method === "tools/call");

  // This upstream answers anyway once released: the answer is dropped at the agent.
  const release = call("release-held", {});
  await s.post(release);
  await s.inbox.reply(release.id);
  const lateDeadline = Date.now() + 20_000;
  const lateSent = () => readStdioRecord(record).messages.some((m) => m?.lateAnswer === held.id);
  while (!lateSent() && Date.now() < lateDeadline) await new Promise((r) => setTimeout(r, 100));
  assert.ok(lateSent(), "the upstream wrote its late answer");
  assert.deepEqual(withHeldId().map((m) => m.params?.name), ["hold-late"], "the refused request with the reused id reached the upstream");
  const ping = rpc("ping");
  await s.post(ping);
  await s.inbox.reply(ping.id); // the stream has carried everything the upstream sent before this
  assert.deepEqual(s.inbox.messages.filter((m) => m?.id === held.id && !("method" in m)).map((m) => m.error?.message ?? m.result), ["Upstream MCP server timed out", "Invalid Request: a request with this id is still in flight"], "the late answer reached the client");

  // Once the late answer has come, the id is free again.
  const again = { ...call("echo", { text: "same id, later" }), id: held.id };
  await s.post(again);
  const ok = await s.inbox.next((m) => m?.id === held.id && m?.result !== undefined);
  assert.deepEqual(ok.result.content, [{ type: "text", text: "same id, later" }]);
});

test("progress restarts the clock: a call that reports progress outlives the timeout; the same call without a progressToken times out", async () => {
  const s = await session();
  // 15 × 300 ms = 4.5 s in all, beyond the 3 s timeout, but never 3 s without news.
  const slow = { ...call("slow-progress", { steps: 15, everyMs: 300 }) };
  slow.params = { ...slow.params, _meta: { progressToken: "slow-1" } } as typeof slow.params;
  assert.equal((await s.post(slow)).status, 202);
  const ok = await s.inbox.reply(slow.id, 30_000);
  assert.equal(ok.error, undefined, JSON.stringify(ok));
  assert.deepEqual(ok.result?.content, [{ type: "text", text: "done after 15 steps" }]);
  assert.equal(s.inbox.messages.filter((m) => m?.method === "notifications/progress" && m?.params?.progressToken === "slow-1").length, 15);

  const silent = call("slow-progress", { steps: 15, everyMs: 300 });
  assert.equal((await s.post(silent)).status, 202);
  const timedOut = await s.inbox.reply(silent.id, 30_000);
  assert.deepEqual(timedOut.error, { code: -32000, message: "Upstream MCP server timed out" });
});

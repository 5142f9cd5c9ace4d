/**
 * End to end with a legacy SSE upstream: the real `mcpmesh agent run` with `upstream.sse` in front of the fixture
 * (test/helpers/sse-server.ts), the real SDK client over mTLS. Calls work with the caller's identity on every upstream
 * request; a denied call never reaches the upstream; an upstream that drops its stream answers the call in flight
 * with an error instead of hanging.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, rejection } from "../helpers/e2e.ts";
import { startSseMcpServer, type TestSseMcpServer } from "../helpers/sse-server.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestSseMcpServer;
let agent: AgentProcess;
let aliceDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startSseMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/sse", { kind: "agent" });
  aliceDir = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { sse: up.url },
    rules: [
      { id: "alice", clients: [`${TD}/team-a/alice`], tools: ["echo", "add", "hold"] },
      { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
    pinning: { file: `${mesh.dir}/pins-sse.json` },
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

test("calls through the mesh reach the SSE upstream with the caller's identity; a denied call does not", async (t) => {
  const alice = await connectClient(agent.url, aliceDir);
  t.after(() => alice.close());
  assert.equal(agent.logs().find((l) => l.event === "listening").upstreamKind, "sse");
  const r = await alice.client.callTool({ name: "add", arguments: { a: 20, b: 22 } });
  assert.deepEqual(r.content, [{ type: "text", text: "42" }]);
  const e = await rejection(alice.client.callTool({ name: "delete-file", arguments: { path: "/x" } }));
  assert.match(e.message, /Unknown tool: delete-file/);
  assert.ok(up.received.some((x) => x.toolCalls.includes("add")));
  assert.ok(!up.received.some((x) => x.toolCalls.includes("delete-file")), "the denied call never reached the upstream");
  assert.ok(up.received.length > 0);
  for (const x of up.received) assert.equal(x.headers["x-mcpmesh-identity"], `${TD}/team-a/alice`, `${x.method} ${x.rpcMethods}`);
});

test("an upstream that drops its stream: the call in flight gets an error, not a hang", async (t) => {
  const alice = await connectClient(agent.url, aliceDir);
  t.after(() => alice.close());
  const held = rejection(alice.client.callTool({ name: "hold", arguments: {} }));
  for (const deadline = Date.now() + 60_000; up.held() === 0; await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > deadline) throw new Error("the hold call never reached the upstream");
  }
  up.dropStreams();
  const e = await held;
  assert.equal(e.code, -32000);
  assert.match(e.message, /upstream SSE stream ended/);
  await agent.waitForLog((l) => l.event === "upstream_stream_ended");
});

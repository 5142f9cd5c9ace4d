/**
 * End to end: how the agent relays a POST's SSE answer. Headers, events and the end are written together when they
 * come together (one TLS write), but a call whose first event is slow must not leave the client without response
 * headers: they go out on their own while the tool is still running. Progress notifications are relayed as they
 * come, in order, before the result, through the real SDK client.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, connectClient, rawSession, readReply } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let aliceDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/sse", { kind: "agent" });
  aliceDir = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["hold", "slow-count", "echo"] }],
    pinning: { file: `${mesh.dir}/pins-sse.json` },
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

test("a held call: the client has the response headers while the tool still runs, then the result on the same stream", { timeout: 60_000 }, async () => {
  const f = createMeshFetch(aliceDir, { follow: false });
  cleanups.add(() => f.close());
  const s = await rawSession(f, agent.url, "2025-06-18");
  const body = call("hold", {});
  const res = await f(agent.url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": s.sid, "mcp-protocol-version": s.version },
    body: JSON.stringify(body),
  });
  // fetch resolves on the response headers; the tool cannot have finished: nothing released it yet.
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  assert.equal(up.held(), 1, "the call is still held upstream");
  up.releaseHeld();
  const reply = await readReply(res);
  assert.deepEqual(reply.messages.map((m) => m.id), [body.id]);
  assert.deepEqual(reply.messages[0].result, { content: [{ type: "text", text: "released" }] });
});

test("progress notifications and the log message arrive in order before the result; quick calls answer whole", async () => {
  const alice = await connectClient(agent.url, aliceDir);
  cleanups.add(() => alice.close());
  const progress: number[] = [];
  const result = await alice.client.callTool({ name: "slow-count", arguments: { steps: 5 } }, undefined, { onprogress: (p) => void progress.push(p.progress) });
  assert.deepEqual(result, { content: [{ type: "text", text: "counted 5" }] });
  assert.deepEqual(progress, [1, 2, 3, 4, 5]);
  for (let i = 0; i < 20; i++) {
    assert.deepEqual(await alice.client.callTool({ name: "echo", arguments: { text: `n${i}` } }), { content: [{ type: "text", text: `n${i}` }] });
  }
});

/**
 * End to end: live revocation. A client with an open MCP session and an open SSE stream is revoked with the real
 * `mcpmesh ca revoke` binary (another process, writing the CA's database); the CA notices within its 150 ms store
 * poll and pushes the revocation over the mutually authenticated WebSocket feed; the real agent process closes the
 * client's stream, connection and session within one second, refuses its next handshake, and other clients' calls keep
 * succeeding throughout.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups, runCliOk } from "../helpers/cli.ts";
import { connectClient, rawSession, call, summary } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import type { RunningCaServer } from "../../ca/server.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let ca: RunningCaServer;
let up: TestMcpServer;
let agent: AgentProcess;
let erinDir: string;
let frankDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  ca = await mesh.startCa();
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/live", { kind: "agent" });
  erinDir = await mesh.issue("team-a/erin");
  frankDir = await mesh.issue("team-a/frank");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    ca: mesh.caUrl,
    upstream: { url: up.url },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }],
    pinning: { file: join(mesh.dir, "pins-live.json") },
  });
  cleanups.add(() => agent.stop());
  await agent.waitForLog((l) => l.event === "feed_connected");
  await agent.waitForLog((l) => l.event === "crl_loaded" && l.source === "feed");
});

after(() => cleanups.run());

test("the CA refuses the feed to clients and to plain GETs; agents are subscribed", async () => {
  assert.equal(ca.feed.subscribers, 1);
  const f = createMeshFetch(frankDir);
  cleanups.add(() => f.close());
  const plain = await f(new URL("/v1/watch", mesh.caUrl).toString());
  assert.equal(plain.status, 426);
  assert.match((await plain.json() as any).error.message, /WebSocket/);
});

test("revoked with `mcpmesh ca revoke`: within one second the SSE stream closes, the next request is refused, others keep working", async (t) => {
  // erin: a raw session with a standalone GET SSE stream open.
  const ef = createMeshFetch(erinDir);
  cleanups.add(() => ef.close());
  const erin = await rawSession(ef, agent.url, "2025-06-18");
  const stream = await ef(agent.url, { method: "GET", headers: { accept: "text/event-stream", "mcp-session-id": erin.sid, "mcp-protocol-version": erin.version } });
  assert.equal(stream.status, 200);
  assert.match(stream.headers.get("content-type") ?? "", /text\/event-stream/);
  const streamClosed = (async () => {
    const reader = stream.body!.getReader();
    try {
      for (;;) {
        const { done } = await reader.read();
        if (done) break;
      }
    } catch {
      // a reset connection ends the stream as an error: closed all the same
    }
    return Date.now();
  })();
  const echoed = await erin.post(call("echo", { text: "before" }));
  assert.equal(echoed.status, 200);

  // frank: continuous calls through the whole revocation.
  const frank = await connectClient(agent.url, frankDir);
  cleanups.add(() => frank.close());
  let running = true;
  let ok = 0;
  const failures: string[] = [];
  const loop = (async () => {
    while (running) {
      try {
        const r = await frank.client.callTool({ name: "echo", arguments: { text: `n${ok}` } });
        assert.deepEqual(r, { content: [{ type: "text", text: `n${ok}` }] });
        ok++;
      } catch (e) {
        failures.push((e as Error).message);
      }
    }
  })();

  await runCliOk(["ca", "revoke", "--dir", join(mesh.dir, "ca"), "--identity", "team-a/erin", "--reason", "keyCompromise"]);
  const revokedAt = Date.now();
  const closedAt = await Promise.race([streamClosed, new Promise<number>((_, reject) => setTimeout(() => reject(new Error("the SSE stream was still open 10 s after the revocation")), 10_000).unref())]);
  const latency = closedAt - revokedAt;
  const recorded = mesh.authority.list().find((c) => c.identity === "spiffe://example.org/team-a/erin")!.revokedAt!;
  t.diagnostic(`stream closed ${latency} ms after \`ca revoke\` exited (${closedAt - recorded} ms after the revocation was recorded)`);
  assert.ok(latency < 1000, `the stream closed ${latency} ms after the revocation`);

  const pushed = await agent.waitForLog((l) => l.event === "revocation_received" && l.identity === "spiffe://example.org/team-a/erin");
  assert.ok(pushed.connectionsClosed >= 1);
  await agent.waitForLog((l) => l.event === "sessions_revoked" && l.identity === "spiffe://example.org/team-a/erin");

  // The next request cannot get through: the handshake of the revoked certificate is refused.
  up.reset();
  await assert.rejects(erin.post(call("echo", { text: "after" })));
  const refused = await agent.waitForLog((l) => l.event === "handshake_refused" && l.identity === "spiffe://example.org/team-a/erin");
  assert.equal(refused.reason, "revoked");
  assert.deepEqual(up.received.filter((r) => r.toolCalls.length > 0 && r.body.includes("after")), [], summary(up.received));

  // frank never noticed.
  const before = ok;
  while (ok < before + 5) await new Promise((r) => setTimeout(r, 20));
  running = false;
  await loop;
  assert.deepEqual(failures, []);
  assert.ok(ok > 5);
});

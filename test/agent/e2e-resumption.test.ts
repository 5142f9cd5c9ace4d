/**
 * End to end: a client that was accepted, then revoked, cannot come back on a resumed TLS session. The revocation
 * reaches the agent over the CA's live feed (the CRL poll would bring it too, within 30 s).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, meshRoots, rejection, summary, tlsProbe } from "../helpers/e2e.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let daveDir: string;
let erinDir: string;
let frankDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  await mesh.startCa();
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/resumption", { kind: "agent" });
  daveDir = await mesh.issue("team-a/dave");
  erinDir = await mesh.issue("team-a/erin");
  frankDir = await mesh.issue("team-a/frank");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    ca: mesh.caUrl,
    upstream: { url: up.url },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }],
    pinning: { file: join(mesh.dir, "pins-resumption.json") },
  });
  cleanups.add(() => agent.stop());
  await agent.waitForLog((l) => l.event === "crl_loaded" && l.entries === 0);
});

after(() => cleanups.run());

test("a revoked client offering its pre-revocation TLS session gets a full handshake and is refused", async (t) => {
  const roots = meshRoots(mesh);
  const dave = { cert: readFileSync(join(daveDir, "cert.pem"), "utf8"), key: readFileSync(join(daveDir, "key.pem"), "utf8") };
  const first = await tlsProbe(agent.url, { ca: roots, ...dave });
  assert.match(first.received, /^HTTP\/1\.1 200 /, first.error ?? "");
  t.diagnostic(first.session ? "the agent issued a session; dave offers it back" : "the agent issued no session at all");
  up.reset();

  // erin has a live MCP session (and the SDK's GET stream) when she is revoked; frank is never revoked.
  const erin = await connectClient(agent.url, erinDir);
  cleanups.add(() => erin.close());
  const frank = await connectClient(agent.url, frankDir);
  cleanups.add(() => frank.close());
  assert.deepEqual(await erin.client.callTool({ name: "echo", arguments: { text: "before" } }), { content: [{ type: "text", text: "before" }] });

  assert.equal(mesh.authority.revoke({ identity: "team-a/dave", reason: "keyCompromise" }).length, 1);
  assert.equal(mesh.authority.revoke({ identity: "team-a/erin", reason: "keyCompromise" }).length, 1);
  // The CA's live feed brings both revocations.
  for (const who of ["dave", "erin"]) await agent.waitForLog((l) => l.event === "revocation_received" && l.identity === `spiffe://example.org/team-a/${who}`);

  // erin's open connection was closed by the revocation, not left to live until it expires ...
  await agent.waitForLog((l) => l.event === "connection_revoked" && l.identity === "spiffe://example.org/team-a/erin");
  up.reset();
  // ... and her next call cannot get through on a new one.
  await rejection(erin.client.callTool({ name: "echo", arguments: { text: "after" } }));
  assert.deepEqual(up.received.filter((r) => r.toolCalls.length > 0), [], summary(up.received));
  // Other clients keep working.
  assert.deepEqual(await frank.client.callTool({ name: "echo", arguments: { text: "still here" } }), { content: [{ type: "text", text: "still here" }] });
  up.reset();

  const again = await tlsProbe(agent.url, { ca: roots, ...dave, session: first.session ?? undefined });
  assert.equal(again.sessionReused, false, "the agent resumed a TLS session");
  assert.equal(again.received, "", `a revoked client was answered: ${again.received.slice(0, 200)}`);
  const line = await agent.waitForLog((l) => l.event === "handshake_refused" && typeof l.remote === "string" && l.remote.endsWith(`:${again.localPort}`));
  assert.equal(line.reason, "revoked");
  assert.equal(line.identity, "spiffe://example.org/team-a/dave");
  assert.deepEqual(up.received, [], summary(up.received));
});

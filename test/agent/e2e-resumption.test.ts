/**
 * End to end: a client that was accepted, then revoked, cannot come back on a resumed TLS session. The agent polls the
 * CA's CRL every 30 s, so this file waits for one poll (the only slow test of the agent suite, and why it is alone).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { meshRoots, summary, tlsProbe } from "../helpers/e2e.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let daveDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  await mesh.startCa();
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/resumption", { kind: "agent" });
  daveDir = await mesh.issue("team-a/dave");
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

  assert.equal(mesh.authority.revoke({ identity: "team-a/dave", reason: "keyCompromise" }).length, 1);
  // The next CRL poll (within 30 s) brings the revocation.
  await agent.waitForLog((l) => l.event === "crl_loaded" && l.entries >= 1, 45_000);

  const again = await tlsProbe(agent.url, { ca: roots, ...dave, session: first.session ?? undefined });
  assert.equal(again.sessionReused, false, "the agent resumed a TLS session");
  assert.equal(again.received, "", `a revoked client was answered: ${again.received.slice(0, 200)}`);
  const line = await agent.waitForLog((l) => l.event === "handshake_refused" && typeof l.remote === "string" && l.remote.endsWith(`:${again.localPort}`));
  assert.equal(line.reason, "revoked");
  assert.equal(line.identity, "spiffe://example.org/team-a/dave");
  assert.deepEqual(up.received, [], summary(up.received));
});

/**
 * `mcpmesh connect` keeps a desktop client's session alive: the certificate is renewed in-process while calls go on
 * (new connections use the new certificate), and when the agent crashes and comes back, connect reconnects,
 * re-initializes the session the agent lost, answers the request the crash swallowed with an error instead of
 * leaving it hanging, and the next call works — without restarting the client.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Authority } from "../../ca/authority.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { loadIdentity, saveIdentity } from "../../identity/store.ts";
import { createMesh, PASSPHRASE } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { freePort } from "../helpers/ports.ts";
import { rejection } from "../helpers/e2e.ts";
import { startConnectClient } from "../helpers/connect.ts";

const TD = "spiffe://example.org";

test("agent crash mid-session: the swallowed call gets an error, connect reconnects and re-initializes, the next calls work", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const up = await startMcpServer();
  after(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const port = await freePort();
  const config = {
    listen: `127.0.0.1:${port}`,
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "hold"] }],
  };
  let agent = await startAgentProcess(mesh.dir, config);
  after(() => agent.stop());
  const c = await startConnectClient([agent.url, "--identity", alice]);
  after(() => c.close());
  assert.deepEqual((await c.client.callTool({ name: "echo", arguments: { text: "before" } })).content, [{ type: "text", text: "before" }]);

  // A call in flight when the agent dies.
  const held = c.client.callTool({ name: "hold", arguments: {} }, undefined, { timeout: 120_000 });
  while (up.held() === 0) await new Promise((r) => setTimeout(r, 20));
  agent.child.kill("SIGKILL");
  const e = await rejection(held);
  assert.equal(e.code, -32002, e.message);
  assert.match(e.message, /connection to the agent was lost/);

  // A call while the agent is down waits for it (connect retries with backoff) instead of failing at once.
  const during = c.client.callTool({ name: "echo", arguments: { text: "during" } }, undefined, { timeout: 120_000 });
  await c.waitForLog((l) => l.event === "agent_connect_failed" && /ECONNREFUSED/.test(l.reason));
  agent = await startAgentProcess(mesh.dir, config);
  assert.deepEqual((await during).content, [{ type: "text", text: "during" }]);
  await c.waitForLog((l) => l.event === "agent_reinitialized");
  assert.deepEqual((await c.client.callTool({ name: "echo", arguments: { text: "after" } })).content, [{ type: "text", text: "after" }]);
  // The new agent saw a fresh initialize (the client's own, replayed) before the calls.
  const methods = agent.audit().filter((l) => l.identity === `${TD}/team-a/alice`).map((l) => l.method);
  assert.ok(methods.includes("initialize"), JSON.stringify(methods));
  assert.deepEqual(c.errors, []);
  up.releaseHeld();
});

test("in-process renewal: the certificate on disk is replaced twice during a session and calls keep working on new connections", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const ca = await mesh.startCa();
  after(() => ca.close());
  const up = await startMcpServer();
  after(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  // A 1-minute certificate issued 45 s ago: overdue at once, and again about 30 s after the first renewal.
  const past = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() - 45_000 });
  const { token } = past.createToken({ identity: "team-a/renewer", certTtlMs: 60_000 });
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await past.enroll(token, csrPem);
  past.close();
  const dir = join(mesh.dir, "renewer");
  saveIdentity(dir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl: mesh.caUrl, rootFingerprint: mesh.authority.config.rootFingerprint, identity: issued.identity, kind: "client" } });
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo"] }],
  });
  after(() => agent.stop());
  const c = await startConnectClient([agent.url, "--identity", dir]);
  after(() => c.close());
  const echo = async (text: string) => assert.deepEqual((await c.client.callTool({ name: "echo", arguments: { text } })).content, [{ type: "text", text }]);
  await echo("first");
  // The CA backdates leaves by a minute, so a renewed 1-minute certificate is due again within seconds: renewals
  // keep coming for as long as the session lasts, which is the point here.
  const renewed = () => c.logs().filter((l) => l.event === "renewed");
  const acceptedSerials = () => new Set(agent.logs().filter((l) => l.event === "connection_accepted" && l.identity === `${TD}/team-a/renewer`).map((l) => l.serial));
  const usedRenewed = () => {
    const serials = new Set(renewed().map((l) => l.serial));
    return [...acceptedSerials()].filter((s) => serials.has(s));
  };
  await c.waitForLog((l) => l.event === "renewed", 60_000);
  assert.equal(renewed()[0].previous, issued.serial);
  // Renewals come back to back, so a certificate can be replaced on disk before any call opened a connection with it:
  // calls go on (each must succeed) until connections have used two renewed certificates, or 90 s have passed.
  const until = Date.now() + 90_000;
  for (let i = 1; usedRenewed().length < 2 && Date.now() < until; i++) {
    await echo(`after renewal, call ${i}`);
    await new Promise((r) => setTimeout(r, 200)); // the agent's log line for a new connection comes over a pipe
  }
  assert.ok(renewed().length >= 2, "renewed at least twice during the session");
  const serials = new Set(renewed().map((l) => l.serial));
  const used = usedRenewed();
  assert.ok(used.length >= 2, `connections with renewed certificates: ${used.join(", ")}; renewed: ${[...serials].join(", ")}`);
  const onDisk = loadIdentity(dir).serial;
  assert.notEqual(onDisk, issued.serial, "the file on disk changed");
  assert.ok(serials.has(onDisk));
  assert.deepEqual(c.errors, []);
  assert.equal(c.logs().filter((l) => l.event === "agent_reinitialized").length, 0, "renewal never cost the session");
});

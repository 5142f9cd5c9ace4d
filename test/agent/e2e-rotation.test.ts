/**
 * End to end: rotation under load and expiry. Several clients call continuously through the real agent process while
 * their certificates and the agent's own are renewed several times (clients follow their files; the agent reloads on
 * the change of its identity directory and on SIGHUP): zero failed calls, no connection closed by the agent, and a
 * client holding one keep-alive connection across every rotation keeps that very connection. A certificate that
 * reaches notAfter has its connection (and SSE stream) closed then.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { connect } from "node:tls";
import { readFileSync } from "node:fs";
import { Authority } from "../../ca/authority.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { loadIdentity, saveIdentity } from "../../identity/store.ts";
import { renewIdentity } from "../../identity/renew.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import { createMesh, PASSPHRASE, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, connectClient, meshRoots, rawSession } from "../helpers/e2e.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let agentDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  await mesh.startCa();
  up = await startMcpServer();
  cleanups.add(() => up.close());
  agentDir = await mesh.issue("agents/rotating", { kind: "agent" });
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    ca: mesh.caUrl,
    upstream: { url: up.url },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }],
    pinning: { file: join(mesh.dir, "pins-rotation.json") },
  });
  cleanups.add(() => agent.stop());
  await agent.waitForLog((l) => l.event === "crl_loaded");
});

after(() => cleanups.run());

/** The serial of the certificate the agent presents to a new connection. */
function presentedSerial(url: string, ca: string, idDir: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect({ host: u.hostname, port: Number(u.port), ca, cert: readFileSync(join(idDir, "cert.pem")), key: readFileSync(join(idDir, "key.pem")), checkServerIdentity: () => undefined }, () => {
      const serial = s.getPeerX509Certificate()!.serialNumber.toLowerCase().replace(/^0+/, "");
      s.destroy();
      resolve(serial);
    });
    s.on("error", reject);
  });
}

const norm = (s: string) => s.toLowerCase().replace(/^0+/, "");

test("rotation under load: clients and agent renewed three times, zero failed calls, no connection dropped", async (t) => {
  const dirs = await Promise.all(["team-a/c1", "team-a/c2", "team-a/c3"].map((p) => mesh.issue(p)));
  const clients = await Promise.all(dirs.map((d) => connectClient(agent.url, d)));
  for (const c of clients) cleanups.add(() => c.close());
  // One client keeps a single keep-alive connection through everything (it does not follow its files).
  const steadyDir = await mesh.issue("team-a/steady");
  const sf = createMeshFetch(steadyDir, { follow: false });
  cleanups.add(() => sf.close());
  const steady = await rawSession(sf, agent.url, "2025-06-18");

  let running = true;
  const counts = new Map<string, number>();
  const failures: string[] = [];
  const loops = [
    ...clients.map((c, i) =>
      (async () => {
        while (running) {
          try {
            const text = `c${i}-${counts.get(`c${i}`) ?? 0}`;
            const r = await c.client.callTool({ name: "echo", arguments: { text } });
            assert.deepEqual(r, { content: [{ type: "text", text }] });
            counts.set(`c${i}`, (counts.get(`c${i}`) ?? 0) + 1);
          } catch (e) {
            failures.push(`c${i}: ${(e as Error).message}`);
          }
        }
      })(),
    ),
    (async () => {
      while (running) {
        try {
          const r = await steady.post(call("echo", { text: "steady" }));
          assert.equal(r.status, 200);
          assert.equal(r.messages[0]?.result?.content?.[0]?.text, "steady");
          counts.set("steady", (counts.get("steady") ?? 0) + 1);
        } catch (e) {
          failures.push(`steady: ${(e as Error).message}`);
        }
      }
    })(),
  ];
  const progress = async () => {
    const before = new Map(counts);
    // Every caller makes progress between rotations.
    while ([...["c0", "c1", "c2", "steady"]].some((k) => (counts.get(k) ?? 0) < (before.get(k) ?? 0) + 3)) await new Promise((r) => setTimeout(r, 20));
  };

  const roots = meshRoots(mesh);
  const agentSerials = [loadIdentity(agentDir).serial];
  await progress();
  const rotationStart = Date.now();
  for (let round = 1; round <= 3; round++) {
    for (const d of dirs) await renewIdentity(d);
    await progress();
    const renewed = await renewIdentity(agentDir);
    agentSerials.push(renewed.serial);
    // Round 1 relies on the identity directory watch alone; later rounds also send SIGHUP.
    if (round > 1) agent.reload();
    await agent.waitForLog((l) => l.event === "reloaded" && norm(l.serial) === norm(renewed.serial));
    assert.equal(await presentedSerial(agent.url, roots, dirs[0]), norm(renewed.serial), "new connections get the renewed agent certificate");
    await progress();
  }
  running = false;
  await Promise.all(loops);
  t.diagnostic(`calls: ${JSON.stringify(Object.fromEntries(counts))}; agent serials ${agentSerials.length}`);

  assert.deepEqual(failures, []);
  const logs = agent.logs();
  assert.deepEqual(logs.filter((l) => ["connection_revoked", "connection_expired", "reload_failed"].includes(l.event)), []);
  const steadyId = "spiffe://example.org/team-a/steady";
  // Its connections (undici may open a second one while the first is busy) all date from before the first rotation,
  // and none was ever closed.
  const steadyConns = logs.filter((l) => l.event === "connection_accepted" && l.identity === steadyId);
  assert.ok(steadyConns.length >= 1 && steadyConns.every((l) => l.time < rotationStart), `steady connections: ${JSON.stringify(steadyConns)}`);
  assert.equal(logs.filter((l) => l.event === "connection_closed" && l.identity === steadyId).length, 0, "a steady connection was closed");
  // The renewing clients moved to their new certificates.
  for (const [i, d] of dirs.entries()) {
    const serial = norm(loadIdentity(d).serial);
    assert.ok(logs.some((l) => l.event === "connection_accepted" && norm(l.serial) === serial), `client ${i} connected with its latest certificate`);
  }
});

test("expiry: a connection and its SSE stream are closed when the client certificate reaches notAfter", async (t) => {
  // A CA clock 55 s behind: the shortest certificate (1 minute) then ends about 5 s from now.
  const past = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() - 55_000 });
  cleanups.add(() => past.close());
  const { token } = past.createToken({ identity: "team-a/brief", certTtlMs: 60_000 });
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await past.enroll(token, csrPem);
  const dir = join(mesh.dir, "brief");
  saveIdentity(dir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl: mesh.caUrl, rootFingerprint: past.config.rootFingerprint, identity: issued.identity, kind: "client" } });

  const f = createMeshFetch(dir);
  cleanups.add(() => f.close());
  const s = await rawSession(f, agent.url, "2025-06-18");
  const stream = await f(agent.url, { method: "GET", headers: { accept: "text/event-stream", "mcp-session-id": s.sid, "mcp-protocol-version": s.version } });
  assert.equal(stream.status, 200);
  const reader = stream.body!.getReader();
  const closedAt = await (async () => {
    try {
      while (!(await reader.read()).done) { /* events */ }
    } catch {
      /* reset: closed all the same */
    }
    return Date.now();
  })();
  t.diagnostic(`stream closed ${closedAt - issued.notAfter} ms after notAfter`);
  assert.ok(closedAt >= issued.notAfter - 5, `closed ${issued.notAfter - closedAt} ms before notAfter`);
  const line = await agent.waitForLog((l) => l.event === "connection_expired" && l.identity === "spiffe://example.org/team-a/brief");
  assert.equal(Date.parse(line.notAfter), issued.notAfter);
  // The next request is refused at the handshake (the certificate is expired now).
  await assert.rejects(s.post(call("echo", { text: "late" })));
  const refused = await agent.waitForLog((l) => l.event === "handshake_refused" && l.identity === undefined && l.reason !== undefined && /expired/.test(`${l.reason} ${l.detail}`));
  assert.ok(refused);
});

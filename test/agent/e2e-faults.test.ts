/**
 * End to end: faults around rotation and revocation, against the real agent process.
 * - CA down during the agent's renewal: backoff, an alert once less than a third of the life is left, no CRL meanwhile
 *   (fail closed: every handshake refused), then success when the CA returns.
 * - The CRL endpoint serves garbage, a CRL of another CA, a CRL that runs out (nextUpdate honoured: fail closed, or
 *   serve-with-alert), and a CRL from a CA clock 5 minutes ahead. The CRLs are the real CA's (Authority instances on the
 *   mesh's own database, some with a shifted clock); only their delivery is faulty: a small HTTPS endpoint stands
 *   where the agent's `ca:` points.
 * - Clock skew of ±5 minutes for client certificates.
 * - Trust bundle, identity roots and config replaced by garbage: the reload is refused with a clear line, the old state
 *   stays; a good change then reloads.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileSync, readFileSync } from "node:fs";
import { createServer } from "node:https";
import { generateKeyPairSync } from "node:crypto";
import { stringify } from "yaml";
import { Authority, CRL_VALIDITY_MS } from "../../ca/authority.ts";
import { toWebCryptoPublicKey } from "../../ca/keys.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { saveIdentity } from "../../identity/store.ts";
import { freePort } from "../helpers/ports.ts";
import { createMesh, PASSPHRASE, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { meshRoots, tlsProbe } from "../helpers/e2e.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
});
after(() => cleanups.run());

const RULES = [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }];

/** An identity issued by the mesh CA running on a shifted clock. */
async function issueShifted(path: string, shiftMs: number, opts: { kind?: "client" | "agent"; certTtlMs?: number } = {}): Promise<string> {
  const a = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() + shiftMs });
  try {
    const { token } = a.createToken({ identity: path, kind: opts.kind ?? "client", certTtlMs: opts.certTtlMs, ips: opts.kind === "agent" ? ["127.0.0.1"] : undefined });
    const { keyPem, csrPem } = await newKeyAndCsr();
    const issued = await a.enroll(token, csrPem);
    const dir = join(mesh.dir, `shifted-${path.replace(/\//g, "_")}`);
    saveIdentity(dir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl: mesh.caUrl, rootFingerprint: a.config.rootFingerprint, identity: issued.identity, kind: issued.kind } });
    return dir;
  } finally {
    a.close();
  }
}

/** A CRL signed by the mesh CA on a shifted clock. */
async function crlShifted(shiftMs: number): Promise<string> {
  const a = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() + shiftMs });
  try {
    return await a.crlPem();
  } finally {
    a.close();
  }
}

function creds(dir: string) {
  return { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8") };
}

async function admitted(agent: AgentProcess, dir: string): Promise<boolean> {
  const p = await tlsProbe(agent.url, { ca: meshRoots(mesh), ...creds(dir) });
  return /^HTTP\/1\.1 200 /.test(p.received);
}

async function refusedFor(agent: AgentProcess, dir: string): Promise<any> {
  const p = await tlsProbe(agent.url, { ca: meshRoots(mesh), ...creds(dir) });
  assert.equal(p.received, "", "a refused client was answered");
  return agent.waitForLog((l) => l.event === "handshake_refused" && typeof l.remote === "string" && l.remote.endsWith(`:${p.localPort}`));
}

async function until(cond: () => Promise<boolean> | boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("CA down during the agent's renewal: backoff, expiring alert, fail closed without a CRL; all recovers when the CA returns", async () => {
  // A 1-minute agent certificate from a CA clock 45 s behind: 15 s of a 2-minute life left (backdating included),
  // so renewal is overdue and less than a third of the life is left.
  const agentDir = await issueShifted("agents/faulty", -45_000, { kind: "agent", certTtlMs: 60_000 });
  const alice = await mesh.issue("team-a/alice");
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0", identity: agentDir, ca: mesh.caUrl, upstream: { url: up.url }, rules: RULES,
    revocation: { pollInterval: "2s" }, pinning: { file: join(mesh.dir, "pins-f1.json") },
  });
  cleanups.add(() => agent.stop());
  const failed = await agent.waitForLog((l) => l.event === "renewal_failed");
  assert.match(failed.reason, /cannot reach the CA/);
  const alert = await agent.waitForLog((l) => l.event === "certificate_expiring");
  assert.equal(alert.level, 55, "logged at the alert level");
  const stale = await agent.waitForLog((l) => l.event === "revocation_stale");
  assert.equal(stale.missing, true);
  assert.equal(stale.level, 55);
  // Missing CRL: fail closed.
  assert.equal((await refusedFor(agent, alice)).reason, "revocation_unavailable");

  await mesh.startCa();
  const renewed = await agent.waitForLog((l) => l.event === "renewed", 20_000);
  await agent.waitForLog((l) => l.event === "reloaded" && l.serial === renewed.serial);
  await agent.waitForLog((l) => l.event === "crl_loaded");
  assert.ok(agent.logs().filter((l) => l.event === "renewal_failed").every((l, i, all) => i === 0 || l.retryInMs >= all[i - 1].retryInMs * 0.5), "retries back off");
  await until(() => admitted(agent, alice), "alice admitted once the CRL is held");
  await agent.stop();
});

test("faulty CRLs: garbage and foreign CRLs are refused and the last one kept; nextUpdate honoured; clock skew", async (t) => {
  // The CRL endpoint the agents poll. Its certificate is the CA's own server certificate.
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const serverCert = await mesh.authority.issueServerCertificate(await toWebCryptoPublicKey(publicKey));
  let body = "";
  const srv = createServer({ key: privateKey.export({ type: "pkcs8", format: "pem" }) as string, cert: serverCert.chainPem, minVersion: "TLSv1.3" }, (req, res) => {
    if (req.url?.startsWith("/v1/crl")) res.writeHead(200, { "content-type": "application/x-pem-file" }).end(body);
    else res.writeHead(404).end();
  });
  const port = await freePort();
  await new Promise<void>((r) => srv.listen(port, "127.0.0.1", () => r()));
  cleanups.add(() => new Promise<void>((r) => { srv.close(() => r()); srv.closeAllConnections(); }));
  const crlUrl = `https://127.0.0.1:${port}`;

  // A CRL that runs out 25 s from now: enough for two agents to start and the refusal steps below to run on a
  // loaded machine (with 6 s, start-up alone sometimes outlasted it). The agents refuse an older CRL than the one
  // they hold, so the window cannot be opened later instead.
  body = await crlShifted(-CRL_VALIDITY_MS + 25_000);
  const agentDir = await mesh.issue("agents/crl", { kind: "agent" });
  const bob = await mesh.issue("team-a/bob");
  const start = (name: string, onStale: string) => startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0", identity: agentDir, ca: crlUrl, upstream: { url: up.url }, rules: RULES,
    revocation: { pollInterval: "1s", onStale, feed: false }, pinning: { file: join(mesh.dir, `pins-${name}.json`) },
  });
  const closed = await start("closed", "fail-closed");
  cleanups.add(() => closed.stop());
  const open = await start("open", "serve-with-alert");
  cleanups.add(() => open.stop());
  for (const a of [closed, open]) await a.waitForLog((l) => l.event === "crl_loaded");
  assert.ok(await admitted(closed, bob));

  // Garbage, then a CRL signed by another CA: refused, the last CRL stays in force.
  body = "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n";
  const bad = await closed.waitForLog((l) => l.event === "crl_refresh_failed");
  t.diagnostic(`garbage: ${bad.reason}`);
  assert.match(bad.reason, /CRL/);
  assert.ok(await admitted(closed, bob));
  const other = await createMesh();
  cleanups.add(() => other.close());
  body = await other.authority.crlPem();
  const foreign = await closed.waitForLog((l) => l.event === "crl_refresh_failed" && l.reason !== bad.reason);
  t.diagnostic(`foreign: ${foreign.reason}`);
  assert.ok(await admitted(closed, bob));

  // Past nextUpdate with no new CRL: fail closed refuses, serve-with-alert admits and alerts.
  await closed.waitForLog((l) => l.event === "revocation_stale", 60_000);
  assert.equal((await refusedFor(closed, bob)).reason, "revocation_stale");
  const alert = await open.waitForLog((l) => l.event === "revocation_stale", 60_000);
  assert.equal(alert.level, 55);
  assert.equal(alert.onStale, "serve-with-alert");
  assert.ok(await admitted(open, bob));

  // A CRL from a CA clock 5 minutes ahead loads (thisUpdate 4 minutes in the agent's future) and ends the episode.
  body = await crlShifted(5 * 60_000);
  await closed.waitForLog((l) => l.event === "crl_current");
  await until(() => admitted(closed, bob), "bob admitted again with a current CRL");

  // Client certificates from a CA 5 minutes behind work; 5 minutes ahead they are not valid yet (1 minute backdating
  // covers only 1 minute of skew), refused with a reason that says so.
  const behind = await issueShifted("team-a/behind", -5 * 60_000);
  assert.ok(await admitted(closed, behind), "a certificate from a CA 5 minutes behind is accepted");
  const ahead = await issueShifted("team-a/ahead", 5 * 60_000);
  assert.equal((await refusedFor(closed, ahead)).reason, "not_yet_valid");
});

test("trust bundle, roots and config replaced by garbage: reload refused with a clear line, old state kept; a good change reloads", async () => {
  await mesh.startCa().catch(() => {}); // may be up from the first test
  const agentDir = await mesh.issue("agents/reload", { kind: "agent" });
  const carol = await mesh.issue("team-a/carol");
  const other = await createMesh("other.org");
  cleanups.add(() => other.close());
  const bundle = join(mesh.dir, "extra-bundle.pem");
  writeFileSync(bundle, other.authority.rootPem);
  const config = {
    listen: "127.0.0.1:0", identity: agentDir, ca: mesh.caUrl, upstream: { url: up.url }, rules: RULES,
    trustBundles: [bundle], trustDomains: ["example.org", "other.org"], pinning: { file: join(mesh.dir, "pins-reload.json") },
  };
  const agent = await startAgentProcess(mesh.dir, config);
  cleanups.add(() => agent.stop());
  await agent.waitForLog((l) => l.event === "crl_loaded");
  assert.ok(await admitted(agent, carol));
  const failures = () => agent.logs().filter((l) => l.event === "reload_failed");

  writeFileSync(bundle, "garbage\n");
  await until(() => failures().length >= 1, "a reload_failed line for the bundle");
  assert.match(failures().at(-1).reason, /trustBundles.*extra-bundle\.pem holds no PEM certificate/);
  assert.equal(failures().at(-1).level, 50);
  assert.ok(await admitted(agent, carol), "the old bundle and certificates stay in force");
  agent.reload(); // SIGHUP: the same refusal
  await until(() => failures().length >= 2, "a reload_failed line after SIGHUP");
  writeFileSync(bundle, other.authority.rootPem);
  await agent.waitForLog((l) => l.event === "reloaded" && l.bundle === 2);

  const rootsFile = join(agentDir, "ca.pem");
  const roots = readFileSync(rootsFile, "utf8");
  writeFileSync(rootsFile, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  await until(() => failures().length >= 3, "a reload_failed line for the identity's roots");
  assert.ok(await admitted(agent, carol));
  writeFileSync(rootsFile, roots);

  const n = agent.logs().filter((l) => l.event === "reloaded").length;
  writeFileSync(agent.configFile, "listen: [unclosed\n");
  await until(() => failures().length >= 4, "a reload_failed line for the config");
  assert.match(failures().at(-1).reason, /invalid agent config .*line \d+, column \d+/s);
  assert.ok(await admitted(agent, carol));

  // A good change (carol's team is now denied entirely) takes effect without a restart.
  writeFileSync(agent.configFile, stringify({ ...config, rules: [{ clients: ["spiffe://example.org/team-a/carol"], effect: "deny" }, ...RULES] }));
  await until(() => agent.logs().filter((l) => l.event === "reloaded").length > n, "a reload after the good config");
  assert.equal((await refusedFor(agent, carol)).reason, "not_admitted");
});

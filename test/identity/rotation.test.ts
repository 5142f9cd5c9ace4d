import { test, after } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { join } from "node:path";
import { Authority } from "../../ca/authority.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { loadIdentity, saveIdentity } from "../../identity/store.ts";
import { RenewalScheduler } from "../../identity/rotation.ts";
import { createLogger } from "../../lib/log.ts";
import { createMesh, PASSPHRASE } from "../helpers/mesh.ts";
import { Writable } from "node:stream";

function memoryLogger() {
  const lines: any[] = [];
  const sink = new Writable({ write(chunk, _e, cb) { for (const l of String(chunk).split("\n")) if (l) lines.push(JSON.parse(l)); cb(); } });
  return { lines, logger: createLogger({ name: "test", level: "debug", destination: sink }) };
}

test("renewal is due at half-life within ±10% jitter", () => {
  const s = (r: number) => new RenewalScheduler({ dir: "/nonexistent", random: () => r });
  assert.equal(s(0).dueAt(0, 1000), 450);
  assert.equal(s(0.5).dueAt(0, 1000), 500);
  assert.equal(s(1).dueAt(0, 1000), 550);
});

test("the daemon's scheduler renews, backs off while the CA is down, then succeeds when it returns", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const dir = await mesh.issue("team-a/rotating");
  const before = loadIdentity(dir);
  const { lines, logger } = memoryLogger();
  const s = new RenewalScheduler({ dir, logger, minBackoffMs: 50, maxBackoffMs: 200, random: () => 0.5 });
  after(() => s.stop());

  // The CA's API is not running yet: the attempt fails, is logged, and a retry is scheduled.
  const failed = once(s, "failed");
  assert.equal(await s.renewNow(), null);
  await failed;
  assert.ok(lines.some((l) => l.event === "renewal_failed" && /cannot reach the CA/.test(l.reason)), "the failure names the unreachable CA");
  assert.equal(loadIdentity(dir).serial, before.serial, "nothing changed on disk");

  const ca = await mesh.startCa();
  after(() => ca.close());
  // The identity's CA URL is the mesh URL; the backoff timer retries by itself.
  const [renewed] = await once(s, "renewed");
  assert.equal(renewed.previousSerial, before.serial);
  const now = loadIdentity(dir);
  assert.equal(now.serial, renewed.serial);
  assert.notEqual(now.keyPem, before.keyPem, "every renewal brings a new key");
  assert.equal(now.id, before.id);
  assert.equal(mesh.authority.list().find((c) => c.serial === now.serial)?.via, "renew");
});

test("an identity whose certificate has expired stops the scheduler with a clear error", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  // Issue through the same CA with a clock two hours behind: the certificate is already expired now.
  const past = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() - 2 * 3_600_000 });
  after(() => past.close());
  const { token } = past.createToken({ identity: "team-a/old", certTtlMs: 60_000 });
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await past.enroll(token, csrPem);
  const dir = join(mesh.dir, "old");
  saveIdentity(dir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl: mesh.caUrl, rootFingerprint: past.config.rootFingerprint, identity: issued.identity, kind: "client" } });

  const { lines, logger } = memoryLogger();
  const s = new RenewalScheduler({ dir, logger });
  after(() => s.stop());
  const expired = once(s, "expired");
  // The scheduler's timers are unref'd (it is embedded in daemons); keep this test's event loop alive meanwhile.
  const keepAlive = setInterval(() => {}, 1000);
  s.start();
  await expired.finally(() => clearInterval(keepAlive));
  const line = lines.find((l) => l.event === "certificate_expired");
  assert.ok(line, "an expiry line is logged");
  assert.match(line.msg, /enroll again with a new token/);
});

test("less than a third of the lifetime left and renewal failing raises an alert", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  // A 1-hour certificate issued 50 minutes ago: 1/6 of its life is left. The CA API is down.
  const past = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() - 50 * 60_000 });
  after(() => past.close());
  const { token } = past.createToken({ identity: "team-a/late" });
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await past.enroll(token, csrPem);
  const dir = join(mesh.dir, "late");
  saveIdentity(dir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl: mesh.caUrl, rootFingerprint: past.config.rootFingerprint, identity: issued.identity, kind: "client" } });

  const { lines, logger } = memoryLogger();
  const s = new RenewalScheduler({ dir, logger, minBackoffMs: 60_000 });
  after(() => s.stop());
  const expiring = once(s, "expiring");
  const keepAlive = setInterval(() => {}, 1000);
  await s.renewNow();
  const [info] = await expiring.finally(() => clearInterval(keepAlive));
  assert.ok(info.remainingMs > 0 && info.remainingMs < 20 * 60_000);
  const alert = lines.find((l) => l.alert === "cert_expiring");
  assert.ok(alert, "an alert-level line names the problem");
  assert.equal(alert.level, 55);
  assert.equal(alert.identity, "spiffe://example.org/team-a/late");
});

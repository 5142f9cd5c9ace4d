/**
 * CA signing threads (ca/signing-pool.ts): CSR checks and leaf signatures on worker threads. Through the Authority the
 * result is the same as on the main thread — the same profile, the same refusals with the same codes and messages.
 * A thread that dies fails only the requests it held (503-class error, nothing issued) and is replaced; closing fails
 * what is pending; idle threads never keep a process alive; bad `--signing-threads` values are refused by name.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Authority, createToken } from "../../ca/authority.ts";
import { seq, oid, tlv } from "../../ca/der.ts";
import { SigningPool } from "../../ca/signing-pool.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { derToPem, pemToDer } from "../../lib/x509.ts";
import { Cleanups, runCli, tmpdir } from "../helpers/cli.ts";
import { openssl, TEST_PASSPHRASE } from "../helpers/ca.ts";

const REPO = join(import.meta.dirname, "..", "..");
const cleanup = new Cleanups();
after(() => cleanup.run());

/** A stand-in issuer for thread-level tests (what the leaf chains to does not matter there). */
function testSigner() {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { signer: privateKey, nameDer: seq(), akiExtension: seq(oid("2.5.29.35"), tlv(0x04, seq())) };
}

const LEAF = { spiffeId: "spiffe://example.org/pool/a", kind: "client" as const, dns: [], ips: [], ttlMs: 3_600_000, now: Date.now() };

describe("through the Authority: threads give the main thread's results", () => {
  let dir: string;
  let onThread: Authority;
  let onPool: Authority;
  const failures: Error[] = [];
  before(async () => {
    dir = join(tmpdir(cleanup.add), "ca");
    (await Authority.init({ dir, trustDomain: "example.org", url: "https://127.0.0.1:9443", passphrase: TEST_PASSPHRASE })).close();
    onThread = await Authority.open({ dir, passphrase: TEST_PASSPHRASE });
    cleanup.add(() => onThread.close());
    onPool = await Authority.open({ dir, passphrase: TEST_PASSPHRASE, signingThreads: 2, onSigningFailure: (e) => void failures.push(e) });
    cleanup.add(() => onPool.close());
  });
  const token = (a: Authority, name: string) => createToken(a.store, a.config, { identity: `pool/${name}` }, Date.now()).token;

  test("a certificate signed on a thread verifies with openssl and certifies the CSR's key", async () => {
    const { csrPem } = await newKeyAndCsr();
    const issued = await onPool.enroll(token(onPool, "ok"), csrPem);
    const work = tmpdir(cleanup.add);
    const [leaf, int] = issued.chainPem.split(/(?<=-----END CERTIFICATE-----\n)/);
    writeFileSync(join(work, "leaf.pem"), leaf);
    writeFileSync(join(work, "int.pem"), int);
    writeFileSync(join(work, "root.pem"), issued.rootsPem);
    const v = await openssl(["verify", "-purpose", "sslclient", "-CAfile", join(work, "root.pem"), "-untrusted", join(work, "int.pem"), join(work, "leaf.pem")]);
    assert.equal(v.code, 0, v.stderr);
    writeFileSync(join(work, "req.pem"), csrPem);
    const csrKey = await openssl(["req", "-in", join(work, "req.pem"), "-noout", "-pubkey"]);
    assert.match(csrKey.stdout, /BEGIN PUBLIC KEY/);
    const leafKey = await openssl(["x509", "-in", join(work, "leaf.pem"), "-noout", "-pubkey"]);
    assert.equal(leafKey.stdout, csrKey.stdout);
    assert.equal(onPool.list().find((c) => c.serial === issued.serial)?.identity, "spiffe://example.org/pool/ok");
    assert.deepEqual(failures, []);
  });

  test("bad CSRs: the same refusal, code and message on a thread as on the main thread; tokens stay unused", async () => {
    const good = (await newKeyAndCsr()).csrPem;
    const tampered = Buffer.from(pemToDer(good));
    tampered[tampered.length - 1] ^= 0x01;
    const bad: [string, unknown][] = [
      ["missing", undefined],
      ["not a string", 42],
      ["empty", ""],
      ["not a CSR", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"],
      ["signature altered", derToPem(tampered, "CERTIFICATE REQUEST")],
      ["too large", `-----BEGIN CERTIFICATE REQUEST-----\n${"A".repeat(20_000)}\n-----END CERTIFICATE REQUEST-----\n`],
      ["a certificate, not a request", readFileSync(join(dir, "root.pem"), "utf8")],
    ];
    for (const [name, csr] of bad) {
      const outcome = async (a: Authority) => {
        const t = token(a, `bad-${name.replace(/\W/g, "-")}-${a === onPool ? "pool" : "main"}`);
        const e = await a.enroll(t, csr).then(() => null, (err: { code?: string; message: string }) => ({ code: err.code, message: err.message }));
        return e;
      };
      const main = await outcome(onThread);
      const pooled = await outcome(onPool);
      assert.ok(main, `${name}: refused on the main thread`);
      assert.deepEqual(pooled, main, `${name}: same refusal on a thread`);
    }
    assert.equal(onPool.list().filter((c) => c.identity.includes("/pool/bad-")).length, 0, "nothing issued for a bad CSR");
    assert.deepEqual(failures, [], "a refused CSR is not a thread failure");
  });
});

test("a thread that dies fails the requests it held (CA unavailable), none hangs, and the next request gets a new thread", async () => {
  const failures: Error[] = [];
  const pool = new SigningPool(testSigner(), 1, (e) => void failures.push(e));
  cleanup.add(() => pool.close());
  const { csrPem } = await newKeyAndCsr();
  assert.ok((await pool.checkAndSign(csrPem, LEAF)).pem.startsWith("-----BEGIN CERTIFICATE-----"));
  const [thread] = pool.running;
  const inFlight = Array.from({ length: 50 }, () => pool.checkAndSign(csrPem, LEAF));
  await thread.terminate();
  const outcomes = await Promise.allSettled(inFlight);
  const rejected = outcomes.filter((o) => o.status === "rejected");
  assert.ok(rejected.length > 0, "some requests were still on the thread when it died");
  for (const o of rejected) assert.equal((o.reason as { code?: string }).code, "MCPMESH_CA_UNAVAILABLE");
  assert.equal(failures.length, 1, "the failure is reported once");
  const again = await pool.checkAndSign(csrPem, LEAF);
  assert.ok(again.pem.startsWith("-----BEGIN CERTIFICATE-----"));
  assert.notEqual(pool.running[0], thread, "a new thread took over");
});

test("close(): requests in hand fail as 'shutting down', later ones too, and the threads are gone", async () => {
  const pool = new SigningPool(testSigner(), 2).warm();
  const { csrPem } = await newKeyAndCsr();
  const settled = Promise.allSettled(Array.from({ length: 20 }, () => pool.checkAndSign(csrPem, LEAF)));
  await pool.close();
  for (const o of await settled) {
    if (o.status === "rejected") assert.match((o.reason as Error).message, /shutting down/);
  }
  await assert.rejects(pool.checkAndSign(csrPem, LEAF), { code: "MCPMESH_CA_UNAVAILABLE", message: /shutting down/ });
  assert.deepEqual(pool.running, []);
});

test("idle signing threads do not keep a process alive (a process that forgets close() still exits)", async () => {
  const script = `
    import { generateKeyPairSync } from "node:crypto";
    import { SigningPool } from ${JSON.stringify(join(REPO, "ca", "signing-pool.ts"))};
    import { newKeyAndCsr } from ${JSON.stringify(join(REPO, "identity", "enroll.ts"))};
    import { seq } from ${JSON.stringify(join(REPO, "ca", "der.ts"))};
    const pool = new SigningPool({ signer: generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey, nameDer: seq(), akiExtension: seq() }, 2).warm();
    const leaf = await pool.checkAndSign((await newKeyAndCsr()).csrPem, ${JSON.stringify(LEAF)});
    console.log(leaf.serial.length > 0 ? "signed" : "no serial");`;
  const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = execFile(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: REPO }, (err, stdout, stderr) => resolve({ code: err ? (err.code as number) ?? 1 : 0, stdout, stderr }));
    cleanup.add(() => void (child.exitCode === null && child.kill("SIGKILL")));
  });
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout.trim(), "signed");
});

test("`ca serve --signing-threads`: bad values are refused by name before anything listens", async () => {
  const dir = join(tmpdir(cleanup.add), "ca");
  (await Authority.init({ dir, trustDomain: "example.org", url: "https://127.0.0.1:9", passphrase: TEST_PASSPHRASE })).close();
  for (const value of ["-1", "abc", "1.5", "65", "", "0x2", "2 "]) {
    const r = await runCli(["ca", "serve", "--dir", dir, "--signing-threads", value], { env: { MCPMESH_CA_PASSPHRASE: TEST_PASSPHRASE } });
    assert.notEqual(r.code, 0, `--signing-threads "${value}" must be refused`);
    assert.ok(r.stderr.includes(`signing-threads: "${value}" is not a whole number from 0 to 64`), `"${value}": ${r.stderr}`);
    assert.ok(!/listening/.test(r.stdout + r.stderr), "nothing started");
  }
});

/**
 * One-time enrollment tokens against a real CA (binary + HTTPS + SQLite): every refused redemption says why and
 * changes nothing (no certificate, token still unused, no identity directory written); concurrent redemptions of
 * one token have exactly one winner.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { Authority } from "../../ca/authority.ts";
import { decodeToken, encodeToken } from "../../ca/token.ts";
import { enroll, newKeyAndCsr } from "../../identity/enroll.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { caCall, startTestCa, TEST_PASSPHRASE, type TestCa } from "../helpers/ca.ts";

describe("enrollment tokens", () => {
  const cleanup = new Cleanups();
  let ca: TestCa;
  let other: Authority; // CA "B": a different root, same trust domain
  after(() => cleanup.run());
  before(async () => {
    ca = await startTestCa(cleanup.add, { init: "library" });
    const dirB = tmpdir(cleanup.add, "mcpmesh-ca-b-");
    other = await Authority.init({ dir: `${dirB}/ca`, trustDomain: "example.org", url: "https://127.0.0.1:1", passphrase: TEST_PASSPHRASE });
    cleanup.add(() => other.close());
  });

  /** Runs `mcpmesh enroll TOKEN` and asserts the refusal and that nothing changed anywhere. */
  async function assertEnrollRefused(token: string, message: string, opts: { stateToken?: string } = {}): Promise<void> {
    const dir = ca.idDir();
    const before = ca.snapshot();
    const r = await ca.cli(["enroll", token, "--dir", dir]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr.trim(), `mcpmesh: ${message}`);
    assert.equal(r.stdout, "");
    assert.equal(existsSync(dir), false, "no identity directory written");
    assert.deepEqual(ca.snapshot(), before, "database unchanged (no certificate, token state as before)");
    if (opts.stateToken) assert.equal(ca.tokenRow(opts.stateToken)?.usedAt ?? null, null, "token still unused");
  }

  test("an expired token is refused (token made with `--ttl 1s`)", async () => {
    const r = await ca.cli(["ca", "token", "--dir", ca.dir, "--identity", "late/bob", "--ttl", "1s"]);
    assert.equal(r.code, 0, r.stderr);
    const token = r.stdout.trim();
    await sleep(1500); // let it expire: a wait, not a timing assertion
    await assertEnrollRefused(token, "token: expired (ask for a new one)", { stateToken: token });
    assert.equal(ca.tokenRow(token)?.usedAt, null);
  });

  test("a used token is refused the second time", async () => {
    const first = await ca.enroll("reuse/carol");
    const row = ca.tokenRow(first.token);
    assert.ok(row?.usedAt, "the first redemption marked the token used");
    assert.equal(row?.usedSerial, first.serial);
    await assertEnrollRefused(first.token, "token: already used (tokens are single-use; ask for a new one)");
    assert.deepEqual(ca.tokenRow(first.token), row, "used_at / used_serial untouched by the refused attempt");
  });

  test("two concurrent `enroll()` calls with one token: exactly one wins", async () => {
    const token = ca.token("race/dave");
    const dirs = [ca.idDir(), ca.idDir()];
    const results = await Promise.allSettled(dirs.map((d) => enroll(token, d)));
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    assert.equal(won.length, 1, "exactly one winner");
    assert.equal(lost.length, 1);
    assert.equal(lost[0].reason.code, "MCPMESH_TOKEN_USED");
    assert.equal(lost[0].reason.status, 403);
    assert.equal(lost[0].reason.message, "token: already used (tokens are single-use; ask for a new one)");
    const loserDir = dirs[results.indexOf(lost[0])];
    assert.equal(existsSync(loserDir), false, "the loser wrote nothing");
    const certs = ca.snapshot().certs.filter((c) => c.identity === "spiffe://example.org/race/dave");
    assert.equal(certs.length, 1, "the database holds one certificate");
    assert.equal(ca.tokenRow(token)?.usedSerial, certs[0].serial);
  });

  test("eight concurrent raw HTTPS redemptions of one token: one 201, seven 403 MCPMESH_TOKEN_USED", async () => {
    const token = ca.token("race/erin");
    const csrs = await Promise.all(Array.from({ length: 8 }, () => newKeyAndCsr()));
    const answers = await Promise.all(csrs.map(({ csrPem }) => caCall(ca, "/v1/enroll", { token, csr: csrPem })));
    const statuses = answers.map((a) => a.status).sort();
    assert.deepEqual(statuses, [201, 403, 403, 403, 403, 403, 403, 403]);
    for (const a of answers.filter((x) => x.status === 403)) {
      assert.deepEqual(a.json, { error: { code: "MCPMESH_TOKEN_USED", message: "token: already used (tokens are single-use; ask for a new one)" } });
    }
    const winner = answers.find((a) => a.status === 201)!.json;
    const certs = ca.snapshot().certs.filter((c) => c.identity === "spiffe://example.org/race/erin");
    assert.deepEqual(certs.map((c) => c.serial), [winner.serial]);
  });

  test("a token made by another CA: the CLI refuses the CA (fingerprint mismatch), the API refuses the token", async () => {
    const tokenB = other.createToken({ identity: "team-a/alice" }).token;
    const p = decodeToken(tokenB);
    // B's token pointed at A's URL: the enrolling side fetches A's roots, none has B's fingerprint.
    const crafted = encodeToken({ url: ca.url, fingerprint: p.fingerprint, secret: p.secret });
    await assertEnrollRefused(crafted, `the CA at ${ca.url} does not present the root certificate the token names (fingerprint mismatch); refusing to enroll`);

    // The same token straight at A's API: A sees a fingerprint that is not its own.
    const before = ca.snapshot();
    const { csrPem } = await newKeyAndCsr();
    const r = await caCall(ca, "/v1/enroll", { token: crafted, csr: csrPem });
    assert.equal(r.status, 403);
    assert.deepEqual(r.json, { error: { code: "MCPMESH_TOKEN_UNKNOWN", message: "token: it was made by another CA (root fingerprint differs)" } });
    // B's secret dressed up with A's fingerprint: A has no such token.
    const forged = encodeToken({ url: ca.url, fingerprint: ca.config.rootFingerprint, secret: p.secret });
    const f = await caCall(ca, "/v1/enroll", { token: forged, csr: csrPem });
    assert.equal(f.status, 403);
    assert.deepEqual(f.json, { error: { code: "MCPMESH_TOKEN_UNKNOWN", message: "token: unknown to this CA" } });
    assert.deepEqual(ca.snapshot(), before, "A's database unchanged");
    assert.equal(other.list().length, 0, "B issued nothing");
  });

  const damaged: { name: string; token: () => string; message: string }[] = [
    { name: "not a token at all", token: () => "hello", message: 'token: not an mcpmesh enrollment token (it should start with "mcpmesh1.")' },
    { name: "undecodable body", token: () => "mcpmesh1.!!!!", message: "token: is damaged (not decodable); copy it again in full" },
    { name: "truncated secret", token: () => encodeToken({ url: ca.url, fingerprint: ca.config.rootFingerprint, secret: "short" }), message: "token: is damaged (fields missing or malformed); copy it again in full" },
    { name: "plain-http CA URL", token: () => encodeToken({ url: `http://127.0.0.1:${ca.port}`, fingerprint: ca.config.rootFingerprint, secret: "x".repeat(43) }), message: "token: carries a CA URL that is not https" },
  ];
  test("damaged tokens are refused by `enroll()` before any request, writing nothing", async () => {
    const before = ca.snapshot();
    for (const c of damaged) {
      const dir = ca.idDir();
      await assert.rejects(enroll(c.token(), dir), { code: "MCPMESH_INVALID_ARGUMENT", message: c.message }, c.name);
      assert.equal(existsSync(dir), false, c.name);
    }
    assert.deepEqual(ca.snapshot(), before);
  });
});

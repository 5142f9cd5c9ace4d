/**
 * The leaf profile and the CA core's input validation, in-process (the same `Authority` that `ca serve` runs), with
 * an injected clock so dates can be asserted exactly. The binary and HTTPS paths are covered by lifecycle.test.ts.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Authority, CRL_VALIDITY_MS, type TokenOptions } from "../../ca/authority.ts";
import { randomSerial } from "../../ca/profile.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { normalizeSerial, pemToDer, splitPemCertificates } from "../../lib/x509.ts";
import { x509 } from "../../lib/peculiar.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { TEST_PASSPHRASE } from "../helpers/ca.ts";

const HOUR = 3_600_000;
const T0 = Date.UTC(2030, 0, 15, 12, 0, 0); // a whole second, so certificate dates compare exactly
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

function leafOf(chainPem: string): x509.X509Certificate {
  return new x509.X509Certificate(splitPemCertificates(chainPem)[0]);
}

/**
 * The serial as @peculiar/x509 reads it: the 16 random bytes (the DER INTEGER's 0x00 pad, present when the top bit
 * is set so the serial stays positive, is not part of the value).
 */
function serialBytes(c: x509.X509Certificate): Buffer {
  const b = Buffer.from(c.serialNumber, "hex");
  assert.equal(b.length, 16, `serial ${c.serialNumber} is 128 bits`);
  assert.notEqual(b[0], 0, "no leading zero byte: exactly 16 significant bytes");
  return b;
}

describe("leaf profile and CA core validation (in-process, injected clock)", () => {
  const cleanup = new Cleanups();
  let now = T0;
  let ca: Authority;
  let root: string;
  after(() => cleanup.run());
  before(async () => {
    root = tmpdir(cleanup.add);
    ca = await Authority.init({ dir: join(root, "ca"), trustDomain: "example.org", url: "https://127.0.0.1:9443", passphrase: TEST_PASSPHRASE, clock: () => now });
    cleanup.add(() => ca.close());
  });

  async function issue(opts: TokenOptions): Promise<{ leaf: x509.X509Certificate; chainPem: string; keyPem: string; serial: string }> {
    const { keyPem, csrPem } = await newKeyAndCsr();
    const issued = await ca.enroll(ca.createToken(opts).token, csrPem);
    return { leaf: leafOf(issued.chainPem), chainPem: issued.chainPem, keyPem, serial: issued.serial };
  }

  test("client: URI SAN only, empty subject, clientAuth, CA:false, digitalSignature, 1 h + 1 min backdate", async () => {
    now = T0;
    const { leaf } = await issue({ identity: "team-a/alice" });
    assert.equal(leaf.subject, "");
    assert.deepEqual(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(), [{ type: "url", value: "spiffe://example.org/team-a/alice" }]);
    assert.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])], [CLIENT_AUTH]);
    assert.equal(leaf.getExtension(x509.BasicConstraintsExtension)?.ca, false);
    assert.equal(leaf.getExtension(x509.KeyUsagesExtension)?.usages, x509.KeyUsageFlags.digitalSignature);
    assert.equal(leaf.notBefore.getTime(), T0 - 60_000);
    assert.equal(leaf.notAfter.getTime(), T0 + HOUR);
    assert.equal(leaf.issuer, ca.intermediate.subject);
    assert.ok(await leaf.verify({ publicKey: ca.intermediate.publicKey, signatureOnly: true }));
  });

  test("agent: serverAuth+clientAuth, the token's DNS/IP SANs after the URI, 24 h by default", async () => {
    now = T0;
    const { leaf } = await issue({ identity: "agents/db", kind: "agent", dns: ["db.internal"], ips: ["127.0.0.1", "::1"] });
    assert.deepEqual(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(), [
      { type: "url", value: "spiffe://example.org/agents/db" }, { type: "dns", value: "db.internal" }, { type: "ip", value: "127.0.0.1" }, { type: "ip", value: "::1" },
    ]);
    assert.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])].sort(), [SERVER_AUTH, CLIENT_AUTH].sort());
    assert.equal(leaf.notAfter.getTime(), T0 + 24 * HOUR);
  });

  test("TTL: the token's certificate TTL is honoured from 1 m up to the 24 h maximum", async () => {
    now = T0;
    for (const ttl of [60_000, 2 * HOUR, 24 * HOUR]) {
      const { leaf } = await issue({ identity: "ttl/x", certTtlMs: ttl });
      assert.equal(leaf.notAfter.getTime() - leaf.notBefore.getTime(), ttl + 60_000);
    }
  });

  test("serials: 128 random bits, distinct across 40 issues (and 20 000 draws of the generator)", async () => {
    now = T0;
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) {
      const { leaf } = await issue({ identity: `serials/n${i % 5}` });
      const hex = serialBytes(leaf).toString("hex");
      assert.ok(!seen.has(hex), "distinct");
      seen.add(hex);
    }
    const draws = new Set<string>();
    for (let i = 0; i < 20_000; i++) {
      const s = randomSerial();
      assert.match(s, /^(00[89a-f][0-9a-f]{31}|(?!00)[0-7][0-9a-f]{31})$/);
      draws.add(s);
    }
    assert.equal(draws.size, 20_000);
  });

  test("renewal keeps identity, kind, SANs and lifetime; new serial; the parent is recorded", async () => {
    now = T0;
    const first = await issue({ identity: "agents/web", kind: "agent", dns: ["web"], ips: ["10.0.0.5"], certTtlMs: 6 * HOUR });
    now = T0 + 3 * HOUR;
    const { csrPem } = await newKeyAndCsr();
    const renewed = await ca.renew({ leafDer: new Uint8Array(first.leaf.rawData), chainTrusted: true }, csrPem);
    const leaf = leafOf(renewed.chainPem);
    assert.notEqual(renewed.serial, first.serial);
    assert.deepEqual(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(), first.leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON());
    assert.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])].sort(), [SERVER_AUTH, CLIENT_AUTH].sort());
    assert.equal(leaf.notBefore.getTime(), T0 + 3 * HOUR - 60_000);
    assert.equal(leaf.notAfter.getTime(), T0 + 9 * HOUR);
    assert.equal(ca.store.getCert(renewed.serial)?.parentSerial, first.serial);
    assert.equal(ca.store.getCert(renewed.serial)?.via, "renew");
  });

  test("the CA's own HTTPS certificate: serverAuth only, named after the URL's host", async () => {
    now = T0;
    const { publicKey } = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const issued = await ca.issueServerCertificate(publicKey);
    const leaf = leafOf(issued.chainPem);
    assert.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])], [SERVER_AUTH]);
    assert.deepEqual(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(), [{ type: "url", value: "spiffe://example.org/mcpmesh/ca" }, { type: "ip", value: "127.0.0.1" }]);
  });

  test("CRL: signed by the intermediate, nextUpdate one validity ahead, lists revoked unexpired serials, numbered", async () => {
    now = T0;
    const a = await issue({ identity: "crl/a" });
    const b = await issue({ identity: "crl/b", certTtlMs: 60_000 });
    assert.deepEqual(ca.revoke({ serial: a.serial, reason: "keyCompromise" }), [a.serial]);
    assert.deepEqual(ca.revoke({ identity: "crl/b" }), [b.serial]);
    const crl1 = new x509.X509Crl(new Uint8Array(pemToDer(await ca.crlPem())));
    assert.ok(await crl1.verify({ publicKey: ca.intermediate.publicKey }));
    assert.equal(crl1.nextUpdate?.getTime(), T0 + CRL_VALIDITY_MS);
    const listed = crl1.entries.map((e) => normalizeSerial(e.serialNumber));
    assert.ok(listed.includes(a.serial) && listed.includes(b.serial));
    // Two minutes on, b has expired and drops out of the next CRL; the CRL number goes up.
    now = T0 + 2 * 60_000;
    ca.revoke({ identity: "team-a/alice" });
    const crl2 = new x509.X509Crl(new Uint8Array(pemToDer(await ca.crlPem())));
    const listed2 = crl2.entries.map((e) => normalizeSerial(e.serialNumber));
    assert.ok(listed2.includes(a.serial));
    assert.ok(!listed2.includes(b.serial), "expired entries are dropped");
    const number = (c: x509.X509Crl) => Buffer.from(c.getExtension("2.5.29.20")!.value).readUIntBE(2, Buffer.from(c.getExtension("2.5.29.20")!.value)[1]);
    assert.ok(number(crl2) > number(crl1));
  });

  test("token options refused with a clear message, nothing stored", () => {
    now = T0;
    const table: { opts: TokenOptions; message: string }[] = [
      { opts: { identity: "a", certTtlMs: 25 * HOUR }, message: "cert-ttl: must be between 1m and 24h (certificates are short-lived by design)" },
      { opts: { identity: "a", certTtlMs: 59_000 }, message: "cert-ttl: must be between 1m and 24h (certificates are short-lived by design)" },
      { opts: { identity: "a", ttlMs: 0 }, message: "ttl: must be between 1s and 7d" },
      { opts: { identity: "a", ttlMs: 8 * 24 * HOUR }, message: "ttl: must be between 1s and 7d" },
      { opts: { identity: "a", kind: "server" as never }, message: `kind: "server" must be client or agent` },
      { opts: { identity: "a", dns: ["x"] }, message: "dns: DNS/IP names are for agent certificates only (--kind agent)" },
      { opts: { identity: "a", kind: "agent", dns: ["bad name"] }, message: `dns: "bad name" is not a valid DNS name` },
      { opts: { identity: "a", kind: "agent", ips: ["999.1.1.1"] }, message: `ip: "999.1.1.1" is not an IP address` },
      { opts: { identity: "../x" }, message: `identity: "../x" has an invalid path segment ".." (letters, digits, '.', '-', '_'; no empty, '.' or '..')` },
      { opts: { identity: "a//b" }, message: `identity: "a//b" has an invalid path segment "" (letters, digits, '.', '-', '_'; no empty, '.' or '..')` },
      { opts: { identity: "" }, message: "identity: must not be empty" },
      { opts: { identity: "a/b?c" }, message: `identity: "a/b?c" has an invalid path segment "b?c" (letters, digits, '.', '-', '_'; no empty, '.' or '..')` },
    ];
    const before = ca.events().length;
    for (const c of table) {
      assert.throws(() => ca.createToken(c.opts), { code: "MCPMESH_INVALID_ARGUMENT", message: c.message }, JSON.stringify(c.opts));
    }
    assert.equal(ca.events().length, before, "no token created, no event recorded");
  });

  test("revocation targets refused with a clear message, nothing revoked", async () => {
    now = T0;
    const { serial } = await issue({ identity: "revoke/target" });
    const table: { target: { serial?: string; identity?: string; reason?: string }; code: string; message: string }[] = [
      { target: {}, code: "MCPMESH_INVALID_ARGUMENT", message: "target: give exactly one of serial or identity" },
      { target: { serial, identity: "revoke/target" }, code: "MCPMESH_INVALID_ARGUMENT", message: "target: give exactly one of serial or identity" },
      { target: { serial: "zz" }, code: "MCPMESH_INVALID_ARGUMENT", message: `serial: "zz" is not a hexadecimal serial number` },
      { target: { serial: "abcd" }, code: "MCPMESH_NOT_FOUND", message: "serial: no certificate abcd was issued by this CA" },
      { target: { identity: "nobody" }, code: "MCPMESH_NOT_FOUND", message: "identity: no certificate was issued to spiffe://example.org/nobody" },
      { target: { identity: "../x" }, code: "MCPMESH_INVALID_ARGUMENT", message: `identity: "../x" has an invalid path segment ".." (letters, digits, '.', '-', '_'; no empty, '.' or '..')` },
      { target: { serial, reason: "x".repeat(201) }, code: "MCPMESH_INVALID_ARGUMENT", message: "reason: must be a short text" },
    ];
    for (const c of table) assert.throws(() => ca.revoke(c.target), { code: c.code, message: c.message }, JSON.stringify(c.target));
    assert.equal(ca.store.getCert(serial)?.revokedAt, null, "still valid");
  });

  test("init options refused with a clear message, no directory created", async () => {
    const base = { trustDomain: "example.org", url: "https://127.0.0.1:9443", passphrase: TEST_PASSPHRASE };
    const table: { opts: Partial<typeof base> & { admins?: string[] }; message: string }[] = [
      { opts: { trustDomain: "Bad Domain" }, message: `trust-domain: "Bad Domain" is not a valid trust domain (lower-case letters, digits, '.', '-', '_')` },
      { opts: { trustDomain: "" }, message: `trust-domain: "" is not a valid trust domain (lower-case letters, digits, '.', '-', '_')` },
      { opts: { url: "http://127.0.0.1:9443" }, message: `url: "http://127.0.0.1:9443" must use https` },
      { opts: { url: "https://127.0.0.1:9443/ca" }, message: `url: "https://127.0.0.1:9443/ca" must be only https://HOST:PORT` },
      { opts: { url: "not a url" }, message: `url: "not a url" is not a URL (expected https://HOST:PORT)` },
      { opts: { passphrase: "short" }, message: "passphrase: must be at least 8 characters" },
      { opts: { admins: ["../x"] }, message: `admin: "../x" has an invalid path segment ".." (letters, digits, '.', '-', '_'; no empty, '.' or '..')` },
    ];
    for (const [i, c] of table.entries()) {
      const dir = join(root, `bad-init-${i}`);
      await assert.rejects(Authority.init({ ...base, ...c.opts, dir }), { code: "MCPMESH_INVALID_ARGUMENT", message: c.message });
      assert.equal(existsSync(dir), false, c.message);
    }
  });

  test("opening with the wrong passphrase fails with MCPMESH_WRONG_PASSPHRASE", async () => {
    await assert.rejects(Authority.open({ dir: ca.dir, passphrase: "not the passphrase" }), { code: "MCPMESH_WRONG_PASSPHRASE", message: "cannot decrypt the intermediate CA key: wrong passphrase or damaged key file" });
    const again = await Authority.open({ dir: ca.dir, passphrase: TEST_PASSPHRASE });
    again.close();
  });
});

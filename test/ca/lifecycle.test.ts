/**
 * The whole life of an identity through the real binary and the real HTTPS API:
 * init → serve → token → enroll → renew → revoke → renew refused, with every certificate checked by openssl (an
 * outside verifier) and inspected for the exact leaf profile.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { splitPemCertificates, normalizeSerial } from "../../lib/x509.ts";
import { x509 } from "../../lib/peculiar.ts";
import { tmpdir } from "../helpers/cli.ts";
import { caGet, cliList, fileState, openssl, opensslVerifyChain, startTestCa, type TestCa } from "../helpers/ca.ts";

const HOUR = 3_600_000;
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

/** The exact leaf profile, read with @peculiar/x509. */
function assertLeafProfile(pem: string, want: { uri: string; eku: string[]; dns?: string[]; ips?: string[]; ttlMs: number }): x509.X509Certificate {
  const c = new x509.X509Certificate(pem);
  assert.equal(c.subject, "", "subject must be empty (identity only in the URI SAN)");
  assert.deepEqual(c.subjectName.toJSON(), []);
  const san = c.getExtension(x509.SubjectAlternativeNameExtension);
  assert.ok(san, "SAN present");
  assert.equal(san.critical, true, "SAN is critical with an empty subject (RFC 5280)");
  const names = san.names.toJSON();
  const expected = [{ type: "url", value: want.uri }, ...(want.dns ?? []).map((value) => ({ type: "dns", value })), ...(want.ips ?? []).map((value) => ({ type: "ip", value }))];
  assert.deepEqual(names, expected, "exactly one URI SAN plus the token's DNS/IP names");
  assert.equal(names.filter((n) => n.type === "url").length, 1);
  const bc = c.getExtension(x509.BasicConstraintsExtension);
  assert.ok(bc && bc.critical && bc.ca === false, "CA:false, critical");
  const ku = c.getExtension(x509.KeyUsagesExtension);
  assert.ok(ku && ku.critical, "keyUsage critical");
  assert.equal(ku.usages, x509.KeyUsageFlags.digitalSignature, "digitalSignature only");
  const eku = c.getExtension(x509.ExtendedKeyUsageExtension);
  assert.ok(eku);
  assert.deepEqual([...eku.usages].sort(), [...want.eku].sort());
  // notBefore is backdated one minute from issuance, notAfter is issuance + TTL: exactly TTL + 60 s apart.
  assert.equal(c.notAfter.getTime() - c.notBefore.getTime(), want.ttlMs + 60_000);
  // 128 random bits: 16 significant bytes (the DER pad byte that keeps it positive is not part of the value).
  const serial = Buffer.from(c.serialNumber, "hex");
  assert.equal(serial.length, 16, `serial ${c.serialNumber} is 128 bits`);
  assert.notEqual(serial[0], 0);
  return c;
}

/** The same profile as openssl prints it. */
async function assertOpensslText(work: string, leafPem: string, lines: RegExp[], absent: RegExp[]): Promise<void> {
  const p = join(work, "inspect.pem");
  writeFileSync(p, leafPem);
  const r = await openssl(["x509", "-in", p, "-noout", "-text"]);
  assert.equal(r.code, 0, r.stderr);
  for (const re of lines) assert.match(r.stdout, re);
  for (const re of absent) assert.doesNotMatch(r.stdout, re);
}

test("init → serve → token → enroll → renew → revoke → renew refused, all through the binary", async (t) => {
  const ca: TestCa = await startTestCa((fn) => t.after(fn));
  const work = tmpdir((fn) => t.after(fn));
  const serials = new Set<string>();

  await t.test("the API serves the trust bundle and health", async () => {
    const bundle = await caGet(ca, "/v1/bundle");
    assert.equal(bundle.status, 200);
    assert.equal(bundle.body.toString(), ca.rootPem);
    const roots = await caGet(ca, "/v1/roots");
    assert.equal(roots.body.toString(), ca.rootPem);
    const health = await caGet(ca, "/healthz");
    assert.deepEqual(JSON.parse(health.body.toString()), { ok: true, trustDomain: "example.org" });
  });

  const aliceDir = ca.idDir("alice");
  let aliceSerial = "";
  await t.test("a client token and `mcpmesh enroll` give a verifiable client certificate", async () => {
    const tok = await ca.cli(["ca", "token", "--dir", ca.dir, "--identity", "team-a/alice"]);
    assert.equal(tok.code, 0, tok.stderr);
    const token = tok.stdout.trim();
    assert.match(token, /^mcpmesh1\.[A-Za-z0-9_-]+$/);
    assert.match(tok.stderr, /token for spiffe:\/\/example\.org\/team-a\/alice \(client, certificates 1h\).*single use/);

    const before = Date.now();
    const r = await ca.cli(["enroll", token, "--dir", aliceDir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /enrolled as spiffe:\/\/example\.org\/team-a\/alice/);
    assert.equal(statSync(aliceDir).mode & 0o777, 0o700, "identity dir 0700");
    assert.equal(statSync(join(aliceDir, "key.pem")).mode & 0o777, 0o600, "key.pem 0600");
    const certPem = readFileSync(join(aliceDir, "cert.pem"), "utf8");
    const chain = splitPemCertificates(certPem);
    assert.equal(chain.length, 2, "cert.pem holds the leaf and the intermediate");
    assert.equal(chain[1].trim(), ca.intermediatePem.trim());
    assert.equal(readFileSync(join(aliceDir, "ca.pem"), "utf8"), ca.rootPem);

    const v = await opensslVerifyChain(work, certPem, ca.rootPem, "sslclient");
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /: OK$/m);
    const leaf = assertLeafProfile(chain[0], { uri: "spiffe://example.org/team-a/alice", eku: [CLIENT_AUTH], ttlMs: 1 * HOUR });
    // Backdated: valid from before the request was made (the exact minute is asserted with a fixed clock in profile.test.ts).
    assert.ok(leaf.notBefore.getTime() < before, "notBefore backdated");
    await assertOpensslText(work, chain[0], [
      /Subject: *\n/, /CA:FALSE/, /X509v3 Key Usage: critical\n\s+Digital Signature\n/, /X509v3 Extended Key Usage: *\n\s+TLS Web Client Authentication\n/,
      /X509v3 Subject Alternative Name: critical\n\s+URI:spiffe:\/\/example\.org\/team-a\/alice\n/, /ASN1 OID: prime256v1/,
    ], [/TLS Web Server Authentication/, /DNS:/, /IP Address:/, /Subject: *\S/, /\(Negative\)/]);
    // The key never left: the certificate's public key is the one in key.pem.
    const { createPublicKey } = await import("node:crypto");
    const pub = createPublicKey(readFileSync(join(aliceDir, "key.pem"), "utf8")).export({ type: "spki", format: "der" });
    assert.deepEqual(Buffer.from(leaf.publicKey.rawData), pub);
    aliceSerial = normalizeSerial(leaf.serialNumber);
    serials.add(aliceSerial);
  });

  await t.test("an agent token with DNS/IP names gives serverAuth+clientAuth and those SANs, 24 h by default", async () => {
    const tok = await ca.cli(["ca", "token", "--dir", ca.dir, "--identity", "agents/weather", "--kind", "agent", "--dns", "x", "--dns", "weather.internal", "--ip", "127.0.0.1", "--json"]);
    assert.equal(tok.code, 0, tok.stderr);
    const info = JSON.parse(tok.stdout);
    assert.equal(info.identity, "spiffe://example.org/agents/weather");
    assert.equal(info.kind, "agent");
    const dir = ca.idDir("weather");
    const r = await ca.cli(["enroll", info.token, "--dir", dir]);
    assert.equal(r.code, 0, r.stderr);
    const certPem = readFileSync(join(dir, "cert.pem"), "utf8");
    for (const purpose of ["sslserver", "sslclient"] as const) {
      const v = await opensslVerifyChain(work, certPem, ca.rootPem, purpose);
      assert.equal(v.code, 0, `${purpose}: ${v.stderr}`);
    }
    const leafPem = splitPemCertificates(certPem)[0];
    const leaf = assertLeafProfile(leafPem, { uri: "spiffe://example.org/agents/weather", eku: [SERVER_AUTH, CLIENT_AUTH], dns: ["x", "weather.internal"], ips: ["127.0.0.1"], ttlMs: 24 * HOUR });
    await assertOpensslText(work, leafPem, [/TLS Web Server Authentication, TLS Web Client Authentication/, /URI:spiffe:\/\/example\.org\/agents\/weather, DNS:x, DNS:weather\.internal, IP Address:127\.0\.0\.1/], []);
    serials.add(normalizeSerial(leaf.serialNumber));
  });

  let renewedSerial = "";
  let listAfterRevoke: any[] = [];
  await t.test("`mcpmesh renew` replaces key and certificate over mTLS, same identity and profile", async () => {
    const oldKey = readFileSync(join(aliceDir, "key.pem"), "utf8");
    const r = await ca.cli(["renew", "--dir", aliceDir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`renewed spiffe://example\\.org/team-a/alice: ${aliceSerial} -> [0-9a-f]+`));
    assert.notEqual(readFileSync(join(aliceDir, "key.pem"), "utf8"), oldKey, "a new key each renewal");
    assert.equal(statSync(join(aliceDir, "key.pem")).mode & 0o777, 0o600);
    const certPem = readFileSync(join(aliceDir, "cert.pem"), "utf8");
    const v = await opensslVerifyChain(work, certPem, ca.rootPem, "sslclient");
    assert.equal(v.code, 0, v.stderr);
    const leaf = assertLeafProfile(splitPemCertificates(certPem)[0], { uri: "spiffe://example.org/team-a/alice", eku: [CLIENT_AUTH], ttlMs: 1 * HOUR });
    renewedSerial = normalizeSerial(leaf.serialNumber);
    assert.ok(!serials.has(renewedSerial), "a fresh serial");
    serials.add(renewedSerial);

    const list = await cliList(ca);
    const alice = list.filter((c) => c.identity === "spiffe://example.org/team-a/alice");
    assert.deepEqual(alice.map((c) => [c.serial, c.kind, c.status]).sort(), [[aliceSerial, "client", "valid"], [renewedSerial, "client", "valid"]].sort());
  });

  await t.test("`mcpmesh ca revoke --identity` revokes every certificate of the identity; the CRL lists them", async () => {
    const r = await ca.cli(["ca", "revoke", "--dir", ca.dir, "--identity", "team-a/alice", "--reason", "keyCompromise"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n").sort(), [`revoked ${aliceSerial}`, `revoked ${renewedSerial}`].sort());

    const list = await cliList(ca);
    listAfterRevoke = list;
    for (const c of list.filter((x) => x.identity === "spiffe://example.org/team-a/alice")) {
      assert.equal(c.status, "revoked");
      assert.equal(c.reason, "keyCompromise");
    }
    assert.equal(list.find((c) => c.identity === "spiffe://example.org/agents/weather").status, "valid");

    const crl = await caGet(ca, "/v1/crl");
    assert.equal(crl.status, 200);
    const crlPath = join(work, "crl.pem");
    writeFileSync(crlPath, crl.body);
    const v = await openssl(["crl", "-in", crlPath, "-CAfile", ca.intermediatePath, "-noout", "-text"]);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stderr + v.stdout, /verify OK/);
    assert.match(v.stdout, /Next Update: /);
    assert.match(v.stdout, /Issuer: CN = mcpmesh intermediate CA/);
    const listed = [...v.stdout.matchAll(/Serial Number: ([0-9A-F]+)/g)].map((m) => normalizeSerial(m[1]));
    assert.deepEqual(listed.sort(), [aliceSerial, renewedSerial].sort());
    assert.match(v.stdout, /Key Compromise/);

    const der = await caGet(ca, "/v1/crl?format=der");
    assert.equal(der.type, "application/pkix-crl");
    const derPath = join(work, "crl.der");
    writeFileSync(derPath, der.body);
    const vd = await openssl(["crl", "-inform", "DER", "-in", derPath, "-CAfile", ca.intermediatePath, "-noout"]);
    assert.equal(vd.code, 0, vd.stderr);
    assert.match(vd.stderr + vd.stdout, /verify OK/);
  });

  await t.test("a revoked certificate cannot renew: clear error, nothing written, nothing issued", async () => {
    const files = fileState(aliceDir);
    assert.ok(listAfterRevoke.length > 0);
    const r = await ca.cli(["renew", "--dir", aliceDir]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), "mcpmesh: certificate: revoked; it cannot renew (enroll again with a new token)");
    assert.deepEqual(fileState(aliceDir), files, "identity dir unchanged byte for byte");
    assert.deepEqual(await cliList(ca), listAfterRevoke, "`ca list --json` unchanged since the revocation");
  });

  await t.test("the CA logged each step and nothing secret", async () => {
    const log = ca.server!.stderr();
    assert.match(log, /"event":"enroll"/);
    assert.match(log, /"event":"renew"/);
    assert.match(log, /"code":"MCPMESH_CERT_REVOKED"/);
    assert.doesNotMatch(log, /mcpmesh1\./, "no token in the log");
    assert.doesNotMatch(log, /PRIVATE KEY/);
  });
});

/**
 * The CSR `mcpmesh enroll` and renewal send, now built on @peculiar/asn1-csr and signed with node:crypto: OpenSSL
 * verifies its self-signature and reads the subject and key it carries; one altered byte makes OpenSSL refuse it; the
 * CA issues a certificate for exactly its key.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createPublicKey, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { derToPem, pemToDer } from "../../lib/x509.ts";
import { createMesh } from "../helpers/mesh.ts";

const work = mkdtempSync(join(tmpdir(), "mcpmesh-csr-"));
after(() => rmSync(work, { recursive: true, force: true }));

function opensslReq(pem: string, args: string[]): { status: number | null; out: string } {
  const file = join(work, `req-${Math.random().toString(16).slice(2)}.csr`);
  writeFileSync(file, pem);
  const r = spawnSync("openssl", ["req", "-in", file, "-noout", ...args], { encoding: "utf8" });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test("openssl req -verify accepts the CSR; subject CN=mcpmesh, the key is the generated P-256 key", async () => {
  const { key, csrPem } = await newKeyAndCsr();
  const v = opensslReq(csrPem, ["-verify"]);
  assert.equal(v.status, 0, v.out);
  assert.match(v.out, /verify OK/);
  assert.match(opensslReq(csrPem, ["-subject"]).out, /subject=\s*CN\s*=\s*mcpmesh/);
  const pub = opensslReq(csrPem, ["-pubkey"]).out;
  const fromCsr = createPublicKey(pub.slice(pub.indexOf("-----BEGIN PUBLIC KEY-----")));
  assert.ok(fromCsr.equals(createPublicKey(key)), "the CSR carries the generated key");
  assert.equal(fromCsr.asymmetricKeyDetails?.namedCurve, "prime256v1");
});

test("openssl refuses the CSR with one byte of its signed part or its signature altered", async () => {
  const { csrPem } = await newKeyAndCsr();
  const der = pemToDer(csrPem);
  // Byte 30 sits in the subject's CN value (inside CertificationRequestInfo); the last byte is in the signature.
  for (const at of [30, der.length - 1]) {
    const bad = Buffer.from(der);
    bad[at] ^= 0x01;
    const r = opensslReq(derToPem(bad, "CERTIFICATE REQUEST"), ["-verify"]);
    // Some OpenSSL 3 releases exit 0 after a failed self-signature check; the verdict line is what counts.
    assert.doesNotMatch(r.out, /verify OK/, `altering byte ${at} must fail verification`);
    assert.match(r.out, /verify fail|error|unable/i, r.out);
  }
});

test("the CA issues a certificate for the CSR's key (enroll path)", async (t) => {
  const mesh = await createMesh();
  t.after(() => mesh.close());
  const dir = await mesh.issue("team-a/csr");
  const cert = new X509Certificate(readFileSync(join(dir, "cert.pem")));
  assert.ok(cert.publicKey.equals(createPublicKey(readFileSync(join(dir, "key.pem"), "utf8"))));
  assert.match(cert.subjectAltName ?? "", /URI:spiffe:\/\/example\.org\/team-a\/csr/);
});

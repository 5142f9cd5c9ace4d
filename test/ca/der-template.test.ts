/**
 * The leaf template (ca/profile.ts signLeaf, hand-written DER) cannot drift from the profile as @peculiar/x509 encodes
 * it: for every kind, SAN shape, accepted key type and both time encodings, the TBSCertificate the template writes is
 * byte-for-byte the one the library writes for the same serial, dates, names and key. The strict CSR reader refuses
 * what is not exactly one well-formed PKCS#10 request.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync, sign, X509Certificate, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { Authority } from "../../ca/authority.ts";
import { bitString, children, oid, readWhole, seq, tlv } from "../../ca/der.ts";
import { acceptCsr, makeIssuer, signLeaf, type Issuer } from "../../ca/profile.ts";
import type { CertKind } from "../../ca/store.ts";
import { EC_SIGN, toWebCryptoSigningKey } from "../../ca/keys.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { derToPem, pemToDer } from "../../lib/x509.ts";
import { x509 } from "../../lib/peculiar.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { TEST_PASSPHRASE } from "../helpers/ca.ts";

/** The profile as it was built with @peculiar/x509 before the template (the reference the template must match). */
async function libraryLeaf(issuer: Issuer, o: { serialHex: string; notBefore: number; notAfter: number; spiffeId: string; kind: CertKind; dns: string[]; ips: string[]; spki: Buffer }): Promise<Buffer> {
  const EKU: Record<CertKind, string[]> = {
    client: [x509.ExtendedKeyUsage.clientAuth],
    agent: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    server: [x509.ExtendedKeyUsage.serverAuth],
  };
  const names: x509.JsonGeneralName[] = [{ type: "url", value: o.spiffeId }];
  for (const d of o.dns) names.push({ type: "dns", value: d });
  for (const ip of o.ips) names.push({ type: "ip", value: ip });
  const publicKey = new x509.PublicKey(new Uint8Array(o.spki));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: o.serialHex,
    subject: "",
    issuer: issuer.cert.subject,
    notBefore: new Date(o.notBefore),
    notAfter: new Date(o.notAfter),
    signingAlgorithm: EC_SIGN,
    publicKey,
    signingKey: issuer.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(EKU[o.kind], false),
      new x509.SubjectAlternativeNameExtension(names, true),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.cert, false),
    ],
  });
  return Buffer.from(cert.rawData);
}

const tbsOf = (der: Buffer): Buffer => Buffer.from(children(readWhole(der, 0x30))[0].raw);

describe("leaf DER template", () => {
  const cleanup = new Cleanups();
  let ca: Authority;
  let issuer: Issuer;
  let signer: KeyObject;
  after(() => cleanup.run());
  before(async () => {
    ca = await Authority.init({ dir: join(tmpdir(cleanup.add), "ca"), trustDomain: "example.org", url: "https://127.0.0.1:9443", passphrase: TEST_PASSPHRASE });
    cleanup.add(() => ca.close());
    // A second issuer over the same intermediate with a key we hold, so the library can sign the reference.
    signer = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    issuer = makeIssuer(ca.intermediatePem, await toWebCryptoSigningKey(signer), signer);
  });

  const keys: { name: string; spki: () => Buffer }[] = [
    { name: "P-256", spki: () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" }) },
    { name: "P-384", spki: () => generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey.export({ type: "spki", format: "der" }) },
    { name: "RSA-2048", spki: () => generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ type: "spki", format: "der" }) },
    { name: "Ed25519", spki: () => generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "der" }) },
  ];
  const shapes: { kind: CertKind; id: string; dns: string[]; ips: string[] }[] = [
    { kind: "client", id: "spiffe://example.org/team-a/alice", dns: [], ips: [] },
    { kind: "agent", id: "spiffe://example.org/agents/db", dns: ["db.internal", "*.svc.example.org"], ips: ["127.0.0.1", "::1", "fe80::1:2", "2001:db8::ff00:42:8329", "10.0.0.255"] },
    { kind: "server", id: "spiffe://example.org/mcpmesh/ca", dns: ["localhost"], ips: ["127.0.0.1"] },
    // A long identity pushes the SAN and the TBS past the one- and two-byte DER length forms.
    { kind: "client", id: `spiffe://example.org/${"x".repeat(300)}`, dns: [], ips: [] },
  ];
  // UTCTime before 2050, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5); milliseconds are dropped.
  const clocks = [Date.UTC(2030, 0, 15, 12, 0, 0, 789), Date.UTC(2049, 11, 31, 23, 30, 0), Date.UTC(2051, 5, 1)];

  test("TBSCertificate bytes equal @peculiar/x509's for every kind, SAN shape, key type and time encoding", async () => {
    let checked = 0;
    for (const k of keys) {
      const spki = k.spki();
      for (const s of shapes) {
        for (const now of clocks) {
          const leaf = await signLeaf(issuer, { spiffeId: s.id, kind: s.kind, dns: s.dns, ips: s.ips, ttlMs: 3_600_000, now, spki });
          const parsed = new x509.X509Certificate(new Uint8Array(leaf.der));
          const serialHex = Buffer.from(children(children(readWhole(leaf.der, 0x30))[0])[1].value).toString("hex");
          const reference = await libraryLeaf(issuer, { serialHex, notBefore: parsed.notBefore.getTime(), notAfter: parsed.notAfter.getTime(), spiffeId: s.id, kind: s.kind, dns: s.dns, ips: s.ips, spki });
          assert.equal(tbsOf(leaf.der).toString("hex"), tbsOf(reference).toString("hex"), `${k.name} ${s.kind} ${new Date(now).toISOString()}`);
          assert.equal(leaf.notBefore, Math.floor((now - 60_000) / 1000) * 1000);
          assert.equal(leaf.notAfter, Math.floor((now + 3_600_000) / 1000) * 1000);
          assert.equal(leaf.pem, derToPem(leaf.der));
          // The signature is the issuer's, over exactly these bytes (node:crypto's own X.509 reader agrees).
          assert.ok(new X509Certificate(leaf.der).verify(createPublicKey(signer)), "signed by the issuer's key");
          checked++;
        }
      }
    }
    assert.equal(checked, keys.length * shapes.length * clocks.length);
  });

  test("an IPv6 address written with a dotted quad is encoded as its 16 bytes (@peculiar/x509 gets this one wrong)", async () => {
    const spki = keys[0].spki();
    for (const [ip, hex] of [["::ffff:192.0.2.1", "00000000000000000000ffffc0000201"], ["64:ff9b::10.1.2.3", "0064ff9b00000000000000000a010203"], ["::", "00000000000000000000000000000000"]]) {
      const leaf = await signLeaf(issuer, { spiffeId: "spiffe://example.org/a", kind: "agent", dns: [], ips: [ip], ttlMs: 60_000, now: Date.now(), spki });
      const san = children(readWhole(Buffer.from(new x509.X509Certificate(new Uint8Array(leaf.der)).getExtension(x509.SubjectAlternativeNameExtension)!.value), 0x30));
      assert.equal(san[1].tag, 0x87, ip);
      assert.equal(san[1].value.toString("hex"), hex, ip);
    }
  });

  test("the issuer name is the intermediate's subject byte for byte; the AKI is its SKI", async () => {
    const intDer = pemToDer(ca.intermediatePem);
    const subject = children(children(readWhole(intDer, 0x30))[0])[5].raw;
    assert.deepEqual(issuer.nameDer, Buffer.from(subject));
    const leaf = new x509.X509Certificate(new Uint8Array((await signLeaf(issuer, { spiffeId: "spiffe://example.org/a", kind: "client", dns: [], ips: [], ttlMs: 60_000, now: Date.now(), spki: keys[0].spki() })).der));
    assert.equal(leaf.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId, ca.intermediate.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId);
  });
});

describe("strict CSR reader", () => {
  test("accepts the mesh's own CSR and returns its SPKI exactly", async () => {
    const { csrPem } = await newKeyAndCsr();
    const spki = await acceptCsr(csrPem);
    assert.deepEqual(spki, Buffer.from(new x509.Pkcs10CertificateRequest(csrPem).publicKey.rawData));
  });

  test("refuses malformed and altered requests with MCPMESH_BAD_CSR", async () => {
    const { csrPem } = await newKeyAndCsr();
    const der = pemToDer(csrPem);
    const pem = (b: Buffer) => derToPem(b, "CERTIFICATE REQUEST");
    const [info, alg, sig] = children(readWhole(der, 0x30)).map((n) => Buffer.from(n.raw));
    const wrap = (...parts: Buffer[]) => {
      const body = Buffer.concat(parts);
      const len = body.length < 128 ? Buffer.from([body.length]) : body.length < 256 ? Buffer.from([0x81, body.length]) : Buffer.from([0x82, body.length >> 8, body.length & 0xff]);
      return Buffer.concat([Buffer.from([0x30]), len, body]);
    };
    // ECDSA-with-SHA256 relabelled as sha256WithRSAEncryption (the key is EC): the algorithm must fit the key.
    const rsaAlg = Buffer.from("300d06092a864886f70d01010b0500", "hex");
    // Ed25519 relabelled: also refused.
    const edAlg = Buffer.from("300506032b6570", "hex");
    // MD5 with RSA: not an accepted algorithm at all.
    const md5Alg = Buffer.from("300d06092a864886f70d0101040500", "hex");
    const bad: { name: string; csr: string; code: string; message: string }[] = [
      { name: "trailing bytes after the DER", csr: pem(Buffer.concat([der, Buffer.from([0])])), code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "a fourth element in CertificationRequest", csr: pem(wrap(info, alg, sig, Buffer.from([0x05, 0x00]))), code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "signature algorithm missing", csr: pem(wrap(info, sig)), code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "MD5 with RSA", csr: pem(wrap(info, md5Alg, sig)), code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "RSA algorithm over an EC key", csr: pem(wrap(info, rsaAlg, sig)), code: "MCPMESH_BAD_CSR", message: "csr: the signature does not verify (the request was altered or not signed by its key)" },
      { name: "Ed25519 algorithm over an EC key", csr: pem(wrap(info, edAlg, sig)), code: "MCPMESH_BAD_CSR", message: "csr: the signature does not verify (the request was altered or not signed by its key)" },
      { name: "non-minimal length (0x81 for a short length)", csr: pem(Buffer.concat([Buffer.from([0x30, 0x81, der[1]]), der.subarray(2)])), code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "two PEM blocks", csr: csrPem + "\n" + csrPem, code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "a certificate, not a request", csr: derToPem(der), code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
      { name: "text before the PEM block", csr: `hello\n${csrPem}`, code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" },
    ];
    for (const c of bad) {
      await assert.rejects(acceptCsr(c.csr), (e: any) => e.code === c.code && e.message === c.message, c.name);
    }
  });

  test("every accepted key type verifies on the thread pool, and a flipped signature bit is refused for each", async () => {
    // Minimal PKCS#10 for each key type the CA accepts, signed by node:crypto with the algorithm that fits the key.
    const kinds: { name: string; key: ReturnType<typeof generateKeyPairSync>; alg: string; hash: string | null; nullParams: boolean }[] = [
      { name: "P-256", key: generateKeyPairSync("ec", { namedCurve: "P-256" }), alg: "1.2.840.10045.4.3.2", hash: "sha256", nullParams: false },
      { name: "P-384", key: generateKeyPairSync("ec", { namedCurve: "P-384" }), alg: "1.2.840.10045.4.3.3", hash: "sha384", nullParams: false },
      { name: "RSA-2048", key: generateKeyPairSync("rsa", { modulusLength: 2048 }), alg: "1.2.840.113549.1.1.11", hash: "sha256", nullParams: true },
      { name: "Ed25519", key: generateKeyPairSync("ed25519"), alg: "1.3.101.112", hash: null, nullParams: false },
    ];
    for (const k of kinds) {
      const spki = k.key.publicKey.export({ type: "spki", format: "der" });
      const cri = seq(tlv(0x02, Buffer.from([0])), seq(), spki, Buffer.from([0xa0, 0x00]));
      const sig = sign(k.hash, cri, k.name.startsWith("P-") ? { key: k.key.privateKey, dsaEncoding: "der" } : k.key.privateKey);
      const algId = k.nullParams ? seq(oid(k.alg), Buffer.from([0x05, 0x00])) : seq(oid(k.alg));
      const der = seq(cri, algId, bitString(sig));
      assert.deepEqual(await acceptCsr(derToPem(der, "CERTIFICATE REQUEST")), spki, k.name);
      const tampered = Buffer.from(der);
      tampered[tampered.length - 1] ^= 0x01;
      await assert.rejects(acceptCsr(derToPem(tampered, "CERTIFICATE REQUEST")), { code: "MCPMESH_BAD_CSR", message: "csr: the signature does not verify (the request was altered or not signed by its key)" }, k.name);
    }
  });

  test("the signature is checked over the CertificationRequestInfo as received", async () => {
    const { csrPem } = await newKeyAndCsr();
    const der = Buffer.from(pemToDer(csrPem));
    // Flip one bit inside the subject's CN value ("mcpmesh"): still well-formed, signature no longer matches.
    const at = der.indexOf(Buffer.from("mcpmesh"));
    assert.ok(at > 0);
    der[at] ^= 0x01;
    await assert.rejects(acceptCsr(derToPem(der, "CERTIFICATE REQUEST")), { code: "MCPMESH_BAD_CSR", message: "csr: the signature does not verify (the request was altered or not signed by its key)" });
    // WebCrypto agrees the untampered request verifies (sanity: the reader is not refusing everything).
    assert.ok(await new x509.Pkcs10CertificateRequest(csrPem).verify());
  });
});

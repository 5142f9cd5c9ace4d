/**
 * lib/x509-asn1.ts against @peculiar/x509, which the agent used before (tests may still load it): on certificates
 * OpenSSL makes with awkward names (escaped characters, multi-valued RDNs, unnamed attribute types, every SAN kind),
 * both must give the same DN strings (a CRL issuer is matched to an SVID issuer by this string), the same SAN list,
 * serial, basicConstraints, keyUsage and EKU; malformed extension values must fail in both; and CRL signature
 * algorithms must map to the same names, hashes and salt lengths.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AsnConvert } from "@peculiar/asn1-schema";
import { RsaSaPssParams } from "@peculiar/asn1-rsa";
import { x509 } from "../../lib/peculiar.ts";
import { pemToDer, normalizeSerial } from "../../lib/x509.ts";
import { asn, distinguishedName, parseCertificate, readExtensions, serialHex, signatureAlgorithm } from "../../lib/x509-asn1.ts";

const work = mkdtempSync(join(tmpdir(), "mcpmesh-asn1-"));
after(() => rmSync(work, { recursive: true, force: true }));

function opensslCert(name: string, subject: string, ext: string[]): Uint8Array<ArrayBuffer> {
  const cnf = join(work, `${name}.cnf`);
  writeFileSync(cnf, ["[req]", "distinguished_name = dn", "prompt = no", "[dn]", "CN = x", "[dir_sect]", "O = Dir Org", "CN = dir, name", "[ext]", ...ext, ""].join("\n"));
  const out = join(work, `${name}.pem`);
  const r = spawnSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(work, `${name}.key`), "-out", out, "-days", "1",
      "-config", cnf, "-extensions", "ext", "-multivalue-rdn", "-subj", subject, "-utf8"],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  return new Uint8Array(pemToDer(readFileSync(out, "utf8")));
}

const CERTS: { name: string; subject: string; ext: string[] }[] = [
  {
    name: "escapes",
    subject: "/CN=a\\,b+OU=multi/O=x;y<z>\"q\"/OU= lead/OU=trail /OU=#hash/DC=example/DC=org/emailAddress=a@b.example/title=T/2.5.4.45=uid/serialNumber=42/GN=G/SN=S/L=Zürich",
    ext: [
      "basicConstraints = critical, CA:FALSE",
      "keyUsage = critical, digitalSignature, keyEncipherment",
      "extendedKeyUsage = clientAuth, serverAuth, 1.2.3.4.5",
      "subjectAltName = DNS:a.example, email:x@y.example, IP:127.0.0.1, IP:::1, URI:spiffe://example.org/x, RID:1.2.3.4, dirName:dir_sect, otherName:1.3.6.1.4.1.311.20.2.3;UTF8:upn@example, otherName:1.2.3.9;UTF8:unknown",
      "authorityInfoAccess = OCSP;URI:http://ocsp.example, caIssuers;URI:http://ca.example/ca.crt",
      "crlDistributionPoints = URI:http://crl.example/ca.crl",
      "certificatePolicies = 1.2.3.4",
      "issuerAltName = DNS:issuer.example",
      "subjectKeyIdentifier = hash",
      "authorityKeyIdentifier = keyid",
    ],
  },
  { name: "ca", subject: "/C=DE/ST=Berlin/O=Mesh CA/CN=Issuing CA 1", ext: ["basicConstraints = critical, CA:TRUE, pathlen:0", "keyUsage = keyCertSign, cRLSign"] },
  { name: "bare", subject: "/CN=only", ext: ["subjectAltName = URI:spiffe://example.org/a, URI:https://example.org/b"] },
];

for (const c of CERTS) {
  test(`same reading as @peculiar/x509: ${c.name}`, () => {
    const der = opensslCert(c.name, c.subject, c.ext);
    const old = new x509.X509Certificate(new Uint8Array(der));
    const cert = parseCertificate(der);
    assert.equal(distinguishedName(cert.tbsCertificate.subject), old.subject);
    assert.equal(distinguishedName(cert.tbsCertificate.issuer), old.issuer);
    assert.equal(normalizeSerial(serialHex(cert.tbsCertificate.serialNumber)), normalizeSerial(old.serialNumber));
    const exts = readExtensions(cert.tbsCertificate.extensions);
    assert.deepEqual(exts.map((e) => [e.type, e.critical]), old.extensions.map((e) => [e.type, e.critical]));
    const bc = old.getExtension(x509.BasicConstraintsExtension);
    assert.deepEqual(exts.find((e) => e.basicConstraints)?.basicConstraints ?? null, bc ? { ca: bc.ca, pathLength: bc.pathLength } : null);
    assert.equal(exts.find((e) => e.keyUsage !== undefined)?.keyUsage, old.getExtension(x509.KeyUsagesExtension)?.usages);
    assert.deepEqual(exts.find((e) => e.extKeyUsage)?.extKeyUsage, old.getExtension(x509.ExtendedKeyUsageExtension)?.usages.map(String));
    if (c.name === "escapes") assert.equal(distinguishedName(cert.tbsCertificate.subject).length > 80 && (exts.find((e) => e.subjectAltNames)?.subjectAltNames?.length ?? 0) >= 8, true, distinguishedName(cert.tbsCertificate.subject));
    const san = old.getExtension(x509.SubjectAlternativeNameExtension);
    assert.deepEqual(exts.find((e) => e.subjectAltNames)?.subjectAltNames, san?.names.items.map((n) => ({ type: n.type, value: n.value })));
  });
}

test("a malformed value of an extension @peculiar/x509 parsed fails in both", () => {
  const der = opensslCert("broken", "/CN=b", ["basicConstraints = CA:FALSE", "subjectAltName = URI:spiffe://example.org/a", "authorityInfoAccess = OCSP;URI:http://o.example"]);
  const cert = parseCertificate(der);
  for (const oid of ["2.5.29.19", "2.5.29.17", "1.3.6.1.5.5.7.1.1"]) {
    const bad = cert.tbsCertificate.extensions!.map((e) =>
      e.extnID === oid ? new asn.Extension({ extnID: e.extnID, critical: e.critical, extnValue: new (e.extnValue.constructor as any)(new Uint8Array([0x30, 0x03, 0x02, 0x01]).buffer) }) : e,
    );
    assert.throws(() => readExtensions(bad), Error, `new reader, ${oid}`);
    const tampered = new asn.Certificate({ ...cert, tbsCertificate: new asn.TBSCertificate({ ...cert.tbsCertificate, extensions: new asn.Extensions(bad) }) });
    assert.throws(() => new x509.X509Certificate(AsnConvert.serialize(tampered)).extensions, Error, `@peculiar/x509, ${oid}`);
  }
});

test("signature algorithms map as @peculiar/x509 mapped them", () => {
  const pss = (hash: string | null, saltLength?: number) =>
    new asn.AlgorithmIdentifier({
      algorithm: "1.2.840.113549.1.1.10",
      parameters: hash === null ? undefined : AsnConvert.serialize(new RsaSaPssParams({ hashAlgorithm: new asn.AlgorithmIdentifier({ algorithm: hash, parameters: null }), ...(saltLength === undefined ? {} : { saltLength }) })),
    });
  const algs = [
    ...["1.2.840.10045.4.1", "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"],
    ...["1.2.840.113549.1.1.1", "1.2.840.113549.1.1.5", "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13"],
    ...["1.3.101.110", "1.3.101.111", "1.3.101.112", "1.3.101.113", "2.16.840.1.101.3.4.2.1", "1.3.14.3.2.26", "1.2.3.4"],
    ...Array.from({ length: 15 }, (_, i) => `2.16.840.1.101.3.4.3.${17 + i}`),
  ].map((algorithm) => new asn.AlgorithmIdentifier({ algorithm }));
  algs.push(pss("2.16.840.1.101.3.4.2.1", 32), pss("2.16.840.1.101.3.4.2.3", 64), pss("1.3.14.3.2.26"), pss("1.2.3.4", 20), pss(null));
  const provider = new x509.AlgorithmProvider();
  for (const alg of algs) {
    const want = provider.toWebAlgorithm(alg) as unknown as { name: string; hash?: { name: string }; saltLength?: number };
    const got = signatureAlgorithm(alg);
    assert.deepEqual(
      { name: got.name, hash: got.hash?.name, saltLength: got.saltLength },
      { name: want.name, hash: want.hash?.name, saltLength: want.saltLength },
      alg.algorithm,
    );
  }
});

/**
 * What the CA accepts from a CSR: only a well-signed, strong public key. Bad CSRs are refused with a stable code and
 * leave the token unused; whatever identity a CSR claims is ignored. All over the real HTTPS API.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { derToPem, pemToDer } from "../../lib/x509.ts";
import { x509 } from "../../lib/peculiar.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { caCall, openssl, startTestCa, type TestCa } from "../helpers/ca.ts";

/** An openssl-made CSR (key types and claims the mesh's own client never produces). */
async function opensslCsr(work: string, name: string, keyArgs: string[], extra: string[] = []): Promise<string> {
  const out = join(work, `${name}.csr`);
  const r = await openssl(["req", "-new", ...keyArgs, "-nodes", "-keyout", join(work, `${name}.key`), "-out", out, ...extra]);
  assert.equal(r.code, 0, r.stderr);
  return readFileSync(out, "utf8");
}

/** The CSR with one byte of its signature value flipped: still well-formed DER, no longer a valid signature. */
function tamperSignature(csrPem: string): string {
  const der = Buffer.from(pemToDer(csrPem));
  der[der.length - 1] ^= 0x01; // the last byte of the signature's INTEGER s
  return derToPem(der, "CERTIFICATE REQUEST");
}

describe("CSRs", () => {
  const cleanup = new Cleanups();
  let ca: TestCa;
  let work: string;
  after(() => cleanup.run());
  before(async () => {
    ca = await startTestCa(cleanup.add, { init: "library" });
    work = tmpdir(cleanup.add);
  });

  const bad: { name: string; csr: () => Promise<unknown>; status: number; code: string; message: string }[] = [
    {
      name: "bad signature (one byte of the signature flipped)",
      csr: async () => tamperSignature((await newKeyAndCsr()).csrPem),
      status: 400, code: "MCPMESH_BAD_CSR", message: "csr: the signature does not verify (the request was altered or not signed by its key)",
    },
    {
      name: "RSA-1024 key",
      csr: () => opensslCsr(work, "rsa1024", ["-newkey", "rsa:1024", "-subj", "/CN=weak"]),
      status: 400, code: "MCPMESH_WEAK_KEY", message: "csr: RSA key of 1024 bits is too weak (minimum 2048)",
    },
    {
      name: "EC key on an unaccepted curve (P-521)",
      csr: () => opensslCsr(work, "p521", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-subj", "/CN=odd"]),
      status: 400, code: "MCPMESH_WEAK_KEY", message: "csr: EC curve secp521r1 is not accepted (use P-256 or P-384)",
    },
    {
      name: "not a CSR",
      csr: async () => "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
      status: 400, code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request",
    },
    { name: "missing", csr: async () => undefined, status: 400, code: "MCPMESH_BAD_CSR", message: "csr: missing (PEM-encoded PKCS#10 expected)" },
    { name: "not a string", csr: async () => 42, status: 400, code: "MCPMESH_BAD_CSR", message: "csr: missing (PEM-encoded PKCS#10 expected)" },
  ];

  for (const c of bad) {
    test(`refused: ${c.name}; the token stays unused and nothing is issued`, async () => {
      const token = ca.token("csr/alice");
      const csr = await c.csr();
      const before = ca.snapshot();
      const r = await caCall(ca, "/v1/enroll", { token, csr });
      assert.equal(r.status, c.status);
      assert.deepEqual(r.json, { error: { code: c.code, message: c.message } });
      assert.deepEqual(ca.snapshot(), before, "database unchanged");
      assert.equal(ca.tokenRow(token)?.usedAt, null, "token still unused");
      // ... and still good for a proper CSR.
      const ok = await caCall(ca, "/v1/enroll", { token, csr: (await newKeyAndCsr()).csrPem });
      assert.equal(ok.status, 201, JSON.stringify(ok.json));
    });
  }

  test("accepted: RSA-2048 and P-384 keys", async () => {
    for (const keyArgs of [["-newkey", "rsa:2048"], ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]]) {
      const csr = await opensslCsr(work, keyArgs[1].replace(/\W/g, ""), [...keyArgs, "-subj", "/CN=fine"]);
      const r = await caCall(ca, "/v1/enroll", { token: ca.token("csr/strong"), csr });
      assert.equal(r.status, 201, JSON.stringify(r.json));
    }
  });

  test("a CSR claiming another identity (subject and URI SAN) gets the token's identity only", async () => {
    const csr = await opensslCsr(work, "claims", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], [
      "-subj", "/CN=spiffe:\\/\\/example.org\\/admin/O=evil",
      "-addext", "subjectAltName=URI:spiffe://example.org/admin,URI:spiffe://evil.org/x,DNS:ca.example.org",
      "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "extendedKeyUsage=serverAuth",
    ]);
    const token = ca.token("csr/mallory");
    const r = await caCall(ca, "/v1/enroll", { token, csr });
    assert.equal(r.status, 201, JSON.stringify(r.json));
    assert.equal(r.json.identity, "spiffe://example.org/csr/mallory");
    const leaf = new x509.X509Certificate(r.json.certificate.split(/(?<=-----END CERTIFICATE-----\n)/)[0]);
    assert.equal(leaf.subject, "");
    assert.deepEqual(leaf.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(), [{ type: "url", value: "spiffe://example.org/csr/mallory" }]);
    assert.equal(leaf.getExtension(x509.BasicConstraintsExtension)?.ca, false);
    assert.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])], ["1.3.6.1.5.5.7.3.2"]);
    // The CSR's key is what got certified.
    const csrKey = new x509.Pkcs10CertificateRequest(csr).publicKey;
    assert.deepEqual(Buffer.from(leaf.publicKey.rawData), Buffer.from(csrKey.rawData));
  });

  test("malformed requests: JSON errors with a stable code, nothing of the internals", async () => {
    const before = ca.snapshot();
    const cases: { body: unknown; code: string; message: string; status: number }[] = [
      { body: {}, code: "MCPMESH_INVALID_ARGUMENT", message: "token: missing", status: 400 },
      { body: { token: 7, csr: "x" }, code: "MCPMESH_INVALID_ARGUMENT", message: "token: must be a string", status: 400 },
      { body: [1, 2], code: "MCPMESH_BAD_REQUEST", message: "body: must be a JSON object", status: 400 },
    ];
    for (const c of cases) {
      const r = await caCall(ca, "/v1/enroll", c.body);
      assert.equal(r.status, c.status);
      assert.deepEqual(r.json, { error: { code: c.code, message: c.message } });
    }
    assert.deepEqual(ca.snapshot(), before);
  });

  /** A raw POST /v1/enroll whose body is written in chunks (no content-length unless given); `cut` aborts mid-body. */
  function rawEnroll(chunks: Buffer[], opts: { contentLength?: number; cut?: boolean } = {}): Promise<{ status: number; json: any } | "aborted"> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { "content-type": "application/json" };
      if (opts.contentLength !== undefined) headers["content-length"] = opts.contentLength;
      const req = httpsRequest(new URL("/v1/enroll", ca.url), { method: "POST", ca: ca.rootPem, headers, agent: false }, (res) => {
        const body: Buffer[] = [];
        res.on("data", (c: Buffer) => body.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, json: JSON.parse(Buffer.concat(body).toString("utf8")) }));
      });
      req.on("error", (e) => (opts.cut ? resolve("aborted") : reject(e)));
      for (const c of chunks) req.write(c);
      if (opts.cut) req.once("socket", (s) => s.once("secureConnect", () => setImmediate(() => req.destroy())));
      else req.end();
    });
  }

  test("bodies over 64 KiB are refused with 413 whether declared or streamed; a body cut off mid-way issues nothing", async () => {
    const token = ca.token("csr/big");
    const before = ca.snapshot();
    const big = Buffer.from(JSON.stringify({ token, csr: "x".repeat(70_000) }));
    const tooLarge = { error: { code: "MCPMESH_TOO_LARGE", message: "body: larger than 65536 bytes" } };
    // Declared up front (refused before reading), and chunked with no length (refused once the count passes the cap).
    assert.deepEqual(await rawEnroll([big], { contentLength: big.length }), { status: 413, json: tooLarge });
    assert.deepEqual(await rawEnroll([big.subarray(0, 40_000), big.subarray(40_000)]), { status: 413, json: tooLarge });
    // A client that disconnects halfway through a (valid-looking) body gets nothing issued and the CA keeps serving.
    const half = Buffer.from(JSON.stringify({ token, csr: (await newKeyAndCsr()).csrPem }));
    assert.equal(await rawEnroll([half.subarray(0, 100)], { contentLength: half.length, cut: true }), "aborted");
    assert.deepEqual(ca.snapshot(), before, "nothing issued, the token unused");
    const ok = await caCall(ca, "/v1/enroll", { token, csr: (await newKeyAndCsr()).csrPem });
    assert.equal(ok.status, 201, JSON.stringify(ok.json));
  });
});

/**
 * Concurrent issuance through the real HTTPS API of `mcpmesh ca serve`: enrollments that arrive together share one
 * group commit, and every certificate still verifies with openssl and carries the full profile. Refused requests in
 * the same burst (a token used twice, a bad CSR, an unknown token) change nothing and do not disturb the others.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { derToPem, pemToDer, splitPemCertificates } from "../../lib/x509.ts";
import { encodeToken } from "../../ca/token.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { caCall, openssl, opensslVerifyChain, startTestCa, type TestCa } from "../helpers/ca.ts";

const N = 24;

describe("concurrent issuance over HTTPS (group commit)", () => {
  const cleanup = new Cleanups();
  let ca: TestCa;
  let work: string;
  after(() => cleanup.run());
  before(async () => {
    ca = await startTestCa(cleanup.add, { init: "library" });
    work = tmpdir(cleanup.add);
  });

  test(`${N} enrollments at once (clients and agents) plus refused ones: each certificate passes openssl verify and the profile`, async () => {
    const jobs = await Promise.all(Array.from({ length: N }, async (_, i) => {
      const agent = i % 3 === 0;
      const identity = `batch/${agent ? "agent" : "client"}-${i}`;
      const token = agent ? ca.token(identity, { kind: "agent", dns: [`a${i}.internal`], ips: ["127.0.0.1"] }) : ca.token(identity);
      return { identity, agent, token, csr: (await newKeyAndCsr()).csrPem };
    }));
    const reused = jobs[1].token;
    const badCsr = derToPem(Buffer.concat([pemToDer(jobs[2].csr), Buffer.from([0])]), "CERTIFICATE REQUEST");
    const unknownToken = encodeToken({ url: ca.url, fingerprint: ca.config.rootFingerprint, secret: "A".repeat(43) });
    const refusedToken = ca.token("batch/refused-csr");
    const before = ca.snapshot();

    const answers = await Promise.all([
      ...jobs.map((j) => caCall(ca, "/v1/enroll", { token: j.token, csr: j.csr })),
      caCall(ca, "/v1/enroll", { token: reused, csr: jobs[3].csr }),
      caCall(ca, "/v1/enroll", { token: refusedToken, csr: badCsr }),
      caCall(ca, "/v1/enroll", { token: unknownToken, csr: jobs[4].csr }),
    ]);
    const ok = answers.slice(0, N);
    const [reuse, bad, unknown] = answers.slice(N);

    // jobs[1]'s token was sent twice at once: exactly one of the two wins.
    const reuseWinner = [ok[1], reuse].filter((a) => a.status === 201);
    assert.equal(reuseWinner.length, 1, "one redemption of the doubled token");
    const loser = ok[1].status === 201 ? reuse : ok[1];
    assert.equal(loser.status, 403);
    assert.deepEqual(loser.json, { error: { code: "MCPMESH_TOKEN_USED", message: "token: already used (tokens are single-use; ask for a new one)" } });
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json, { error: { code: "MCPMESH_BAD_CSR", message: "csr: not a valid PEM-encoded PKCS#10 certificate request" } });
    assert.equal(unknown.status, 403);
    assert.equal(unknown.json.error.code, "MCPMESH_TOKEN_UNKNOWN");

    const issued = jobs.map((j, i) => ({ j, a: i === 1 ? reuseWinner[0] : ok[i] }));
    for (const { j, a } of issued) {
      assert.equal(a.status, 201, JSON.stringify(a.json));
      assert.equal(a.json.identity, `spiffe://example.org/${j.identity}`);
      const v = await opensslVerifyChain(work, a.json.certificate, a.json.roots, j.agent ? "sslserver" : "sslclient");
      assert.equal(v.code, 0, v.stderr);
      assert.match(v.stdout, /: OK\n$/);
      const text = await openssl(["x509", "-noout", "-text"], splitPemCertificates(a.json.certificate)[0]);
      assert.equal(text.code, 0, text.stderr);
      const t = text.stdout;
      assert.match(t, /Version: 3 \(0x2\)/);
      assert.match(t, /Signature Algorithm: ecdsa-with-SHA256/);
      assert.match(t, /Issuer: CN = mcpmesh intermediate CA, O = mcpmesh, OU = example.org/);
      assert.match(t, /\n\s+Subject: \n/, "empty subject");
      assert.match(t, /X509v3 Basic Constraints: critical\n\s+CA:FALSE\n/);
      assert.match(t, /X509v3 Key Usage: critical\n\s+Digital Signature\n/);
      assert.match(t, j.agent ? /X509v3 Extended Key Usage: \n\s+TLS Web Server Authentication, TLS Web Client Authentication\n/ : /X509v3 Extended Key Usage: \n\s+TLS Web Client Authentication\n/);
      const san = j.agent ? `URI:spiffe://example.org/${j.identity}, DNS:${j.identity.replace("batch/agent-", "a")}.internal, IP Address:127.0.0.1` : `URI:spiffe://example.org/${j.identity}`;
      assert.ok(t.includes(`X509v3 Subject Alternative Name: critical\n                ${san}\n`), `SAN of ${j.identity}:\n${t}`);
      assert.match(t, /X509v3 Subject Key Identifier: \n/);
      assert.match(t, /X509v3 Authority Key Identifier: \n/);
      assert.match(t, /Public Key Algorithm: id-ecPublicKey\n\s+Public-Key: \(256 bit\)/);
    }

    // The database holds exactly the issued certificates, each token redeemed for its own serial, nothing else.
    const snap = ca.snapshot();
    const newCerts = snap.certs.filter((c) => !before.certs.some((b) => b.serial === c.serial));
    assert.deepEqual(newCerts.map((c) => c.serial).sort(), issued.map(({ a }) => a.json.serial).sort());
    for (const { j, a } of issued) assert.equal(ca.tokenRow(j.token)?.usedSerial, a.json.serial);
    assert.equal(ca.tokenRow(refusedToken)?.usedAt, null, "the bad CSR's token is still unused");
  });
});

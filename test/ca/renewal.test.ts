/**
 * Renewal and revocation over mTLS against the real HTTPS API: only the current, unexpired, unrevoked certificate of
 * this CA renews, and only for its own identity; revocation over the API is for admins. Every refusal leaves the
 * database and the identity directory as they were.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Authority } from "../../ca/authority.ts";
import { startCaServer, type RunningCaServer } from "../../ca/server.ts";
import { enroll, newKeyAndCsr } from "../../identity/enroll.ts";
import { renewIdentity } from "../../identity/renew.ts";
import { normalizeSerial } from "../../lib/x509.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { caCall, caGet, fileState, freePort, openssl, startTestCa, TEST_PASSPHRASE, type EnrolledIdentity, type TestCa } from "../helpers/ca.ts";

const HOUR = 3_600_000;

describe("renewal and revocation over mTLS", () => {
  const cleanup = new Cleanups();
  let ca: TestCa;
  let alice: EnrolledIdentity, bob: EnrolledIdentity, admin: EnrolledIdentity;
  after(() => cleanup.run());
  before(async () => {
    ca = await startTestCa(cleanup.add, { admins: ["ops/admin"], init: "library" });
    alice = await ca.enroll("team-a/alice");
    bob = await ca.enroll("team-a/bob");
    admin = await ca.enroll("ops/admin");
  });

  test("renewal works for the holder's own identity (explicitly named or not)", async () => {
    const before = fileState(alice.dir);
    const r = await renewIdentity(alice.dir);
    assert.equal(r.identity, "spiffe://example.org/team-a/alice");
    assert.equal(r.previousSerial, alice.serial);
    assert.notDeepEqual(fileState(alice.dir), before);
    const row = ca.snapshot().certs.find((c) => c.serial === r.serial);
    assert.equal(row?.identity, "spiffe://example.org/team-a/alice");
    const { csrPem } = await newKeyAndCsr();
    const plain = await caCall(ca, "/v1/renew", { csr: csrPem }, { keyPem: bob.keyPem, certPem: bob.certPem });
    assert.equal(plain.status, 201, JSON.stringify(plain.json));
    assert.equal(plain.json.identity, "spiffe://example.org/team-a/bob");
  });

  const refusals: { name: string; call: () => Promise<{ status: number; json: any }>; status: number; code: string; message: string }[] = [
    {
      name: "renewal for another identity",
      call: async () => caCall(ca, "/v1/renew", { csr: (await newKeyAndCsr()).csrPem, identity: "spiffe://example.org/team-a/bob" }, { keyPem: alice.keyPem, certPem: alice.certPem }),
      status: 403, code: "MCPMESH_IDENTITY_MISMATCH", message: "identity: a certificate for spiffe://example.org/team-a/alice can only renew spiffe://example.org/team-a/alice",
    },
    {
      name: "renewal without a client certificate",
      call: async () => caCall(ca, "/v1/renew", { csr: (await newKeyAndCsr()).csrPem }),
      status: 401, code: "MCPMESH_NO_CLIENT_CERT", message: "certificate: none presented (renewal and revocation need the current certificate over mTLS)",
    },
    {
      name: "revocation by a non-admin",
      call: async () => caCall(ca, "/v1/revoke", { identity: "team-a/bob", reason: "keyCompromise" }, { keyPem: alice.keyPem, certPem: alice.certPem }),
      status: 403, code: "MCPMESH_FORBIDDEN", message: "spiffe://example.org/team-a/alice is not an admin of this CA",
    },
    {
      name: "revocation without a client certificate",
      call: async () => caCall(ca, "/v1/revoke", { identity: "team-a/bob" }),
      status: 401, code: "MCPMESH_NO_CLIENT_CERT", message: "certificate: none presented (renewal and revocation need the current certificate over mTLS)",
    },
    {
      name: "revocation of an unknown serial by the admin",
      call: async () => caCall(ca, "/v1/revoke", { serial: "abcdef" }, { keyPem: admin.keyPem, certPem: admin.certPem }),
      status: 404, code: "MCPMESH_NOT_FOUND", message: "serial: no certificate abcdef was issued by this CA",
    },
    {
      name: "revocation naming both serial and identity",
      call: async () => caCall(ca, "/v1/revoke", { serial: bob.serial, identity: "team-a/bob" }, { keyPem: admin.keyPem, certPem: admin.certPem }),
      status: 400, code: "MCPMESH_INVALID_ARGUMENT", message: "target: give exactly one of serial or identity",
    },
  ];
  for (const c of refusals) {
    test(`refused: ${c.name}; nothing changes`, async () => {
      const before = ca.snapshot();
      const r = await c.call();
      assert.equal(r.status, c.status, JSON.stringify(r.json));
      assert.deepEqual(r.json, { error: { code: c.code, message: c.message } });
      assert.deepEqual(ca.snapshot(), before, "database unchanged");
    });
  }

  test("refused: renewal with a certificate from another CA (valid in its own mesh)", async (t) => {
    const dirB = tmpdir((fn) => t.after(fn));
    const b = await Authority.init({ dir: join(dirB, "ca"), trustDomain: "example.org", url: "https://127.0.0.1:1", passphrase: TEST_PASSPHRASE });
    t.after(() => b.close());
    const { keyPem, csrPem } = await newKeyAndCsr();
    const foreign = await b.enroll(b.createToken({ identity: "team-a/alice" }).token, csrPem);
    const before = ca.snapshot();
    const r = await caCall(ca, "/v1/renew", { csr: (await newKeyAndCsr()).csrPem }, { keyPem, certPem: foreign.chainPem });
    assert.equal(r.status, 403);
    assert.deepEqual(r.json, { error: { code: "MCPMESH_CERT_UNKNOWN", message: "certificate: not issued by this CA" } });
    const rv = await caCall(ca, "/v1/revoke", { identity: "team-a/bob" }, { keyPem, certPem: foreign.chainPem });
    assert.equal(rv.status, 403);
    assert.equal(rv.json.error.code, "MCPMESH_CERT_UNKNOWN");
    assert.deepEqual(ca.snapshot(), before);
  });

  test("an admin revokes over mTLS (by identity and by serial); the revoked cannot renew; the CRL lists them", async (t) => {
    const carol = await ca.enroll("team-b/carol");
    const bobSerials = ca.snapshot().certs.filter((c) => c.identity === "spiffe://example.org/team-a/bob").map((c) => c.serial);
    assert.equal(bobSerials.length, 2, "bob's enrollment and renewal");
    const byId = await caCall(ca, "/v1/revoke", { identity: "team-a/bob", reason: "keyCompromise" }, { keyPem: admin.keyPem, certPem: admin.certPem });
    assert.equal(byId.status, 200, JSON.stringify(byId.json));
    assert.deepEqual([...byId.json.revoked].sort(), [...bobSerials].sort());
    const bySerial = await caCall(ca, "/v1/revoke", { serial: carol.serial.toUpperCase() }, { keyPem: admin.keyPem, certPem: admin.certPem });
    assert.equal(bySerial.status, 200, JSON.stringify(bySerial.json));
    assert.deepEqual(bySerial.json.revoked, [carol.serial]);
    const again = await caCall(ca, "/v1/revoke", { serial: carol.serial }, { keyPem: admin.keyPem, certPem: admin.certPem });
    assert.deepEqual(again.json, { revoked: [] }, "revoking twice is a no-op");

    // Bob's files are his original enrollment: the library renewal is refused and writes nothing.
    const files = fileState(bob.dir);
    const before = ca.snapshot();
    await assert.rejects(renewIdentity(bob.dir), { code: "MCPMESH_CERT_REVOKED", status: 403, message: "certificate: revoked; it cannot renew (enroll again with a new token)" });
    await assert.rejects(renewIdentity(carol.dir), { code: "MCPMESH_CERT_REVOKED" });
    assert.deepEqual(fileState(bob.dir), files);
    assert.deepEqual(ca.snapshot(), before);

    const work = tmpdir((fn) => t.after(fn));
    const crl = await caGet(ca, "/v1/crl");
    writeFileSync(join(work, "crl.pem"), crl.body);
    const v = await openssl(["crl", "-in", join(work, "crl.pem"), "-CAfile", ca.intermediatePath, "-noout", "-text"]);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stderr + v.stdout, /verify OK/);
    const listed = [...v.stdout.matchAll(/Serial Number: ([0-9A-F]+)/g)].map((m) => normalizeSerial(m[1])).sort();
    assert.deepEqual(listed, [...bobSerials, carol.serial].sort());
  });
});

describe("renewal with an expired certificate (in-process CA with an injected clock, real HTTPS)", () => {
  const cleanup = new Cleanups();
  let offset = 0;
  let authority: Authority;
  let server: RunningCaServer;
  let url: string;
  after(() => cleanup.run());
  before(async () => {
    const root = tmpdir(cleanup.add);
    url = `https://127.0.0.1:${await freePort()}`;
    authority = await Authority.init({ dir: join(root, "ca"), trustDomain: "example.org", url, passphrase: TEST_PASSPHRASE, clock: () => Date.now() + offset });
    cleanup.add(() => authority.close());
    server = await startCaServer({ authority });
    cleanup.add(() => server.close());
  });

  test("a certificate the CA considers expired cannot renew, and nothing changes", async (t) => {
    const dir = join(tmpdir((fn) => t.after(fn)), "id");
    offset = 0;
    await enroll(authority.createToken({ identity: "team-a/alice", certTtlMs: 60_000 }).token, dir);
    const files = fileState(dir);
    const before = authority.list();
    offset = 2 * HOUR; // the CA's clock is past the one-minute certificate's notAfter
    try {
      await assert.rejects(renewIdentity(dir), { code: "MCPMESH_CERT_EXPIRED", status: 403, message: "certificate: expired; it cannot renew (enroll again with a new token)" });
    } finally {
      offset = 0;
    }
    assert.deepEqual(fileState(dir), files);
    assert.deepEqual(authority.list(), before);
  });

  test("a certificate that really expired (issued in the past) is refused by the CA and by the client", async (t) => {
    const dir = join(tmpdir((fn) => t.after(fn)), "id");
    offset = -3 * HOUR;
    try {
      await enroll(authority.createToken({ identity: "team-a/bob", certTtlMs: 1 * HOUR }).token, dir);
    } finally {
      offset = 0;
    }
    const files = fileState(dir);
    const before = authority.list();
    const leaf = before.find((c) => c.identity === "spiffe://example.org/team-a/bob")!;
    assert.ok(leaf.notAfter < Date.now(), "expired in real time");
    // The client refuses before asking...
    await assert.rejects(renewIdentity(dir), { code: "MCPMESH_STATE", message: new RegExp(`^the certificate in ${dir} expired at .*; it cannot renew: enroll again with a new token$`) });
    // ... and the CA refuses when asked anyway (the TLS layer lets the expired chain through to say why).
    const r = await caCall({ url, rootPem: authority.rootPem }, "/v1/renew", { csr: (await newKeyAndCsr()).csrPem }, { keyPem: readFileSync(join(dir, "key.pem"), "utf8"), certPem: readFileSync(join(dir, "cert.pem"), "utf8") });
    assert.equal(r.status, 403);
    assert.deepEqual(r.json, { error: { code: "MCPMESH_CERT_EXPIRED", message: "certificate: expired; it cannot renew (enroll again with a new token)" } });
    assert.deepEqual(fileState(dir), files);
    assert.deepEqual(authority.list(), before);
  });
});

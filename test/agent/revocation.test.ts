import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RevocationList, CrlError } from "../../agent/revocation.ts";
import { checkPeerSvid } from "../../agent/svid.ts";
import { isMeshError } from "../../lib/errors.ts";
import { createTestPki, type TestLeaf, type TestPki } from "../helpers/pki.ts";

const TD = "example.org";
const HOUR = 3600_000;
let dir: string;
let pki: TestPki;
/** Same CA names as `pki`, different keys: its CRLs name our intermediate but are not signed by it. */
let impostor: TestPki;
/** A CA with names of its own, unknown to our trust bundle. */
let stranger: TestPki;
let issuers: string[];
let alice: TestLeaf;
let bob: TestLeaf;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "mcpmesh-revocation-"));
  pki = createTestPki(join(dir, "pki"), { trustDomain: TD });
  impostor = createTestPki(join(dir, "impostor"), { trustDomain: TD });
  stranger = createTestPki(join(dir, "stranger"), { trustDomain: TD, caName: "stranger" });
  issuers = [pki.rootPem, pki.intermediatePem];
  alice = pki.leaf("alice", { uriSans: [`spiffe://${TD}/alice`] });
  bob = pki.leaf("bob", { uriSans: [`spiffe://${TD}/bob`] });
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function badCrl(pattern: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof CrlError, `not a CrlError: ${String(e)}`);
    assert.ok(isMeshError(e));
    assert.equal(e.code, "MCPMESH_BAD_CRL");
    assert.match(e.message, pattern);
    return true;
  };
}

test("a good CRL (PEM or DER) revokes exactly what it lists", () => {
  const crl = pki.crl([alice.certPath]);
  for (const input of [crl.pem, crl.der, Buffer.from(crl.pem)]) {
    const list = RevocationList.fromCrl(input, issuers);
    assert.equal(list.isRevoked(alice.serial), true);
    assert.equal(list.isRevoked(alice.serial.toLowerCase()), true);
    assert.equal(list.isRevoked(`00${alice.serial}`), true);
    assert.equal(list.isRevoked(bob.serial), false);
    assert.equal(list.isStale(), false);
    assert.equal(list.size, 1);
    const [info] = list.crls();
    assert.match(info.issuer, /intermediate/);
    assert.equal(info.revokedCount, 1);
    assert.ok(info.thisUpdate <= Date.now() && Date.now() < info.nextUpdate);
    assert.equal(list.nextUpdate(), info.nextUpdate);
  }
});

test("the issuer reported by checkPeerSvid selects the matching CRL", () => {
  const list = RevocationList.fromCrl(pki.crl([alice.certPath]).pem, issuers);
  const svid = checkPeerSvid(alice.der, { trustDomains: [TD], purpose: "client" });
  assert.ok(svid.ok);
  assert.equal(list.covers(svid.issuer), true);
  assert.equal(list.isRevoked(svid.serial, svid.issuer), true);
  assert.equal(list.isRevoked(svid.serial, "CN=someone else"), false);
});

test("accepts the trust bundle as one PEM string and CRLs of both CAs", () => {
  const fromRoot = pki.leaf("root-issued", { uriSans: [`spiffe://${TD}/r`], issuer: "root" });
  const list = RevocationList.fromCrls(
    [pki.crl([alice.certPath]).pem, pki.crl([fromRoot.certPath], { signer: "root" }).pem],
    [pki.rootPem + pki.intermediatePem],
  );
  assert.equal(list.crls().length, 2);
  assert.equal(list.isRevoked(alice.serial), true);
  assert.equal(list.isRevoked(fromRoot.serial), true);
  assert.equal(list.isRevoked(bob.serial), false);
});

test("refuses a CRL naming our issuer but signed by another CA", () => {
  const forged = impostor.crl([bob.certPath]);
  assert.throws(() => RevocationList.fromCrl(forged.pem, issuers), badCrl(/signature does not verify/));
});

test("refuses a CRL whose signature bytes were altered", () => {
  const der = Buffer.from(pki.crl([alice.certPath]).der);
  der[der.length - 5] ^= 0x01;
  assert.throws(() => RevocationList.fromCrl(der, issuers), badCrl(/signature does not verify/));
});

test("refuses a CRL whose revoked list was altered", () => {
  const der = Buffer.from(pki.crl([alice.certPath]).der);
  const serial = Buffer.from(alice.serial.length % 2 ? `0${alice.serial}` : alice.serial, "hex");
  const at = der.indexOf(serial);
  assert.ok(at > 0);
  der[at + serial.length - 1] ^= 0x01;
  assert.throws(() => RevocationList.fromCrl(der, issuers), badCrl(/signature does not verify/));
});

test("refuses a CRL from an issuer outside the trust bundle", () => {
  const foreign = stranger.crl([]);
  assert.throws(() => RevocationList.fromCrl(foreign.pem, issuers), badCrl(/not in the trust bundle/));
  // The intermediate's CRL cannot be checked against the root alone.
  assert.throws(() => RevocationList.fromCrl(pki.crl([]).pem, [pki.rootPem]), badCrl(/not in the trust bundle/));
});

test("refuses garbage", () => {
  const inputs: Array<string | Buffer> = [
    "",
    "garbage",
    "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n",
    pki.rootPem,
    Buffer.from("definitely not a CRL"),
    Buffer.alloc(0),
    Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]),
    Buffer.from(Array.from({ length: 256 }, (_, i) => (i * 37 + 11) & 0xff)),
  ];
  for (const input of inputs) {
    assert.throws(() => RevocationList.fromCrl(input, issuers), badCrl(/./), JSON.stringify(String(input).slice(0, 40)));
  }
});

test("refuses truncated and padded DER", () => {
  const der = pki.crl([alice.certPath]).der;
  for (const cut of [1, 10, Math.floor(der.length / 2), der.length - 1]) {
    assert.throws(() => RevocationList.fromCrl(der.subarray(0, cut), issuers), badCrl(/does not parse/), `cut at ${cut}`);
  }
  assert.throws(() => RevocationList.fromCrl(Buffer.concat([der, Buffer.from([0])]), issuers), badCrl(/trailing/));
});

test("refuses a CRL that is not yet valid", () => {
  const future = pki.crl([alice.certPath], { lastUpdate: new Date(Date.now() + 2 * HOUR), nextUpdate: new Date(Date.now() + 26 * HOUR) });
  assert.throws(() => RevocationList.fromCrl(future.pem, issuers), badCrl(/not yet valid/));
  // ...but is fine once its time has come.
  const list = RevocationList.fromCrl(future.pem, issuers, { now: Date.now() + 3 * HOUR });
  assert.equal(list.isRevoked(alice.serial), true);
});

test("a CRL past its nextUpdate loads but is stale", () => {
  const thisUpdate = new Date(Date.now() - 2 * HOUR);
  const nextUpdate = new Date(Date.now() - HOUR);
  const stale = pki.crl([alice.certPath], { lastUpdate: thisUpdate, nextUpdate });
  const list = RevocationList.fromCrl(stale.pem, issuers);
  assert.equal(list.isRevoked(alice.serial), true);
  assert.equal(list.isStale(), true);
  assert.equal(list.isStale(thisUpdate.getTime() + 1000), false);
  assert.equal(list.isStale(nextUpdate.getTime() + 1000), true);
});

test("a bad replacement keeps the old state", () => {
  const list = RevocationList.fromCrl(pki.crl([alice.certPath]).pem, issuers);
  const before = list.crls();
  for (const bad of ["garbage", impostor.crl([]).pem, pki.crl([alice.certPath]).der.subarray(0, 100)]) {
    assert.throws(() => list.replaceCrl(bad, issuers), badCrl(/./));
    assert.equal(list.isRevoked(alice.serial), true);
    assert.deepEqual(list.crls(), before);
  }
  // The caller's swap pattern: the current list survives a failed build of the next one.
  let current = list;
  try {
    current = RevocationList.fromCrl("garbage", issuers);
  } catch {
    // keep current
  }
  assert.equal(current, list);
  assert.throws(() => list.withCrl("garbage", issuers), badCrl(/./));
});

test("a good replacement swaps in the new CRL; an older one is refused", () => {
  const older = pki.crl([alice.certPath], { lastUpdate: new Date(Date.now() - 2 * HOUR), nextUpdate: new Date(Date.now() + HOUR) });
  const newer = pki.crl([bob.certPath]);
  const list = RevocationList.fromCrl(older.pem, issuers);
  const snapshot = list.clone();

  const info = list.replaceCrl(newer.pem, issuers);
  assert.equal(info.revokedCount, 1);
  assert.equal(list.isRevoked(bob.serial), true);
  assert.equal(list.isRevoked(alice.serial), false);
  assert.equal(list.crls().length, 1);
  // clone() is independent of later changes.
  assert.equal(snapshot.isRevoked(alice.serial), true);
  assert.equal(snapshot.isRevoked(bob.serial), false);

  assert.throws(() => list.replaceCrl(older.pem, issuers), badCrl(/older/));
  assert.equal(list.isRevoked(bob.serial), true);
  assert.equal(list.isRevoked(alice.serial), false);
});

test("live revocations apply at once and survive CRL replacement", () => {
  const list = RevocationList.fromCrl(pki.crl([]).pem, issuers);
  assert.equal(list.isRevoked(bob.serial), false);
  list.addSerial(bob.serial);
  assert.equal(list.isRevoked(bob.serial), true);
  assert.equal(list.isRevoked(bob.serial, list.crls()[0].issuer), true);
  list.replaceCrl(pki.crl([alice.certPath]).pem, issuers);
  assert.equal(list.isRevoked(bob.serial), true);
  assert.equal(list.isRevoked(alice.serial), true);
  assert.throws(() => list.addSerial("not-hex"), badCrl(/not hex/));

  const empty = new RevocationList();
  empty.addSerial("0A:BC");
  assert.equal(empty.isRevoked("abc"), true);
  assert.equal(empty.isStale(), false);
  assert.equal(empty.nextUpdate(), undefined);
});

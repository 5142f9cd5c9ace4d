import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import tls from "node:tls";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { checkPeerSvid, describeTlsAuthError, type SvidCheckResult, type SvidPurpose } from "../../agent/svid.ts";
import { createTestPki, type LeafOptions, type TestPki } from "../helpers/pki.ts";

const TD = "example.org";
const DAY = 24 * 3600_000;
let dir: string;
let pki: TestPki;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "mcpmesh-svid-"));
  pki = createTestPki(join(dir, "pki"), { trustDomain: TD });
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function check(der: Buffer, purpose: SvidPurpose = "client", now?: number): SvidCheckResult {
  return checkPeerSvid(der, { trustDomains: [TD], purpose, now });
}

interface BadRow {
  name: string;
  leaf: LeafOptions;
  purpose?: SvidPurpose;
  reason: string;
}

const ALICE = `spiffe://${TD}/team-a/alice`;

const badRows: BadRow[] = [
  { name: "no-eku", leaf: { uriSans: [ALICE], eku: [] }, reason: "missing_eku" },
  { name: "server-auth-only-as-client", leaf: { uriSans: [ALICE], eku: ["serverAuth"] }, reason: "wrong_eku" },
  { name: "client-auth-only-as-server", leaf: { uriSans: [ALICE], eku: ["clientAuth"] }, purpose: "server", reason: "wrong_eku" },
  { name: "two-uri-sans", leaf: { uriSans: [ALICE, `spiffe://${TD}/admin`] }, reason: "multiple_uri_sans" },
  { name: "spiffe-and-http-uri-sans", leaf: { uriSans: [ALICE, "https://example.org/"] }, reason: "multiple_uri_sans" },
  { name: "cn-only-spoof", leaf: { cn: `spiffe://${TD}/admin` }, reason: "no_uri_san" },
  {
    name: "embedded-uri-in-one-san",
    leaf: { uriSans: [`spiffe://${TD}/a, URI:spiffe://${TD}/admin`] },
    reason: "bad_spiffe_id",
  },
  { name: "other-trust-domain", leaf: { uriSans: ["spiffe://evil.example/team-a/alice"] }, reason: "foreign_trust_domain" },
  { name: "ca-true-leaf", leaf: { uriSans: [ALICE], ca: true }, reason: "ca_certificate" },
  { name: "key-cert-sign", leaf: { uriSans: [ALICE], keyUsage: ["digitalSignature", "keyCertSign"] }, reason: "bad_key_usage" },
  { name: "crl-sign", leaf: { uriSans: [ALICE], keyUsage: ["digitalSignature", "cRLSign"] }, reason: "bad_key_usage" },
  { name: "no-digital-signature", leaf: { uriSans: [ALICE], keyUsage: ["keyEncipherment"] }, reason: "bad_key_usage" },
  { name: "rsa-1024", leaf: { uriSans: [ALICE], key: "rsa1024" }, reason: "weak_key" },
  {
    name: "expired",
    leaf: { uriSans: [ALICE], notBefore: new Date(Date.now() - 3 * DAY), notAfter: new Date(Date.now() - DAY) },
    reason: "expired",
  },
  { name: "not-yet-valid", leaf: { uriSans: [ALICE], notBefore: new Date(Date.now() + DAY), days: 1 }, reason: "not_yet_valid" },
  { name: "dns-only-san", leaf: { dnsSans: ["alice.example.org"] }, reason: "no_uri_san" },
  { name: "http-uri-san", leaf: { uriSans: ["http://example.org/team-a/alice"] }, reason: "bad_spiffe_id" },
  { name: "dot-dot-segment", leaf: { uriSans: [`spiffe://${TD}/team-a/../admin`] }, reason: "bad_spiffe_id" },
  { name: "percent-encoded-slash", leaf: { uriSans: [`spiffe://${TD}/team-a%2Fadmin`] }, reason: "bad_spiffe_id" },
  { name: "query", leaf: { uriSans: [`spiffe://${TD}/team-a/alice?admin=1`] }, reason: "bad_spiffe_id" },
  { name: "space", leaf: { uriSans: [`spiffe://${TD}/team a`] }, reason: "bad_spiffe_id" },
  { name: "upper-case-trust-domain", leaf: { uriSans: ["spiffe://EXAMPLE.org/alice"] }, reason: "bad_spiffe_id" },
  { name: "no-path", leaf: { uriSans: [`spiffe://${TD}`] }, reason: "bad_spiffe_id" },
];

for (const row of badRows) {
  test(`refuses ${row.name} with ${row.reason}`, () => {
    const leaf = pki.leaf(`bad-${row.name}`, row.leaf);
    const result = check(leaf.der, row.purpose ?? "client");
    assert.equal(result.ok, false, `accepted: ${JSON.stringify(result)}`);
    if (result.ok) return;
    assert.equal(result.reason, row.reason, result.detail);
    assert.ok(result.detail.length > 0);
  });
}

interface GoodRow {
  name: string;
  leaf: LeafOptions;
  purpose: SvidPurpose;
  id: string;
}

const goodRows: GoodRow[] = [
  { name: "client", leaf: { uriSans: [ALICE] }, purpose: "client", id: ALICE },
  {
    name: "server",
    leaf: { uriSans: [`spiffe://${TD}/agent/db`], dnsSans: ["db.internal"], eku: ["serverAuth", "clientAuth"] },
    purpose: "server",
    id: `spiffe://${TD}/agent/db`,
  },
  { name: "rsa-2048", leaf: { uriSans: [ALICE], key: "rsa2048" }, purpose: "client", id: ALICE },
  { name: "ec-384", leaf: { uriSans: [ALICE], key: "ec384" }, purpose: "client", id: ALICE },
  { name: "ed25519", leaf: { uriSans: [ALICE], key: "ed25519" }, purpose: "client", id: ALICE },
  { name: "no-key-usage", leaf: { uriSans: [ALICE], keyUsage: [] }, purpose: "client", id: ALICE },
  { name: "cn-ignored", leaf: { uriSans: [ALICE], cn: `spiffe://${TD}/admin` }, purpose: "client", id: ALICE },
];

for (const row of goodRows) {
  test(`accepts a good ${row.name} certificate`, () => {
    const leaf = pki.leaf(`good-${row.name}`, row.leaf);
    const result = check(leaf.der, row.purpose);
    assert.ok(result.ok, result.ok ? "" : `${result.reason}: ${result.detail}`);
    assert.equal(result.id, row.id);
    assert.equal(result.serial, leaf.serial.toLowerCase().replace(/^0+/, ""));
    assert.match(result.issuer, /intermediate/);
    assert.ok(result.notBefore < Date.now() && Date.now() < result.notAfter);
  });
}

test("re-checks validity on the caller's clock", () => {
  const leaf = pki.leaf("clock", { uriSans: [ALICE], days: 1 });
  const ok = check(leaf.der);
  assert.ok(ok.ok);
  const late = check(leaf.der, "client", ok.notAfter + 1);
  assert.equal(late.ok, false);
  assert.equal(!late.ok && late.reason, "expired");
  const early = check(leaf.der, "client", ok.notBefore - 1);
  assert.equal(!early.ok && early.reason, "not_yet_valid");
});

test("a trust domain not in the list is foreign even for our own CA", () => {
  const leaf = pki.leaf("other-list", { uriSans: [ALICE] });
  const result = checkPeerSvid(leaf.der, { trustDomains: ["example.net"], purpose: "client" });
  assert.equal(!result.ok && result.reason, "foreign_trust_domain");
});

test("garbage is malformed_certificate", () => {
  for (const bytes of [Buffer.alloc(0), Buffer.from("not a certificate"), Buffer.from([0x30, 0x82, 0x01])]) {
    const result = check(bytes);
    assert.equal(!result.ok && result.reason, "malformed_certificate");
  }
  const good = pki.leaf("truncated", { uriSans: [ALICE] });
  const result = check(good.der.subarray(0, good.der.length - 10));
  assert.equal(!result.ok && result.reason, "malformed_certificate");
});

test("describeTlsAuthError maps Node's codes to stable reasons", () => {
  const cases: Array<[string, string]> = [
    ["UNABLE_TO_VERIFY_LEAF_SIGNATURE", "untrusted_chain"],
    ["UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "untrusted_chain"],
    ["UNABLE_TO_GET_ISSUER_CERT", "untrusted_chain"],
    ["CERT_HAS_EXPIRED", "expired"],
    ["CERT_NOT_YET_VALID", "not_yet_valid"],
    ["DEPTH_ZERO_SELF_SIGNED_CERT", "self_signed"],
    ["SELF_SIGNED_CERT_IN_CHAIN", "self_signed"],
    ["INVALID_PURPOSE", "wrong_eku"],
    ["CERT_REVOKED", "revoked"],
    ["CERT_SIGNATURE_FAILURE", "bad_signature"],
    ["UNSPECIFIED", "tls_verify_failed"],
    ["toString", "tls_verify_failed"],
    ["", "tls_verify_failed"],
  ];
  for (const [code, reason] of cases) assert.equal(describeTlsAuthError(code), reason, code);
});

test("over real TLS 1.3: the two-URI-SAN client is refused, the good one accepted", async () => {
  const serverLeaf = pki.leaf("tls-server", {
    uriSans: [`spiffe://${TD}/agent`],
    dnsSans: ["localhost"],
    eku: ["serverAuth"],
  });
  const twoUris = pki.leaf("tls-two-uris", { uriSans: [ALICE, `spiffe://${TD}/admin`] });
  const good = pki.leaf("tls-good", { uriSans: [ALICE] });

  const sockets = new Set<tls.TLSSocket>();
  type Verdict = SvidCheckResult | { ok: false; reason: string; detail: string };
  let onVerdict: ((v: Verdict) => void) | undefined;
  const server = tls.createServer({
    key: serverLeaf.keyPem,
    cert: serverLeaf.chainPem,
    ca: pki.rootPem,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: "TLSv1.3",
  });
  server.on("secureConnection", (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    const peer = socket.getPeerX509Certificate();
    let verdict: Verdict;
    if (!socket.authorized || !peer) {
      verdict = { ok: false, reason: describeTlsAuthError(String(socket.authorizationError)), detail: "chain" };
    } else {
      verdict = checkPeerSvid(peer.raw, { trustDomains: [TD], purpose: "client" });
    }
    if (verdict.ok) socket.end(`welcome ${verdict.id}\n`);
    else socket.destroy();
    onVerdict?.(verdict);
  });

  async function connect(leaf: { keyPem: string; chainPem: string }): Promise<{ verdict: Verdict; received: string }> {
    const verdict = new Promise<Verdict>((resolve) => (onVerdict = resolve));
    const received = await new Promise<string>((resolve) => {
      const { port } = server.address() as AddressInfo;
      const client = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ca: pki.rootPem, key: leaf.keyPem, cert: leaf.chainPem });
      sockets.add(client);
      let data = "";
      client.setEncoding("utf8");
      client.on("data", (d: string) => (data += d));
      client.on("error", () => {});
      client.on("close", () => resolve(data));
    });
    return { verdict: await verdict, received };
  }

  try {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));

    const refused = await connect(twoUris);
    assert.equal(refused.verdict.ok, false);
    assert.equal(!refused.verdict.ok && refused.verdict.reason, "multiple_uri_sans");
    assert.equal(refused.received, "");

    const accepted = await connect(good);
    assert.ok(accepted.verdict.ok);
    assert.equal(accepted.verdict.id, ALICE);
    assert.equal(accepted.received, `welcome ${ALICE}\n`);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

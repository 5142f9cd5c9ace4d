/**
 * The TLS gate remembers accepted SVID checks by certificate (so a client's certificate is parsed once, not on every
 * connection). What the cache must never do: skip the validity window, survive a change of trust domains, or stand
 * in for revocation and admission, which are asked on every connection. Real TLS 1.3 connections with certificates
 * from the mesh CA; the gate decides on the server's socket with an explicit clock.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, createServer, type Server, type TLSSocket } from "node:tls";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { loadIdentity } from "../../identity/store.ts";
import { TlsGate, loadTrustBundle, serverTlsOptions, type PeerIdentity } from "../../agent/tls-gate.ts";
import type { RevocationList } from "../../agent/revocation.ts";
import type { Logger } from "../../lib/log.ts";

let mesh: TestMesh;
let server: Server;
let clientDir: string;
/** The gate under test and the clock it is asked with; each accepted socket's verdict lands in `verdicts`. */
let gate: TlsGate;
let now = 0;
let revoked = false;
let admitted = true;
const refusals: string[] = [];
const verdicts: Array<PeerIdentity | null> = [];

before(async () => {
  mesh = await createMesh();
  const agentDir = await mesh.issue("agents/gate", { kind: "agent" });
  clientDir = await mesh.issue("team/alice");
  const id = loadIdentity(agentDir);
  const logger = { warn: (o: { reason?: string }) => void refusals.push(String(o.reason)) } as unknown as Logger;
  gate = new TlsGate({
    trustDomains: ["example.org"],
    revocation: () => (revoked ? ({ isRevoked: () => true } as unknown as RevocationList) : null),
    admits: () => admitted,
    logger,
  });
  server = createServer({ ...serverTlsOptions(id, loadTrustBundle(id, []), "TLSv1.3") }, (socket: TLSSocket) => {
    verdicts.push(gate.check(socket, now));
    socket.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
});

after(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await mesh.close();
});

/** One full mTLS handshake as alice; resolves with the gate's verdict for it. */
async function handshake(): Promise<PeerIdentity | null> {
  const n = verdicts.length;
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve, reject) => {
    const s = connect({
      host: "127.0.0.1", port, minVersion: "TLSv1.3",
      ca: readFileSync(join(clientDir, "ca.pem")), cert: readFileSync(join(clientDir, "cert.pem")), key: readFileSync(join(clientDir, "key.pem")),
      checkServerIdentity: () => undefined,
    });
    s.on("error", reject);
    s.on("close", () => resolve());
    s.resume();
  });
  while (verdicts.length === n) await new Promise((r) => setTimeout(r, 5));
  return verdicts[n];
}

test("a remembered certificate is still refused outside its validity window, and again accepted inside it", async () => {
  now = Date.now();
  const first = await handshake();
  assert.equal(first?.id, "spiffe://example.org/team/alice");
  const again = await handshake();
  assert.deepEqual(again, first);
  for (const [when, reason] of [[first!.notAfter + 1, "expired"], [first!.notBefore - 1, "not_yet_valid"]] as const) {
    now = when;
    refusals.length = 0;
    assert.equal(await handshake(), null, `now = ${new Date(when).toISOString()}`);
    assert.deepEqual(refusals, [reason]);
  }
  now = Date.now();
  assert.equal((await handshake())?.id, first!.id);
});

test("revocation and admission are asked on every connection, cached certificate or not", async () => {
  now = Date.now();
  assert.ok(await handshake());
  for (const [flip, reason] of [[() => (revoked = true), "revoked"], [() => (admitted = false), "not_admitted"]] as const) {
    revoked = false;
    admitted = true;
    flip();
    refusals.length = 0;
    assert.equal(await handshake(), null);
    assert.deepEqual(refusals, [reason]);
  }
  revoked = false;
  admitted = true;
  assert.ok(await handshake());
});

test("a change of trust domains (reload) forgets what was accepted", async () => {
  now = Date.now();
  assert.ok(await handshake());
  gate.update({ trustDomains: ["other.org"] });
  refusals.length = 0;
  assert.equal(await handshake(), null);
  assert.deepEqual(refusals, ["foreign_trust_domain"]);
  gate.update({ trustDomains: ["example.org"] });
  assert.ok(await handshake());
});

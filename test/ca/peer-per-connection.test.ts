/**
 * The CA reads a connection's peer certificate once (ca/server.ts peerOf) and keeps it for the connection's later
 * requests. That is only safe because the certificate's record is still checked on every request: a certificate
 * revoked while its holder keeps a connection open must be refused on that very connection, and an admin revoked
 * mid-connection loses the right to revoke on it.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Agent, request } from "node:https";
import type { TLSSocket } from "node:tls";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { loadIdentity } from "../../identity/store.ts";
import type { RunningCaServer } from "../../ca/server.ts";

let mesh: TestMesh;
let server: RunningCaServer;

before(async () => {
  mesh = await createMesh();
  server = await mesh.startCa();
});
after(() => mesh.close());

/** One POST over `agent` (one keep-alive socket); returns the answer and the local port of the socket it used. */
function post(agent: Agent, path: string, body: unknown): Promise<{ status: number; json: any; port: number; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = request(new URL(path, server.url), { method: "POST", agent, headers: { "content-type": "application/json", "content-length": data.length } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, json: JSON.parse(Buffer.concat(chunks).toString("utf8")), port: (req.socket as TLSSocket).localPort!, reused: req.reusedSocket }));
    });
    req.on("error", reject);
    req.end(data);
  });
}

function keptAlive(dir: string): Agent {
  const id = loadIdentity(dir);
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: mesh.authority.rootPem, key: id.keyPem, cert: id.certPem });
  return agent;
}

test("a certificate revoked while its connection stays open cannot renew on that connection", async (t) => {
  const dir = await mesh.issue("team-a/alice");
  const serial = loadIdentity(dir).serial;
  const agent = keptAlive(dir);
  t.after(() => agent.destroy());

  const first = await post(agent, "/v1/renew", { csr: (await newKeyAndCsr()).csrPem });
  assert.equal(first.status, 201, JSON.stringify(first.json));
  assert.equal(first.json.identity, "spiffe://example.org/team-a/alice");

  assert.deepEqual(mesh.authority.revoke({ serial, reason: "keyCompromise" }), [serial]);
  const certsBefore = mesh.authority.store.listCerts().length;
  const second = await post(agent, "/v1/renew", { csr: (await newKeyAndCsr()).csrPem });
  assert.equal(second.reused, true, "the second request went over the first request's connection");
  assert.equal(second.port, first.port);
  assert.equal(second.status, 403);
  assert.equal(second.json.error.code, "MCPMESH_CERT_REVOKED");
  assert.equal(mesh.authority.store.listCerts().length, certsBefore, "nothing issued");
});

test("an admin revoked mid-connection can no longer revoke on that connection", async (t) => {
  const admin = await mesh.issue("ops/admin");
  const victim = await mesh.issue("team-b/bob");
  const other = await mesh.issue("team-b/carol");
  const adminSerial = loadIdentity(admin).serial;
  const agent = keptAlive(admin);
  t.after(() => agent.destroy());

  const first = await post(agent, "/v1/revoke", { serial: loadIdentity(victim).serial, reason: "superseded" });
  assert.equal(first.status, 200, JSON.stringify(first.json));

  mesh.authority.revoke({ serial: adminSerial, reason: "keyCompromise" });
  const second = await post(agent, "/v1/revoke", { serial: loadIdentity(other).serial });
  assert.equal(second.reused, true);
  assert.equal(second.port, first.port);
  assert.equal(second.status, 403);
  assert.equal(second.json.error.code, "MCPMESH_CERT_REVOKED");
  const carol = mesh.authority.store.listCerts().find((c) => c.serial === loadIdentity(other).serial);
  assert.equal(carol?.revokedAt, null, "carol's certificate is untouched");
});

/**
 * The live feed hears about a revocation written by another process (`mcpmesh ca revoke`, the real CLI) from the
 * store's WAL changing, not only from its poll: with the poll set to a minute, the subscribed agent still gets the
 * `revoked` message, and an issuance (which also writes the WAL) pushes nothing.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { WebSocket } from "ws";
import { startCaServer, type RunningCaServer } from "../../ca/server.ts";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { Cleanups, runCliOk } from "../helpers/cli.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let ca: RunningCaServer;
after(() => cleanups.run());
before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  ca = await startCaServer({ authority: mesh.authority, watchPollMs: 60_000 });
  cleanups.add(() => ca.close());
});

test("a CLI revocation reaches the feed through the WAL watch, with the poll a minute away", async () => {
  const agentDir = await mesh.issue("agents/a", { kind: "agent" });
  await mesh.issue("team-a/victim");
  const messages: any[] = [];
  const ws = new WebSocket(new URL("/v1/watch", mesh.caUrl).toString().replace("https:", "wss:"), {
    cert: readFileSync(join(agentDir, "cert.pem")), key: readFileSync(join(agentDir, "key.pem")), ca: readFileSync(join(agentDir, "ca.pem")),
  });
  cleanups.add(() => ws.terminate());
  const next = (pred: (m: any) => boolean, what: string) =>
    new Promise<any>((resolve, reject) => {
      const found = messages.find(pred);
      if (found) return resolve(found);
      const timer = setTimeout(() => reject(new Error(`no ${what} within 30 s (the poll is 60 s away)`)), 30_000);
      ws.on("message", function onMessage(data) {
        const m = JSON.parse(data.toString());
        if (pred(m)) {
          clearTimeout(timer);
          ws.off("message", onMessage);
          resolve(m);
        }
      });
    });
  ws.on("message", (data) => messages.push(JSON.parse(data.toString())));
  await next((m) => m.type === "hello", "hello");

  // An issuance writes the WAL too: it wakes the feed, which finds no revocation and sends nothing.
  await mesh.issue("team-a/bystander");
  await runCliOk(["ca", "revoke", "--dir", join(mesh.dir, "ca"), "--identity", "team-a/victim", "--reason", "keyCompromise"]);
  const revoked = await next((m) => m.type === "revoked", "revoked message");
  assert.equal(revoked.identity, "spiffe://example.org/team-a/victim");
  assert.equal(revoked.reason, "keyCompromise");
  assert.deepEqual(messages.map((m) => m.type), ["hello", "revoked"], "nothing pushed for the issuance");
});

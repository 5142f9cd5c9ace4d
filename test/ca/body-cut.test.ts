/**
 * A request body cut off mid-way (the client disconnects before content-length bytes arrived) must settle its handler:
 * logged once as a refused request with a stable code, never left pending, never reported as an internal error.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:tls";
import { Writable } from "node:stream";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startCaServer, type RunningCaServer } from "../../ca/server.ts";
import { createLogger } from "../../lib/log.ts";

let mesh: TestMesh;
let server: RunningCaServer;
const lines: Array<Record<string, any>> = [];

before(async () => {
  mesh = await createMesh();
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  server = await startCaServer({ authority: mesh.authority, logger: createLogger({ name: "ca", destination: sink }) });
});
after(async () => {
  await server.close();
  await mesh.close();
});

async function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const path of ["/v1/enroll", "/v1/renew", "/v1/revoke"]) {
  test(`${path}: a body cut off mid-way is refused as such (MCPMESH_BAD_REQUEST), not left pending`, async () => {
    const from = lines.length;
    const u = new URL(server.url);
    const sock = connect({ host: u.hostname, port: Number(u.port), ca: mesh.authority.rootPem });
    await new Promise<void>((resolve, reject) => sock.once("secureConnect", resolve).once("error", reject));
    sock.write(`POST ${path} HTTP/1.1\r\nhost: ${u.host}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"token":"`);
    // The server has the headers and part of the body before the client goes.
    await new Promise((r) => setTimeout(r, 200));
    sock.destroy();
    await until(() => lines.slice(from).some((l) => l.path === path && (l.event === "request_refused" || l.event === "internal_error")), `the ${path} handler to settle`);
    const settled = lines.slice(from).filter((l) => l.path === path);
    assert.deepEqual(settled.map((l) => [l.event, l.code, l.reason]), [["request_refused", "MCPMESH_BAD_REQUEST", "body: the connection closed before the request body ended"]]);
  });
}

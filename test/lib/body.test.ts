/**
 * lib/body.ts: the one request-body reader of the CA's API and every agent edge, on a real loopback HTTP server.
 * Each case is a client behaviour; each must settle the reader with the bytes or with the named error, never hang.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { BodyIncompleteError, BodyTooLargeError, readBody } from "../../lib/body.ts";

const LIMIT = 1024;
let server: Server;
let port: number;
/** Each request's outcome, in arrival order: the body read, or the error it was refused with. */
let outcomes: Array<Promise<Buffer | Error>> = [];

before(async () => {
  server = createServer((req: IncomingMessage, res) => {
    const p = readBody(req, LIMIT).then((b) => b, (e: Error) => e);
    outcomes.push(p);
    void p.then((r) => {
      if (!res.destroyed) res.writeHead(r instanceof Error ? 400 : 200, { connection: "close" }).end(r instanceof Error ? r.message : "ok");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as AddressInfo).port;
});
after(() => new Promise<void>((r) => server.close(() => r())));

/** Writes raw request bytes in the given pieces, then ends (or destroys) the socket; resolves with what came back. */
function send(pieces: Array<string | Buffer>, how: "end" | "destroy" | "wait"): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    let got = "";
    s.on("data", (d) => (got += d));
    s.on("close", () => resolve(got));
    s.on("error", () => {});
    s.once("connect", async () => {
      for (const p of pieces) {
        s.write(p);
        await new Promise((r) => setTimeout(r, 20));
      }
      if (how === "end") s.end();
      else if (how === "destroy") {
        // Wait for the server to have started reading this request, so the cut is mid-body, not before it.
        while (outcomes.length === 0) await new Promise((r) => setTimeout(r, 10));
        s.destroy();
      }
    });
  });
}

async function outcome(pieces: Array<string | Buffer>, how: "end" | "destroy" | "wait" = "wait"): Promise<Buffer | Error> {
  outcomes = [];
  const reply = send(pieces, how);
  while (outcomes.length === 0) await new Promise((r) => setTimeout(r, 10));
  const r = await outcomes[0];
  await reply;
  return r;
}

const head = (headers: string) => `POST /x HTTP/1.1\r\nhost: a\r\n${headers}\r\n`;

test("a body in several pieces is returned whole, byte for byte", async () => {
  const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
  const r = await outcome([head("content-length: 1000\r\n"), body.subarray(0, 300), body.subarray(300, 700), body.subarray(700)]);
  assert.ok(Buffer.isBuffer(r));
  assert.deepEqual(r, body);
});

test("an empty body and a body of exactly the limit are accepted", async () => {
  assert.deepEqual(await outcome([head("content-length: 0\r\n")]), Buffer.alloc(0));
  const r = await outcome([head(`content-length: ${LIMIT}\r\n`), "a".repeat(LIMIT)]);
  assert.ok(Buffer.isBuffer(r));
  assert.equal(r.length, LIMIT);
});

test("bad bodies are refused with the named error", async () => {
  const cases: Array<{ name: string; pieces: Array<string | Buffer>; how?: "end" | "destroy"; error: new (...a: any[]) => Error; code: string }> = [
    { name: "declared Content-Length one byte over the limit (refused before any byte is read)", pieces: [head(`content-length: ${LIMIT + 1}\r\n`)], error: BodyTooLargeError, code: "MCPMESH_TOO_LARGE" },
    { name: "declared Content-Length far over the limit", pieces: [head("content-length: 99999999999\r\n")], error: BodyTooLargeError, code: "MCPMESH_TOO_LARGE" },
    { name: "chunked body that grows past the limit", pieces: [head("transfer-encoding: chunked\r\n"), "200\r\n" + "a".repeat(512) + "\r\n", "200\r\n" + "b".repeat(512) + "\r\n", "1\r\nc\r\n"], error: BodyTooLargeError, code: "MCPMESH_TOO_LARGE" },
    { name: "client gone half-way through a Content-Length body", pieces: [head("content-length: 500\r\n"), "x".repeat(100)], how: "destroy", error: BodyIncompleteError, code: "MCPMESH_BAD_REQUEST" },
    { name: "client gone half-way through a chunked body", pieces: [head("transfer-encoding: chunked\r\n"), "10\r\n0123456789abcdef\r\n"], how: "destroy", error: BodyIncompleteError, code: "MCPMESH_BAD_REQUEST" },
    { name: "client half-closes before the declared length arrived", pieces: [head("content-length: 500\r\n"), "x".repeat(100)], how: "end", error: BodyIncompleteError, code: "MCPMESH_BAD_REQUEST" },
  ];
  for (const c of cases) {
    const r = await outcome(c.pieces, c.how);
    assert.ok(r instanceof c.error, `${c.name}: expected ${c.error.name}, got ${r instanceof Error ? r.name + ": " + r.message : "a body"}`);
    assert.equal((r as BodyTooLargeError).code, c.code, c.name);
  }
});

test("the too-large error names the limit", async () => {
  const r = await outcome([head(`content-length: ${LIMIT + 1}\r\n`)]);
  assert.ok(r instanceof BodyTooLargeError);
  assert.equal(r.limit, LIMIT);
  assert.equal(r.message, `body: larger than ${LIMIT} bytes`);
});

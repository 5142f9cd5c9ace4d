/**
 * The Streamable HTTP upstream channel (agent/upstream/http-channel.ts) against misbehaving upstreams on real loopback
 * sockets: every request it sent is answered — by the upstream, or by the channel with a JSON-RPC error — and never
 * left hanging; a forgotten session closes the channel; the identity header and negotiated version travel upstream.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { HttpUpstream } from "../../agent/upstream/http.ts";
import { HttpConnector, HttpChannel } from "../../agent/upstream/http-channel.ts";

type Handler = (req: IncomingMessage, res: ServerResponse, body: any) => void;

async function upstream(handler: Handler): Promise<{ url: string; seen: { method: string; headers: IncomingMessage["headers"]; body: any }[]; close(): Promise<void> }> {
  const seen: { method: string; headers: IncomingMessage["headers"]; body: any }[] = [];
  const server = createServer(async (req, res) => {
    let text = "";
    for await (const c of req) text += c;
    const body = text ? JSON.parse(text) : undefined;
    seen.push({ method: req.method ?? "", headers: req.headers, body });
    handler(req, res, body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function channel(url: string, timeoutMs = 10_000): { up: HttpUpstream; ch: HttpChannel; inbox: any[]; next(pred: (m: any) => boolean): Promise<any>; closed: Promise<void> } {
  const up = new HttpUpstream({ url, timeoutMs });
  const ch = new HttpChannel(up, "spiffe://example.org/team-a/alice");
  const inbox: any[] = [];
  const waiters = new Set<() => void>();
  ch.onmessage = (m) => {
    inbox.push(m);
    for (const w of [...waiters]) w();
  };
  const closed = new Promise<void>((r) => (ch.onclose = r));
  const next = (pred: (m: any) => boolean) =>
    new Promise<any>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not seen: ${JSON.stringify(inbox)}`)), 20_000);
      const check = () => {
        const hit = inbox.find(pred);
        if (hit) {
          clearTimeout(timer);
          waiters.delete(check);
          resolve(hit);
        }
      };
      waiters.add(check);
      check();
    });
  return { up, ch, inbox, next, closed };
}

const req = (id: number | string, method = "tools/call"): JSONRPCMessage => ({ jsonrpc: "2.0", id, method, params: { name: "echo", arguments: { text: "x" } } }) as JSONRPCMessage;

test("an SSE answer that ends without the response: the request is answered with -32000", async (t) => {
  const u = await upstream((_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(`event: message\ndata: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } })}\n\n`);
    res.end();
  });
  t.after(() => u.close());
  const c = channel(u.url);
  t.after(() => c.up.close());
  await c.ch.send(req(7));
  const answer = await c.next((m) => m.id === 7);
  assert.equal(answer.error.code, -32000);
  assert.match(answer.error.message, /ended the response without answering/);
  // What did arrive before the end was delivered, in order.
  assert.equal(c.inbox[0].method, "notifications/progress");
});

test("a stream cut mid-answer (socket destroyed): the request is answered with -32000", async (t) => {
  const u = await upstream((_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.flushHeaders();
    setImmediate(() => res.socket?.destroy());
  });
  t.after(() => u.close());
  const c = channel(u.url);
  t.after(() => c.up.close());
  await c.ch.send(req("s-1"));
  const answer = await c.next((m) => m.id === "s-1");
  assert.equal(answer.error.code, -32000);
});

test("HTTP errors without a JSON-RPC answer, and an upstream that is not there, answer the request", async (t) => {
  const u = await upstream((_req, res) => res.writeHead(500, { "content-type": "text/plain" }).end("boom"));
  t.after(() => u.close());
  const c = channel(u.url);
  t.after(() => c.up.close());
  await c.ch.send(req(1));
  assert.match((await c.next((m) => m.id === 1)).error.message, /answered HTTP 500/);

  const gone = await upstream(() => {});
  const goneUrl = gone.url;
  await gone.close();
  const d = channel(goneUrl);
  t.after(() => d.up.close());
  await d.ch.send(req(2));
  const answer = await d.next((m) => m.id === 2);
  assert.equal(answer.error.code, -32000);
  assert.match(answer.error.message, /unavailable/);
});

test("no response headers within upstream.timeout: answered as timed out", async (t) => {
  const u = await upstream(() => {
    // never answers
  });
  t.after(() => u.close());
  const c = channel(u.url, 300);
  t.after(() => c.up.close());
  await c.ch.send(req(3));
  assert.match((await c.next((m) => m.id === 3)).error.message, /timed out/);
});

test("session id, identity and negotiated version travel upstream; a forgotten session (404) closes the channel", async (t) => {
  let forget = false;
  const u = await upstream((r, res, body) => {
    if (forget) return void res.writeHead(404, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32001, message: "Session not found" } }));
    if (r.method === "GET") return void res.writeHead(405).end();
    if (r.method === "DELETE") return void res.writeHead(200).end();
    if (body?.method === "initialize") {
      return void res.writeHead(200, { "content-type": "application/json", "mcp-session-id": "up-123" }).end(JSON.stringify({ jsonrpc: "2.0", id: body.id, result: { protocolVersion: "2025-06-18", capabilities: {}, serverInfo: { name: "x", version: "1" } } }));
    }
    if (body?.id === undefined) return void res.writeHead(202).end();
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: body.id, result: {} }));
  });
  t.after(() => u.close());
  const connUp = new HttpUpstream({ url: u.url, timeoutMs: 10_000 });
  t.after(() => connUp.close());
  const conn = new HttpConnector(connUp);
  const c = channel(u.url);
  t.after(() => c.up.close());
  await c.ch.send({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "t", version: "1" } } } as JSONRPCMessage);
  await c.next((m) => m.id === 0);
  c.ch.setProtocolVersion("2025-06-18");
  assert.equal(c.ch.sessionId, "up-123");
  await c.ch.send({ jsonrpc: "2.0", method: "notifications/initialized" } as JSONRPCMessage);
  await c.ch.send(req(1, "ping"));
  await c.next((m) => m.id === 1);
  const last = u.seen.filter((s) => s.method === "POST").at(-1)!;
  assert.equal(last.headers["x-mcpmesh-identity"], "spiffe://example.org/team-a/alice");
  assert.equal(last.headers["mcp-session-id"], "up-123");
  assert.equal(last.headers["mcp-protocol-version"], "2025-06-18");
  forget = true;
  await c.ch.send(req(2));
  assert.match((await c.next((m) => m.id === 2)).error.message, /session ended/i);
  await c.closed;
  // The connector's own close() closes every channel it opened.
  const opened = conn.open({ identity: "spiffe://example.org/x", sessionId: "s" });
  let closedToo = false;
  opened.onclose = () => (closedToo = true);
  await conn.close();
  assert.equal(closedToo, true);
});

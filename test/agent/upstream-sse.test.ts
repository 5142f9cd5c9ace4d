/**
 * The legacy SSE upstream connector against a real SDK McpServer over SSEServerTransport (test/helpers/sse-server.ts),
 * driven by the real SDK Client over the connector's channel; and against raw HTTP servers that misbehave: an endpoint
 * on another origin, a POST redirected elsewhere, a failing POST, a dropped stream.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { SseConnector } from "../../agent/upstream/sse.ts";
import { MeshError } from "../../lib/errors.ts";
import { startSseMcpServer } from "../helpers/sse-server.ts";
import { captureLog } from "../helpers/log-capture.ts";
import { tmpdir, type Defer } from "../helpers/cli.ts";

const ALICE = "spiffe://example.org/alice";

function connector(defer: Defer, url: string, socketPath?: string) {
  const log = captureLog();
  const c = new SseConnector({ url, socketPath, timeoutMs: 30_000, logger: log.logger });
  defer(() => c.close());
  return { c, log };
}

async function connect(c: SseConnector, identity = ALICE): Promise<{ client: Client; channel: Transport; closed: Promise<void> }> {
  const channel = c.open({ identity, sessionId: `sess-${Math.random()}` });
  const client = new Client({ name: "sse-test", version: "1.0.0" });
  await client.connect(channel);
  const prev = channel.onclose;
  const closed = new Promise<void>((resolve) => {
    channel.onclose = () => {
      prev?.();
      resolve();
    };
  });
  return { client, channel, closed };
}

const text = (r: any): string => r.content[0].text;

/** A raw HTTP server on 127.0.0.1 for misbehaving upstreams; every request is recorded. */
async function rawServer(defer: Defer, handler: (req: IncomingMessage, res: ServerResponse, port: number) => void): Promise<{ port: number; requests: string[] }> {
  const requests: string[] = [];
  let port = 0;
  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    handler(req, res, port);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  port = (server.address() as { port: number }).port;
  defer(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { port, requests };
}

test("initialize, list and call over legacy SSE; X-MCPMesh-Identity on the stream and on every POST", async (t) => {
  const up = await startSseMcpServer();
  t.after(() => up.close());
  const { c } = connector((fn) => t.after(fn), up.url);
  const { client, channel } = await connect(c);
  const tools = (await client.listTools()).tools.map((x) => x.name);
  assert.deepEqual(tools, ["echo", "get-weather", "add", "delete-file", "tenant-report", "slow-count", "hold"]);
  assert.equal(text(await client.callTool({ name: "add", arguments: { a: 2, b: 40 } })), "42");
  // Progress passes in order (seen on the channel: the SDK Client loses progress read in one go with the result).
  const seen: any[] = [];
  const inner = channel.onmessage!;
  channel.onmessage = (m, extra) => {
    seen.push(m);
    inner(m, extra);
  };
  assert.equal(text(await client.callTool({ name: "slow-count", arguments: { steps: 2 } }, undefined, { onprogress: () => {} })), "counted 2");
  assert.deepEqual(seen.filter((m) => m.method === "notifications/progress").map((m) => m.params.progress), [1, 2]);
  assert.deepEqual(up.received.map((r) => r.method), ["GET", "POST", "POST", "POST", "POST", "POST"]);
  for (const r of up.received) assert.equal(r.headers["x-mcpmesh-identity"], ALICE);
  // The SDK Client sets the negotiated version on the transport; later POSTs carry it.
  assert.equal(up.received[1].headers["mcp-protocol-version"], undefined, "not on initialize");
  assert.ok(up.received.slice(2).every((r) => typeof r.headers["mcp-protocol-version"] === "string"));
  assert.deepEqual(up.received.flatMap((r) => r.rpcMethods), ["initialize", "notifications/initialized", "tools/list", "tools/call", "tools/call"]);

  // A second session is a second stream, with its own identity.
  const bob = await connect(c, "spiffe://example.org/bob");
  await bob.client.callTool({ name: "echo", arguments: { text: "hi" } });
  assert.equal(up.streams(), 2);
  assert.equal(up.received.at(-1)!.headers["x-mcpmesh-identity"], "spiffe://example.org/bob");
  await c.close();
});

test("over a unix socket (upstream.socket)", async (t) => {
  const dir = tmpdir((fn) => t.after(fn), "mcpmesh-sse-");
  const socketPath = join(dir, "mcp.sock");
  const up = await startSseMcpServer({ socketPath });
  t.after(() => up.close());
  const { c } = connector((fn) => t.after(fn), up.url, socketPath);
  const { client } = await connect(c);
  assert.equal(text(await client.callTool({ name: "echo", arguments: { text: "via socket" } })), "via socket");
  assert.equal(up.received[0].headers.host, "localhost");
});

test("an endpoint event naming another origin is refused: start() fails, nothing is sent there", async (t) => {
  const elsewhere = await rawServer((fn) => t.after(fn), (_req, res) => res.writeHead(202).end());
  let endpoint = "";
  const up = await rawServer((fn) => t.after(fn), (req, res) => {
    if (req.method === "GET") {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(`event: endpoint\ndata: ${endpoint}\n\n`);
      return;
    }
    res.writeHead(202).end();
  });
  const bad = [
    `http://127.0.0.1:${elsewhere.port}/messages?sessionId=1`,
    `//127.0.0.1:${elsewhere.port}/messages`,
    `http://localhost:${up.port}/messages`,
    `https://127.0.0.1:${up.port}/messages`,
    `http://127.0.0.2:${up.port}/messages`,
  ];
  for (const e of bad) {
    endpoint = e;
    const { c, log } = connector((fn) => t.after(fn), `http://127.0.0.1:${up.port}/sse`);
    const channel = c.open({ identity: ALICE, sessionId: "s" });
    let closed = false;
    channel.onclose = () => (closed = true);
    await assert.rejects(channel.start(), (err: any) => err instanceof MeshError && err.code === "MCPMESH_UPSTREAM" && /origin/i.test(err.message), e);
    assert.ok(closed, `channel closed after ${e}`);
    await assert.rejects(channel.send({ jsonrpc: "2.0", id: 1, method: "ping" }), MeshError);
    assert.equal(log.events("upstream_connect_failed").length, 1);
  }
  assert.deepEqual(elsewhere.requests, []);
  assert.deepEqual(up.requests.filter((r) => !r.startsWith("GET")), [], "no message was POSTed anywhere");
});

test("a POST that fails or is redirected to another origin answers the request with an error; nothing reaches the other origin", async (t) => {
  const elsewhere = await rawServer((fn) => t.after(fn), (_req, res) => res.writeHead(202).end());
  let mode: "500" | "redirect" = "500";
  const up = await rawServer((fn) => t.after(fn), (req, res) => {
    if (req.method === "GET") {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(`event: endpoint\ndata: /messages?sessionId=1\n\n`);
      return;
    }
    if (mode === "500") res.writeHead(500).end("boom");
    else res.writeHead(307, { location: `http://127.0.0.1:${elsewhere.port}/messages` }).end();
  });
  const { c } = connector((fn) => t.after(fn), `http://127.0.0.1:${up.port}/sse`);
  const channel = c.open({ identity: ALICE, sessionId: "s" });
  const got: any[] = [];
  channel.onmessage = (m) => got.push(m);
  await channel.start();
  await channel.send({ jsonrpc: "2.0", id: 1, method: "tools/list" });
  mode = "redirect";
  await channel.send({ jsonrpc: "2.0", id: "two", method: "tools/list" });
  assert.equal(got.length, 2);
  assert.deepEqual(got.map((m) => [m.id, m.error.code]), [[1, -32000], ["two", -32000]]);
  assert.match(got[0].error.message, /HTTP 500/);
  assert.match(got[1].error.message, /redirect|307/i);
  // A notification that cannot be delivered is the caller's error (there is no response to carry it).
  await assert.rejects(channel.send({ jsonrpc: "2.0", method: "notifications/initialized" }), MeshError);
  assert.deepEqual(elsewhere.requests, []);
  await channel.close();
});

test("an upstream that drops the stream: in-flight requests get errors, the channel closes, no reconnect", async (t) => {
  const up = await startSseMcpServer();
  t.after(() => up.close());
  const { c, log } = connector((fn) => t.after(fn), up.url);
  const { client, closed } = await connect(c);
  const held = client.callTool({ name: "hold", arguments: {} });
  for (const deadline = Date.now() + 60_000; up.held() === 0; await new Promise((r) => setTimeout(r, 10))) {
    if (Date.now() > deadline) throw new Error("the hold call never reached the upstream");
  }
  up.dropStreams();
  await assert.rejects(held, (e: any) => {
    assert.equal(e.code, -32000);
    assert.match(e.message, /upstream SSE stream ended/);
    return true;
  });
  await closed;
  assert.equal(log.events("upstream_stream_ended").length, 1);
  assert.equal(log.events("upstream_stream_ended")[0].inFlight, 1);
  await assert.rejects(client.callTool({ name: "echo", arguments: { text: "x" } }));
  assert.equal(up.received.filter((r) => r.method === "GET").length, 1, "the stream was not reopened");
});

test("an upstream that is not there: start() fails with a MeshError", async (t) => {
  const gone = await rawServer((fn) => t.after(fn), (_req, res) => res.writeHead(404).end());
  const { c } = connector((fn) => t.after(fn), `http://127.0.0.1:${gone.port}/sse`);
  const channel = c.open({ identity: ALICE, sessionId: "s" });
  await assert.rejects(channel.start(), (e: any) => e instanceof MeshError && /could not be opened/.test(e.message));
});

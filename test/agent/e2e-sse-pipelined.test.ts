/**
 * A pipelined SSE stream stalled for drain. HTTP/1.1 lets a client send a second request on a connection before the
 * first response ends; Node queues the second response without a socket, and when the connection closes that queued
 * ServerResponse never emits "close" (Node 20.20: only its request does). A relay that waits for the queued response's
 * "drain" or "close" would then wait forever and keep its upstream stream (and a pool connection) open.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type ServerResponse } from "node:http";
import { connect } from "node:tls";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rawSession } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import { loadIdentity } from "../../identity/store.ts";

const TD = "spiffe://example.org";
const EVENTS = 8192;
const PAYLOAD = "x".repeat(16 * 1024);

/** Just enough Streamable HTTP: initialize, the initialized notification, and a GET stream of EVENTS log messages. */
interface FloodUpstream {
  url: string;
  written: number;
  finished: boolean;
  /** Streams the upstream is still serving. */
  open(): number;
  close(): Promise<void>;
}

async function startFloodUpstream(): Promise<FloodUpstream> {
  const state = { written: 0, finished: false };
  const streams = new Set<ServerResponse>();
  const flood = async (res: ServerResponse) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (let i = 0; i < EVENTS && !res.destroyed; i++) {
      const ev = `event: message\ndata: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: { seq: i, text: PAYLOAD } } })}\n\n`;
      if (!res.write(ev)) await new Promise<void>((resolve) => {
        const done = () => {
          res.off("drain", done);
          res.off("close", done);
          resolve();
        };
        res.on("drain", done);
        res.on("close", done);
      });
      state.written += ev.length;
    }
    if (!res.destroyed) {
      state.finished = true;
      res.end();
    }
  };
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    if (req.method === "GET") {
      streams.add(res);
      res.on("close", () => streams.delete(res));
      void flood(res);
      return;
    }
    if (req.method === "DELETE") return void res.writeHead(200).end();
    const msg = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (msg.method === "initialize") {
      res.writeHead(200, { "content-type": "application/json", "mcp-session-id": "flood-session" });
      res.end(JSON.stringify({ jsonrpc: "2.0", id: msg.id, result: { protocolVersion: msg.params.protocolVersion, capabilities: { logging: {} }, serverInfo: { name: "flood", version: "1" } } }));
      return;
    }
    res.writeHead(202).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return Object.assign(state, {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/mcp`,
    open: () => streams.size,
    async close() {
      for (const r of streams) r.destroy();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  });
}

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: FloodUpstream;
let agent: AgentProcess;
let alice: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startFloodUpstream();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/pipelined", { kind: "agent" });
  alice = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ clients: [`${TD}/team-a/*`], tools: ["*"] }],
    pinning: { file: join(mesh.dir, "pins-pipelined.json") },
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("a client that pipelines two SSE streams and goes away: the agent closes both upstream streams", { timeout: 180_000 }, async () => {
  const f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  const s1 = await rawSession(f, agent.url, "2025-06-18");
  const s2 = await rawSession(f, agent.url, "2025-06-18");
  const id = loadIdentity(alice);
  const u = new URL(agent.url);
  const sock = connect({ host: u.hostname, port: Number(u.port), key: id.keyPem, cert: id.certPem, ca: id.rootsPem });
  cleanups.add(() => sock.destroy());
  await new Promise<void>((resolve, reject) => sock.once("secureConnect", resolve).once("error", reject));
  sock.pause(); // reads nothing: the first stream stalls, the second is queued behind it
  const get = (sid: string) => `GET ${u.pathname} HTTP/1.1\r\nhost: ${u.host}\r\naccept: text/event-stream\r\nmcp-session-id: ${sid}\r\nmcp-protocol-version: 2025-06-18\r\n\r\n`;
  sock.write(get(s1.sid) + get(s2.sid));
  await until(() => up.open() === 2, "both streams open upstream");
  // Let both relays fill what they may (the second into its queued response) and stall.
  let last = -1;
  while (up.written !== last) {
    last = up.written;
    await new Promise((r) => setTimeout(r, 2000));
  }
  assert.equal(up.finished, false);
  sock.destroy();
  await until(() => up.open() === 0, "the agent to close every upstream stream of the departed client", 30_000);
});

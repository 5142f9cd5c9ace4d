/**
 * End to end: faults around the agent. An upstream that is down, one that resets every connection, one that never
 * answers (timeout), a client that goes away before the upstream answers (its upstream request is aborted), a slow
 * tool whose call the client cancels (notifications/cancelled reaches the server), SIGTERM while a call is in flight
 * (drained, then a clean exit), and a churn of 1 500 connections with no file-descriptor or memory growth in the
 * agent process.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createTcpServer, type Server as TcpServer } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, rawPost, rpc } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import { freePort } from "../helpers/ports.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let agentDir: string;
let alice: string;

/** A real SDK server with a `sleep` tool that notices cancellation. */
interface SlowUpstream {
  url: string;
  methods: string[];
  started: number;
  cancelled: number;
  finished: number;
  close(): Promise<void>;
}

async function startSlowUpstream(): Promise<SlowUpstream> {
  const state = { methods: [] as string[], started: 0, cancelled: 0, finished: 0 };
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const build = () => {
    const server = new McpServer({ name: "slow", version: "1.0.0" });
    server.registerTool("sleep", { description: "Sleeps", inputSchema: { ms: z.number().int().min(0).max(60_000) } }, async ({ ms }, extra) => {
      state.started++;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        extra.signal.addEventListener("abort", () => {
          clearTimeout(t);
          state.cancelled++;
          resolve();
        });
      });
      state.finished++;
      return { content: [{ type: "text", text: `slept ${ms}` }] };
    });
    return server;
  };
  const http: Server = createHttpServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const parsed = body ? JSON.parse(body) : undefined;
    for (const m of Array.isArray(parsed) ? parsed : parsed ? [parsed] : []) if (typeof m?.method === "string") state.methods.push(m.method);
    const sid = req.headers["mcp-session-id"];
    let t = typeof sid === "string" ? transports.get(sid) : undefined;
    if (!t) {
      const nt: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(), onsessioninitialized: (id) => void transports.set(id, nt) });
      await build().connect(nt);
      t = nt;
    }
    await t.handleRequest(req, res, parsed);
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", () => resolve()));
  return Object.assign(state, {
    url: `http://127.0.0.1:${(http.address() as { port: number }).port}/mcp`,
    async close() {
      for (const t of transports.values()) await t.close().catch(() => {});
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
    },
  });
}

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  agentDir = await mesh.issue("agents/faults", { kind: "agent" });
  alice = await mesh.issue("team-a/alice");
});

after(() => cleanups.run());

async function agentFor(url: string, extra: Record<string, unknown> = {}): Promise<AgentProcess> {
  const a = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url, timeout: "2s" },
    rules: [{ clients: [`${TD}/team-a/*`], tools: ["*"] }],
    pinning: { file: join(mesh.dir, `pins-faults-${Math.random().toString(16).slice(2)}.json`) },
    ...extra,
  });
  cleanups.add(() => a.stop());
  return a;
}

async function initializeVia(a: AgentProcess) {
  const f = createMeshFetch(alice);
  try {
    return await rawPost(f, a.url, rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "faults", version: "1" } }));
  } finally {
    await f.close();
  }
}

test("upstream down: a clear 502 JSON-RPC error, again and again, and the agent keeps running", async () => {
  const a = await agentFor(`http://127.0.0.1:${await freePort()}/mcp`);
  for (let i = 0; i < 3; i++) {
    const r = await initializeVia(a);
    assert.equal(r.status, 502);
    assert.equal(r.messages[0].error.code, -32000);
    assert.match(r.messages[0].error.message, /Upstream MCP server unavailable/);
    assert.equal(typeof r.messages[0].id, "number", "the error answers the request by its id");
  }
  assert.equal(a.child.exitCode, null);
});

test("upstream resetting every connection: 502, and the agent keeps running", async () => {
  const rst: TcpServer = createTcpServer((s) => s.on("data", () => s.resetAndDestroy()));
  await new Promise<void>((resolve) => rst.listen(0, "127.0.0.1", () => resolve()));
  cleanups.add(() => new Promise<void>((resolve) => rst.close(() => resolve())));
  const a = await agentFor(`http://127.0.0.1:${(rst.address() as { port: number }).port}/mcp`);
  for (let i = 0; i < 3; i++) {
    const r = await initializeVia(a);
    assert.equal(r.status, 502, JSON.stringify(r.messages));
    assert.equal(r.messages[0].error.code, -32000);
  }
  assert.equal(a.child.exitCode, null);
});

test("upstream that never answers: 504 after upstream.timeout, and the agent keeps running", async () => {
  const hang: Server = createHttpServer(() => {});
  await new Promise<void>((resolve) => hang.listen(0, "127.0.0.1", () => resolve()));
  cleanups.add(
    () =>
      new Promise<void>((resolve) => {
        hang.close(() => resolve());
        hang.closeAllConnections();
      }),
  );
  const a = await agentFor(`http://127.0.0.1:${(hang.address() as { port: number }).port}/mcp`);
  const r = await initializeVia(a);
  assert.equal(r.status, 504);
  assert.equal(r.messages[0].error.code, -32000);
  assert.match(r.messages[0].error.message, /timed out/);
  assert.equal(a.child.exitCode, null);
});

test("a client that goes away before the upstream answers: the agent aborts its upstream request", { timeout: 45_000 }, async () => {
  // The upstream never answers; it only notes each request and when its connection from the agent closes. With an
  // upstream timeout of 120 s, only the client's disconnect can close it within the test's timeout.
  const seen: Array<{ method: string; closed: Promise<void> }> = [];
  const hang: Server = createHttpServer((req) => {
    const closed = new Promise<void>((resolve) => req.socket.once("close", () => resolve()));
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => seen.push({ method: (JSON.parse(body) as { method: string }).method, closed }));
  });
  await new Promise<void>((resolve) => hang.listen(0, "127.0.0.1", () => resolve()));
  cleanups.add(
    () =>
      new Promise<void>((resolve) => {
        hang.close(() => resolve());
        hang.closeAllConnections();
      }),
  );
  const a = await agentFor(`http://127.0.0.1:${(hang.address() as { port: number }).port}/mcp`, { upstream: { url: `http://127.0.0.1:${(hang.address() as { port: number }).port}/mcp`, timeout: "120s" } });
  const f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  const ac = new AbortController();
  const pending = f(a.url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
    body: JSON.stringify(rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "faults", version: "1" } })),
    signal: ac.signal,
  });
  while (seen.length === 0) await new Promise((r) => setTimeout(r, 20));
  assert.equal(seen[0].method, "initialize");
  ac.abort();
  await assert.rejects(pending);
  await seen[0].closed; // the agent dropped its upstream request: without the abort this waits for the 120 s timeout
  assert.equal(a.child.exitCode, null);
});

test("a slow call the client cancels: notifications/cancelled reaches the server and the tool stops", async () => {
  const up = await startSlowUpstream();
  cleanups.add(() => up.close());
  const a = await agentFor(up.url);
  const c = await connectClient(a.url, alice);
  try {
    const ac = new AbortController();
    const call = c.client.callTool({ name: "sleep", arguments: { ms: 30_000 } }, undefined, { signal: ac.signal, timeout: 120_000 });
    while (up.started === 0) await new Promise((r) => setTimeout(r, 50));
    ac.abort();
    await assert.rejects(call);
    while (up.cancelled === 0) await new Promise((r) => setTimeout(r, 50));
    assert.ok(up.methods.includes("notifications/cancelled"), JSON.stringify(up.methods));
    const ok = await c.client.callTool({ name: "sleep", arguments: { ms: 1 } });
    assert.deepEqual(ok.content, [{ type: "text", text: "slept 1" }]);
  } finally {
    await c.close();
  }
});

test("SIGTERM under load: in-flight calls finish, new connections are refused, the process exits 0", async () => {
  const up = await startSlowUpstream();
  cleanups.add(() => up.close());
  const a = await agentFor(up.url);
  const clients = await Promise.all([0, 1, 2].map(() => connectClient(a.url, alice)));
  cleanups.add(() => Promise.all(clients.map((c) => c.close())));
  const base = up.started;
  const calls = clients.map((c) => c.client.callTool({ name: "sleep", arguments: { ms: 1500 } }, undefined, { timeout: 120_000 }));
  while (up.started < base + 3) await new Promise((r) => setTimeout(r, 50));
  const exited = new Promise<number | null>((resolve) => a.child.once("exit", (code) => resolve(code)));
  a.child.kill("SIGTERM");
  const results = await Promise.all(calls);
  for (const r of results) assert.deepEqual(r.content, [{ type: "text", text: "slept 1500" }]);
  assert.equal(await exited, 0);
  await a.waitForLog((l) => l.event === "draining");
  await a.waitForLog((l) => l.event === "stopped");
  const refused = await new Promise<string>((resolve) => {
    const s = tlsConnect({ host: "127.0.0.1", port: Number(new URL(a.url).port), rejectUnauthorized: false });
    s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    s.on("secureConnect", () => {
      s.destroy();
      resolve("connected");
    });
  });
  assert.equal(refused, "ECONNREFUSED");
});

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

test("a churn of 1 500 mTLS connections leaves no file descriptors behind and no memory growth", async () => {
  const up = await startSlowUpstream();
  cleanups.add(() => up.close());
  const a = await agentFor(up.url);
  const pid = a.child.pid!;
  const ca = readFileSync(join(alice, "ca.pem"));
  const cert = readFileSync(join(alice, "cert.pem"));
  const key = readFileSync(join(alice, "key.pem"));
  const port = Number(new URL(a.url).port);
  const once = () =>
    new Promise<string>((resolve) => {
      let got = "";
      const s = tlsConnect({ host: "127.0.0.1", port, ca, cert, key, checkServerIdentity: () => undefined });
      s.on("secureConnect", () => s.write("GET /churn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
      s.on("data", (d) => (got += d));
      s.on("error", () => {});
      s.on("close", () => resolve(got));
    });
  const churn = async (n: number) => {
    let answered = 0;
    for (let i = 0; i < n; i += 25) {
      const batch = await Promise.all(Array.from({ length: Math.min(25, n - i) }, once));
      answered += batch.filter((g) => g.startsWith("HTTP/1.1 404")).length;
    }
    return answered;
  };
  assert.equal(await churn(200), 200, "warm-up");
  const settle = async () => {
    // Closed sockets are released asynchronously; wait until the count stops moving (bounded).
    let last = -1;
    for (let i = 0; i < 50 && fdCount(pid) !== last; i++) {
      last = fdCount(pid);
      await new Promise((r) => setTimeout(r, 200));
    }
    return fdCount(pid);
  };
  const fdBefore = await settle();
  const rssBefore = rssBytes(pid);
  assert.equal(await churn(1500), 1500);
  const fdAfter = await settle();
  const rssAfter = rssBytes(pid);
  assert.ok(fdAfter <= fdBefore + 4, `file descriptors grew from ${fdBefore} to ${fdAfter}`);
  assert.ok(rssAfter - rssBefore < 80 * 1024 * 1024, `RSS grew by ${Math.round((rssAfter - rssBefore) / 1048576)} MiB`);
  assert.equal(a.child.exitCode, null);
});

/**
 * The documented library entry (`import … from "mcpmesh"`, package.json "exports" → lib/index.ts) works with the SDK
 * client: createMeshFetch as a Streamable HTTP transport's fetch reaches a real agent, and `expect` pins its identity.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { Writable } from "node:stream";
import { createMeshFetch, startConnect, MeshWebSocketTransport, RenewalScheduler, PeerRejectedError } from "mcpmesh";
import { createMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { freePort } from "../helpers/ports.ts";
import { rejection } from "../helpers/e2e.ts";
import { createLogger } from "../../lib/log.ts";

const TD = "spiffe://example.org";

test("the library entry point: createMeshFetch from \"mcpmesh\" as the SDK transport's fetch", async () => {
  assert.equal(typeof startConnect, "function");
  assert.equal(typeof MeshWebSocketTransport, "function");
  assert.equal(typeof RenewalScheduler, "function");
  const mesh = await createMesh();
  after(() => mesh.close());
  const up = await startMcpServer();
  after(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo"] }],
  });
  after(() => agent.stop());

  const fetch = createMeshFetch(alice, { expect: `${TD}/agents/weather` });
  after(() => fetch.close());
  const client = new Client({ name: "library", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(agent.url), { fetch }));
  after(() => client.close());
  assert.deepEqual((await client.listTools()).tools.map((t) => t.name), ["echo"]);
  assert.deepEqual((await client.callTool({ name: "echo", arguments: { text: "lib" } })).content, [{ type: "text", text: "lib" }]);

  const wrong = createMeshFetch(alice, { expect: `${TD}/agents/payments` });
  after(() => wrong.close());
  const err = await wrong(agent.url, { method: "POST", body: "{}" }).then(() => null, (e: Error) => e);
  assert.ok(err, "a fetch to the wrong agent must fail");
  assert.ok(err.cause instanceof PeerRejectedError, String(err.cause));
  assert.match((err.cause as Error).message, /agent is spiffe:\/\/example\.org\/agents\/weather, expected spiffe:\/\/example\.org\/agents\/payments/);
});

/** startConnect as a library, its local side an in-memory transport, its log captured. */
async function libraryConnect(url: string, identityDir: string, reconnect: { minDelayMs: number; maxDelayMs: number; requestTimeoutMs: number }) {
  const lines: any[] = [];
  const logger = createLogger({ name: "connect-lib", level: "debug", destination: new Writable({ write: (chunk, _e, cb) => (lines.push(JSON.parse(String(chunk))), cb()) }) });
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  const conn = await startConnect({ url, identityDir, transport: "streamable-http", local: serverSide, renew: false, logger, reconnect });
  const client = new Client({ name: "library-connect", version: "1.0.0" });
  return { conn, client, clientSide, lines };
}

test("startConnect: while the agent is unreachable requests wait with backoff (no spinning), then fail with -32001", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const alice = await mesh.issue("team-a/alice");
  const port = await freePort();
  const { conn, client, clientSide, lines } = await libraryConnect(`https://127.0.0.1:${port}/mcp`, alice, { minDelayMs: 20, maxDelayMs: 200, requestTimeoutMs: 1500 });
  after(() => conn.close());
  const t0 = Date.now();
  const e = await rejection(client.connect(clientSide));
  assert.equal(e.code, -32001, e.message);
  assert.match(e.message, /unreachable for 2 s/);
  assert.ok(Date.now() - t0 >= 1400);
  const attempts = lines.filter((l) => l.event === "agent_connect_failed");
  assert.ok(attempts.length >= 3 && attempts.length < 40, `${attempts.length} attempts in ${Date.now() - t0} ms`);
  assert.ok(attempts.every((l) => /ECONNREFUSED/.test(l.reason)));
});

test("startConnect: an initialize sent before the agent is up completes once it starts", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const up = await startMcpServer();
  after(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const port = await freePort();
  const { conn, client, clientSide, lines } = await libraryConnect(`https://127.0.0.1:${port}/mcp`, alice, { minDelayMs: 50, maxDelayMs: 500, requestTimeoutMs: 120_000 });
  after(() => conn.close());
  const connecting = client.connect(clientSide);
  while (lines.filter((l) => l.event === "agent_connect_failed").length < 2) await new Promise((r) => setTimeout(r, 20));
  const agent = await startAgentProcess(mesh.dir, {
    listen: `127.0.0.1:${port}`,
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo"] }],
  });
  after(() => agent.stop());
  await connecting;
  after(() => client.close());
  assert.deepEqual((await client.callTool({ name: "echo", arguments: { text: "late" } })).content, [{ type: "text", text: "late" }]);
  assert.equal(conn.transport, "streamable-http");
});

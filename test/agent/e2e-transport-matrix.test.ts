/**
 * The transport matrix: every downstream transport (Streamable HTTP, legacy SSE, WebSocket) in front of every upstream
 * transport (Streamable HTTP, legacy SSE, stdio), each pair driven by the real SDK client through the real
 * `mcpmesh agent run` to a real SDK McpServer, with the same script: list (filtered), allowed call, denied call,
 * invalid arguments, a progress-reporting call and a server notification (a logging message). The normalized
 * transcripts must be identical across all nine pairs, and nothing denied may reach any upstream.
 * Then: each protocol version negotiated end to end through one pair per downstream transport.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { LoggingMessageNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startSseMcpServer } from "../helpers/sse-server.ts";
import { readStdioRecord, stdioServerCommand } from "../helpers/stdio-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rawSession, rejection, rpc, call } from "../helpers/e2e.ts";
import { OneMessagePerTask } from "../helpers/one-message-per-task.ts";
import { MeshWebSocketTransport } from "../../identity/ws-transport.ts";
import { rawSse, rawWs } from "../helpers/raw-transports.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const DOWNSTREAMS = ["streamable-http", "sse", "ws"] as const;
const UPSTREAMS = ["http", "sse", "stdio"] as const;
type Down = (typeof DOWNSTREAMS)[number];
type Up = (typeof UPSTREAMS)[number];

const cleanups = new Cleanups();
let mesh: TestMesh;
let alice: string;
const agents = {} as Record<Up, AgentProcess>;
/** What each upstream received, as tool call names and raw bodies (to prove denied calls never arrived). */
const received = {} as Record<Up, () => { toolCalls: string[]; bodies: string[] }>;
const transcripts = new Map<string, unknown>();

const rules = [
  { id: "alice", clients: [`${TD}/team-a/*`], tools: ["echo", "add", "get-weather", "slow-count"] },
  { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
];

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  alice = await mesh.issue("team-a/alice");
  const agentDir = await mesh.issue("agents/matrix", { kind: "agent" });
  const http = await startMcpServer();
  cleanups.add(() => http.close());
  received.http = () => ({ toolCalls: http.received.flatMap((r) => r.toolCalls), bodies: http.received.map((r) => r.body) });
  const sse = await startSseMcpServer();
  cleanups.add(() => sse.close());
  received.sse = () => ({ toolCalls: sse.received.flatMap((r) => r.toolCalls), bodies: sse.received.map((r) => r.body) });
  const record = join(mesh.dir, "stdio-record.jsonl");
  received.stdio = () => {
    const r = readStdioRecord(record);
    return { toolCalls: r.toolCalls, bodies: r.messages.map((m) => JSON.stringify(m)) };
  };
  const upstreamCfg: Record<Up, Record<string, unknown>> = {
    http: { url: http.url },
    sse: { sse: sse.url },
    stdio: { command: stdioServerCommand(), env: { MCPMESH_TEST_RECORD: record } },
  };
  for (const up of UPSTREAMS) {
    agents[up] = await startAgentProcess(mesh.dir, {
      listen: "127.0.0.1:0",
      identity: agentDir,
      upstream: upstreamCfg[up],
      rules,
      pinning: { file: join(mesh.dir, `pins-${up}.json`) },
    });
    cleanups.add(() => agents[up].stop());
  }
});

after(() => cleanups.run());

function urlOf(up: Up, down: Down): string {
  const base = agents[up].url; // https://127.0.0.1:PORT/mcp
  if (down === "sse") return base.replace(/\/mcp$/, "/sse");
  if (down === "ws") return base.replace(/\/mcp$/, "/ws").replace(/^https:/, "wss:");
  return base;
}

async function connect(up: Up, down: Down): Promise<{ client: Client; close(): Promise<void> }> {
  const f = createMeshFetch(alice);
  const url = new URL(urlOf(up, down));
  const transport: Transport =
    down === "streamable-http" ? new StreamableHTTPClientTransport(url, { fetch: f })
    : down === "sse" ? new OneMessagePerTask(new SSEClientTransport(url, { fetch: f }))
    : new OneMessagePerTask(new MeshWebSocketTransport(url, alice));
  const client = new Client({ name: "matrix", version: "1.0.0" });
  await client.connect(transport);
  return {
    client,
    async close() {
      await client.close().catch(() => {});
      await f.close();
    },
  };
}

/** The scripted session; returns what the client saw, normalized (no ids, no session ids, no timing). */
async function script(client: Client): Promise<unknown> {
  const logs: string[] = [];
  let logged!: () => void;
  const logSeen = new Promise<void>((r) => (logged = r));
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
    logs.push(String(n.params.data));
    logged();
  });
  const tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const echo = await client.callTool({ name: "echo", arguments: { text: "hello matrix" } });
  const denied = await rejection(client.callTool({ name: "delete-file", arguments: { path: "/etc/passwd" } }));
  const invalid = await client.callTool({ name: "add", arguments: { a: "not-a-number", b: 1 } });
  const progress: number[] = [];
  const counted = await client.callTool({ name: "slow-count", arguments: { steps: 3 } }, undefined, { onprogress: (p) => progress.push(p.progress) });
  await Promise.race([logSeen, new Promise((_, reject) => setTimeout(() => reject(new Error("no logging notification within 20 s")), 20_000).unref())]);
  return {
    version: client.getServerVersion()?.name,
    tools,
    echo: echo.content,
    denied: { code: denied.code, message: denied.message },
    invalid: { isError: invalid.isError, content: invalid.content },
    progress,
    counted: counted.content,
    logs,
  };
}

for (const up of UPSTREAMS) {
  for (const down of DOWNSTREAMS) {
    test(`${down} → agent → ${up}: the scripted session`, async () => {
      const c = await connect(up, down);
      try {
        transcripts.set(`${down}×${up}`, await script(c.client));
        if (process.env.MATRIX_DEBUG) console.log(`${down}×${up}`, JSON.stringify(transcripts.get(`${down}×${up}`)));
      } finally {
        await c.close();
      }
      // The agent audited the denial with this downstream's transport name.
      const line = await agents[up].waitForLog((l) => l.log === "audit" && l.tool === "delete-file" && l.transport === down);
      assert.equal(line.decision, "deny");
      assert.equal(line.rule, "no-delete");
    });
  }
}

test("every pair produced the same transcript, and it is the right one", () => {
  const reference = transcripts.get("streamable-http×http");
  assert.ok(reference, "the reference pair ran");
  assert.deepEqual(reference, {
    version: "test-upstream",
    tools: ["add", "echo", "get-weather", "slow-count"],
    echo: [{ type: "text", text: "hello matrix" }],
    denied: { code: -32602, message: "MCP error -32602: Unknown tool: delete-file" },
    invalid: { isError: true, content: [{ type: "text", text: (reference as any).invalid.content[0].text }] },
    progress: [1, 2, 3],
    counted: [{ type: "text", text: "counted 3" }],
    logs: ["counted to 3"],
  });
  assert.match((reference as any).invalid.content[0].text, /^Invalid arguments for tool add: /);
  for (const up of UPSTREAMS) {
    for (const down of DOWNSTREAMS) {
      const key = `${down}×${up}`;
      assert.ok(transcripts.has(key), `${key} did not complete`);
      assert.deepEqual(transcripts.get(key), reference, key);
    }
  }
});

test("nothing denied reached any upstream: no delete-file call, no invalid arguments", () => {
  for (const up of UPSTREAMS) {
    const r = received[up]();
    assert.ok(r.toolCalls.includes("echo"), `${up} upstream saw the allowed calls`);
    assert.ok(!r.toolCalls.includes("delete-file"), `${up}: ${JSON.stringify(r.toolCalls)}`);
    assert.ok(!r.bodies.some((b) => b.includes("not-a-number")), `${up}: invalid arguments reached the upstream`);
  }
});

// ---------------------------------------------------------------------------------------------------------------------
// protocol versions, end to end

const VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/** One raw session at `version` over a downstream transport, to the given upstream: negotiated, then a call. */
async function versionCheck(up: Up, down: Down, version: string): Promise<void> {
  const init = rpc("initialize", { protocolVersion: version, capabilities: {}, clientInfo: { name: "raw", version: "1" } });
  const echo = call("echo", { text: `v${version}` });
  const bad = call("add", { a: "x", b: 1 });
  const f = createMeshFetch(alice);
  try {
    let answers: { init: any; echo: any; bad: any };
    if (down === "streamable-http") {
      const s = await rawSession(f, urlOf(up, down), version); // asserts the negotiated version itself
      answers = { init: { result: { protocolVersion: s.version } }, echo: (await s.post(echo)).messages.find((m) => m.id === echo.id), bad: (await s.post(bad)).messages.find((m) => m.id === bad.id) };
    } else if (down === "sse") {
      const s = await rawSse(urlOf(up, down), f);
      try {
        assert.equal((await s.post(init)).status, 202);
        const i = await s.inbox.reply(init.id);
        assert.equal((await s.post({ jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);
        await s.post(echo);
        await s.post(bad);
        answers = { init: i, echo: await s.inbox.reply(echo.id), bad: await s.inbox.reply(bad.id) };
      } finally {
        s.close();
      }
    } else {
      const s = await rawWs(urlOf(up, down), alice);
      try {
        s.send(init);
        const i = await s.inbox.reply(init.id);
        s.send({ jsonrpc: "2.0", method: "notifications/initialized" });
        s.send(echo);
        s.send(bad);
        answers = { init: i, echo: await s.inbox.reply(echo.id), bad: await s.inbox.reply(bad.id) };
      } finally {
        await s.close();
      }
    }
    assert.equal(answers.init.result?.protocolVersion, version, `${down}×${up} ${version}: ${JSON.stringify(answers.init)}`);
    assert.deepEqual(answers.echo.result?.content, [{ type: "text", text: `v${version}` }]);
    // The agent tracked the negotiated version: invalid arguments are a tool error from 2025-11-25 on, -32602 before.
    if (version >= "2025-11-25") assert.equal(answers.bad.result?.isError, true, JSON.stringify(answers.bad));
    else assert.equal(answers.bad.error?.code, -32602, JSON.stringify(answers.bad));
  } finally {
    await f.close();
  }
}

for (const [down, up] of [["sse", "http"], ["ws", "http"], ["streamable-http", "sse"], ["sse", "sse"], ["ws", "stdio"]] as [Down, Up][]) {
  test(`protocol versions ${VERSIONS.join(", ")} negotiated end to end: ${down} → ${up}`, async () => {
    for (const v of VERSIONS) await versionCheck(up, down, v);
  });
}

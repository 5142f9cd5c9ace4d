/**
 * End to end: hostile and malformed JSON-RPC against the real agent. Every entry of BAD_INPUTS is POSTed on a live
 * session; each must get the spec-conformant error in the table, NOTHING may reach the upstream (checked on the real
 * SDK server's record of every request), and a good call right after must still work.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, rawSession, readReply, summary, type RawReply, type RawSession } from "../helpers/e2e.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let f: MeshFetch;
let s06: RawSession;
let s03: RawSession;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/bad-input", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    limits: { maxBodyBytes: 65_536, maxArgumentBytes: 32_768, maxStringLength: 1000, maxDepth: 16 },
    rules: [
      { clients: ["spiffe://example.org/team-a/*"], tools: ["echo", "add"], prompts: ["*"], resources: ["file:///pub/**"] },
      { clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
    pinning: { file: `${mesh.dir}/pins-bad.json` },
  });
  cleanups.add(() => agent.stop());
  f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  s06 = await rawSession(f, agent.url, "2025-06-18");
  s03 = await rawSession(f, agent.url, "2025-03-26");
  // The catalogs are known, so a refused tools/call cannot even make the agent list tools upstream.
  for (const s of [s06, s03]) assert.equal((await s.post({ jsonrpc: "2.0", id: 1, method: "tools/list", params: {} })).status, 200);
});

after(() => cleanups.run());

const deep = (n: number) => "[".repeat(n) + "]".repeat(n);
const req = (extra: string) => `{"jsonrpc":"2.0","id":7,${extra}}`;

interface Bad {
  name: string;
  body: string | Buffer;
  /** The session to send on (batches are legal only on 2025-03-26). */
  session?: "06" | "03";
  headers?: Record<string, string>;
  status: number;
  /** Expected JSON-RPC error code; for a batch, the codes its replies may carry. */
  code: number | number[];
  /** Expected reply id (default: null for unparseable or unanswerable messages, else 7). */
  id?: number | string | null;
}

/** The bad inputs. Their count is quoted in docs/security.md. */
export const BAD_INPUTS: Bad[] = [
  // not JSON
  { name: "plain text", body: "hello", status: 400, code: -32700 },
  { name: "empty body", body: "", status: 400, code: -32700 },
  { name: "truncated object", body: '{"jsonrpc":"2.0","id":1,', status: 400, code: -32700 },
  { name: "trailing garbage", body: '{"jsonrpc":"2.0","id":1,"method":"ping"} x', status: 400, code: -32700 },
  { name: "invalid UTF-8", body: Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), status: 400, code: -32700 },
  { name: "single quotes", body: "{'jsonrpc':'2.0','id':1,'method':'ping'}", status: 400, code: -32700 },
  { name: "NaN literal", body: req('"method":"tools/call","params":{"name":"add","arguments":{"a":NaN,"b":1}}'), status: 400, code: -32700 },
  // not an object
  { name: "number", body: "42", status: 400, code: -32600 },
  { name: "string", body: '"ping"', status: 400, code: -32600 },
  { name: "null", body: "null", status: 400, code: -32600 },
  { name: "true", body: "true", status: 400, code: -32600 },
  // wrong jsonrpc version
  { name: "jsonrpc 1.0", body: '{"jsonrpc":"1.0","id":7,"method":"ping"}', status: 400, code: -32600, id: 7 },
  { name: "jsonrpc missing", body: '{"id":7,"method":"ping"}', status: 400, code: -32600, id: 7 },
  { name: "jsonrpc as number", body: '{"jsonrpc":2.0,"id":7,"method":"ping"}', status: 400, code: -32600, id: 7 },
  // ids
  { name: "id 1e400 (Infinity)", body: '{"jsonrpc":"2.0","id":1e400,"method":"ping"}', status: 400, code: -32600 },
  { name: "id beyond 2^53", body: '{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}', status: 400, code: -32600 },
  { name: "id fraction", body: '{"jsonrpc":"2.0","id":1.5,"method":"ping"}', status: 400, code: -32600 },
  { name: "id 10 kB string", body: `{"jsonrpc":"2.0","id":"${"x".repeat(10_000)}","method":"ping"}`, status: 400, code: -32600 },
  { name: "id object", body: '{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', status: 400, code: -32600 },
  { name: "id array", body: '{"jsonrpc":"2.0","id":[1],"method":"ping"}', status: 400, code: -32600 },
  { name: "id null on a request", body: '{"jsonrpc":"2.0","id":null,"method":"ping"}', status: 400, code: -32600 },
  // deep nesting
  { name: "32 000 nested arrays (within the body limit)", body: deep(32_000), status: 400, code: -32600 },
  { name: "nesting inside params", body: req(`"method":"tools/call","params":{"name":"echo","arguments":{"text":${deep(20_000)}}}`), status: 400, code: -32600 },
  { name: "100 000 levels over the body limit", body: deep(100_000), status: 413, code: -32600 },
  { name: "nested objects, 70 levels", body: req(`"method":"ping","params":${'{"a":'.repeat(70)}1${"}".repeat(70)}`), status: 400, code: -32600 },
  { name: "arguments deeper than limits.maxDepth", body: req(`"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","y":${'{"a":'.repeat(20)}1${"}".repeat(20)}}}`), status: 200, code: -32602, id: 7 },
  // prototype keys
  { name: "__proto__ in params", body: req('"method":"tools/call","params":{"__proto__":{"name":"delete-file"},"name":"echo","arguments":{"text":"x"}}'), status: 400, code: -32600 },
  { name: "__proto__ in arguments", body: req('"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","__proto__":{"isAdmin":true}}}'), status: 400, code: -32600 },
  { name: "escaped __proto__ key", body: req('"method":"ping","params":{"\\u005f_proto__":{}}'), status: 400, code: -32600 },
  { name: "method constructor", body: req('"method":"constructor"'), status: 200, code: -32601, id: 7 },
  { name: "method __proto__", body: req('"method":"__proto__"'), status: 200, code: -32601, id: 7 },
  { name: "tool named constructor", body: req('"method":"tools/call","params":{"name":"constructor","arguments":{}}'), status: 200, code: -32602, id: 7 },
  { name: "tool named __proto__", body: req('"method":"tools/call","params":{"name":"__proto__","arguments":{}}'), status: 200, code: -32602, id: 7 },
  { name: "tool named toString", body: req('"method":"tools/call","params":{"name":"toString","arguments":{}}'), status: 200, code: -32602, id: 7 },
  // duplicate keys
  { name: "duplicate tool name (allowed, then denied)", body: req('"method":"tools/call","params":{"name":"echo","name":"delete-file","arguments":{"path":"/"}}'), status: 400, code: -32600 },
  { name: "duplicate method", body: '{"jsonrpc":"2.0","id":7,"method":"ping","method":"tools/call"}', status: 400, code: -32600 },
  { name: "duplicate id", body: '{"jsonrpc":"2.0","id":7,"id":8,"method":"ping"}', status: 400, code: -32600 },
  { name: "duplicate key via escape", body: req('"method":"tools/call","params":{"name":"echo","n\\u0061me":"delete-file","arguments":{}}'), status: 400, code: -32600 },
  { name: "duplicate argument key", body: req('"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","text":"b"}}'), status: 400, code: -32600 },
  // oversized strings
  { name: "body over limits.maxBodyBytes", body: req(`"method":"tools/call","params":{"name":"echo","arguments":{"text":"${"x".repeat(70_000)}"}}`), status: 413, code: -32600, id: null },
  { name: "argument string over limits.maxStringLength", body: req(`"method":"tools/call","params":{"name":"echo","arguments":{"text":"${"x".repeat(5_000)}"}}`), status: 200, code: -32602, id: 7 },
  { name: "argument key over limits.maxStringLength", body: req(`"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","${"k".repeat(5_000)}":1}}`), status: 200, code: -32602, id: 7 },
  { name: "method name of 10 kB", body: req(`"method":"${"m".repeat(10_000)}"`), status: 400, code: -32600, id: 7 },
  { name: "tool name of 10 kB", body: req(`"method":"tools/call","params":{"name":"${"t".repeat(10_000)}","arguments":{}}`), status: 200, code: -32602, id: 7 },
  // batches
  { name: "batch on a 2025-06-18 session", body: '[{"jsonrpc":"2.0","id":7,"method":"ping"}]', status: 400, code: -32600 },
  { name: "empty batch", body: "[]", session: "03", status: 400, code: -32600 },
  { name: "batch hiding a denied call", session: "03", body: `[${req('"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}')},{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete-file","arguments":{"path":"/"}}}]`, status: 200, code: [-32600, -32602] },
  { name: "batch of junk", session: "03", body: "[1,2,3]", status: 200, code: -32600 },
  { name: "batch with initialize", session: "03", body: `[${req('"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"x","version":"1"}}')}]`, status: 200, code: -32600 },
  { name: "nested batch", session: "03", body: '[[{"jsonrpc":"2.0","id":7,"method":"ping"}]]', status: 200, code: -32600 },
  // unknown and unauthorized methods
  { name: "unknown method", body: req('"method":"foo/bar"'), status: 200, code: -32601, id: 7 },
  { name: "near miss tools/cal", body: req('"method":"tools/cal","params":{"name":"echo"}'), status: 200, code: -32601, id: 7 },
  { name: "server-side method from a client", body: req('"method":"sampling/createMessage","params":{}'), status: 200, code: -32601, id: 7 },
  { name: "empty method", body: req('"method":""'), status: 400, code: -32600, id: 7 },
  { name: "method not a string", body: req('"method":42'), status: 400, code: -32600, id: 7 },
  // notifications that pretend to be requests, and the reverse
  { name: "tools/call without id", body: '{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}', status: 400, code: -32600 },
  { name: "denied tools/call without id", body: '{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete-file","arguments":{"path":"/"}}}', status: 400, code: -32600 },
  { name: "resources/read without id", body: '{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"file:///etc/passwd"}}', status: 400, code: -32600 },
  { name: "notification with an id", body: req('"method":"notifications/initialized"'), status: 400, code: -32600, id: 7 },
  // shapes
  { name: "params array", body: req('"method":"tools/call","params":["echo"]'), status: 400, code: -32600, id: 7 },
  { name: "params string", body: req('"method":"ping","params":"x"'), status: 400, code: -32600, id: 7 },
  { name: "request with result", body: req('"method":"ping","result":{}'), status: 400, code: -32600, id: 7 },
  { name: "response with result and error", body: '{"jsonrpc":"2.0","id":7,"result":{},"error":{"code":1,"message":"x"}}', status: 400, code: -32600, id: 7 },
  { name: "response with an object id", body: '{"jsonrpc":"2.0","id":{},"result":{}}', status: 400, code: -32600 },
  { name: "neither request nor response", body: req('"foo":1'), status: 400, code: -32600, id: 7 },
  { name: "tool name not a string", body: req('"method":"tools/call","params":{"name":["echo"],"arguments":{}}'), status: 200, code: -32602, id: 7 },
  { name: "arguments an array", body: req('"method":"tools/call","params":{"name":"echo","arguments":["x"]}'), status: 200, code: -32602, id: 7 },
  { name: "resource traversal", body: req('"method":"resources/read","params":{"uri":"file:///pub/../etc/passwd"}'), status: 200, code: -32002, id: 7 },
  { name: "resource encoded traversal", body: req('"method":"resources/read","params":{"uri":"file:///pub/%2e%2e/etc/passwd"}'), status: 200, code: -32002, id: 7 },
  { name: "Mcp-Method header that lies", body: req('"method":"tools/call","params":{"name":"delete-file","arguments":{"path":"/"}}'), headers: { "mcp-method": "tools/list" }, status: 400, code: -32600 },
  // denied by policy
  { name: "denied tool", body: req('"method":"tools/call","params":{"name":"delete-file","arguments":{"path":"/"}}'), status: 200, code: -32602, id: 7 },
];

async function send(s: RawSession, body: string | Buffer, headers: Record<string, string> = {}): Promise<RawReply> {
  const res = await f(s.url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": s.sid, "mcp-protocol-version": s.version, ...headers },
    body: typeof body === "string" ? body : new Uint8Array(body),
  });
  return readReply(res);
}

test(`${BAD_INPUTS.length} bad inputs: each a spec-conformant error, nothing upstream, the agent keeps serving`, async () => {
  let good = 0;
  for (const bad of BAD_INPUTS) {
    const s = bad.session === "03" ? s03 : s06;
    const before = up.received.length;
    const r = await send(s, bad.body, bad.headers);
    const after = up.received.slice(before);
    assert.deepEqual(after, [], `${bad.name}: reached the upstream: ${summary(after)}`);
    assert.equal(r.status, bad.status, `${bad.name}: HTTP ${r.status} ${JSON.stringify(r.messages).slice(0, 300)}`);
    assert.ok(r.messages.length > 0, `${bad.name}: no JSON-RPC error in the reply`);
    for (const m of r.messages) {
      assert.equal(m.jsonrpc, "2.0", bad.name);
      assert.ok(!("result" in m && "error" in m), bad.name);
      if (bad.code === -32602 && m.result?.isError === true) continue; // 2025-11-25 style never applies on these sessions
      assert.ok([bad.code].flat().includes(m.error?.code), `${bad.name}: ${JSON.stringify(m).slice(0, 300)}`);
      assert.equal(typeof m.error.message, "string");
      if (!Array.isArray(r.json)) assert.equal(m.id, bad.id === undefined ? null : bad.id, `${bad.name}: reply id`);
    }
    // ... and the agent keeps serving: a good call right after.
    const ok = await s.post(call("echo", { text: `after ${bad.name}` }));
    assert.equal(ok.messages[0]?.result?.content?.[0]?.text, `after ${bad.name}`, `${bad.name}: the next good call failed: ${JSON.stringify(ok.messages).slice(0, 300)}`);
    good++;
  }
  assert.equal(good, BAD_INPUTS.length);
  assert.equal(agent.child.exitCode, null, "the agent is still running");
});

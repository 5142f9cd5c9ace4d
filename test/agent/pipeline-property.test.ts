/**
 * Property tests over the policy engine and the message pipeline.
 * - In process, many runs: generated rule sets and generated client messages through the real Gatekeeper (with a
 *   recorder standing in for the upstream: it gets exactly what the Gatekeeper says to forward). No message a deny rule
 *   names is ever forwarded; everything forwarded is allowed by the policy; no input throws; a filtered tools/list never
 *   contains a tool the caller may not call.
 * - The real agent binary, a bounded number of runs: generated bodies (random JSON, mutated calls, raw bytes) POSTed
 *   over mTLS; the SDK upstream never receives a denied tool, and the agent keeps answering.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseAgentConfig } from "../../agent/config.ts";
import { Policy } from "../../agent/policy.ts";
import { Gatekeeper, type Verdict } from "../../agent/gatekeeper.ts";
import { ArgumentValidator } from "../../agent/schema.ts";
import { PinStore, type Tool } from "../../agent/pinning.ts";
import { SessionTable } from "../../agent/session.ts";
import { silentLogger } from "../../lib/log.ts";
import { scanJson } from "../../agent/json-scan.ts";
import { classify } from "../../agent/jsonrpc.ts";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rawSession, summary, type RawSession } from "../helpers/e2e.ts";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const TOOLS = ["echo", "get-weather", "add", "delete-file", "drop-table", "tenant-report", "constructor", "__proto__"];
const CATALOG: Tool[] = TOOLS.map((name) => ({ name, inputSchema: { type: "object" } }) as Tool);
const IDS = [`${TD}/team-a/alice`, `${TD}/team-b/bob`, `${TD}/admin`, "spiffe://evil.org/team-a/alice", "not-an-id"];

const toolGlob = fc.constantFrom("*", "echo", "get-*", "delete-*", "drop-table", "add", "tenant-*", "constructor");
const clientPat = fc.constantFrom("*", `${TD}/team-a/*`, `${TD}/**`, `${TD}/admin`, `${TD}/team-b/bob`);
const ruleArb = fc.record({
  clients: fc.uniqueArray(clientPat, { minLength: 1, maxLength: 2 }),
  tools: fc.uniqueArray(toolGlob, { minLength: 1, maxLength: 3 }),
  effect: fc.constantFrom("allow", "allow", "deny"),
});

function buildGate(rules: unknown[]) {
  const cfg = parseAgentConfig({ listen: "127.0.0.1:0", identity: "/id", upstream: { url: "http://127.0.0.1:1/mcp" }, rules, trustDomains: ["example.org"] }, "/tmp");
  const policy = Policy.compile(cfg);
  const forwarded: unknown[] = [];
  const gate = new Gatekeeper({
    policy,
    validator: new ArgumentValidator(),
    pins: new PinStore({ mode: "tofu" }),
    tools: cfg.tools,
    limits: cfg.limits,
    audit: { record: () => {}, flush: async () => {} },
    logger: silentLogger(),
  });
  return { cfg, policy, gate, forwarded };
}

/** Literal deny rules the oracle understands without the policy engine: clients "*" and exact or prefix globs. */
function deniedByOracle(rules: { clients: string[]; tools: string[]; effect: string }[], tool: string): boolean {
  return rules.some((r) => r.effect === "deny" && r.clients.includes("*") && r.tools.some((g) => g === "*" || g === tool || (g.endsWith("*") && tool.startsWith(g.slice(0, -1)))));
}

const messageArb = fc.oneof(
  fc.record({ jsonrpc: fc.constant("2.0"), id: fc.integer(), method: fc.constant("tools/call"), params: fc.record({ name: fc.constantFrom(...TOOLS, "nope"), arguments: fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }) }) }),
  fc.record({ jsonrpc: fc.constant("2.0"), method: fc.constant("tools/call"), params: fc.record({ name: fc.constantFrom(...TOOLS) }) }),
  fc.record({ jsonrpc: fc.constantFrom("2.0", "1.0"), id: fc.oneof(fc.integer(), fc.string(), fc.constant(null)), method: fc.constantFrom("tools/call", "tools/list", "ping", "resources/read", "prompts/get", "foo", "notifications/cancelled"), params: fc.jsonValue({ maxDepth: 3 }) }),
  fc.jsonValue({ maxDepth: 4 }),
  fc.anything({ maxDepth: 3 }),
);

function sessionFor(id: string) {
  const s = new SessionTable().create(`s-${id}`, "sid", id, "2025-06-18");
  return s;
}

test("property: a tool a deny rule names is never forwarded; everything forwarded is allowed; nothing throws", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(ruleArb, { minLength: 1, maxLength: 5 }), fc.constantFrom(...IDS), fc.array(messageArb, { minLength: 1, maxLength: 8 }), async (rules, id, msgs) => {
      const { policy, gate } = buildGate(rules);
      const session = sessionFor(id);
      gate.catalog(session, { id, notBefore: Date.now() }, CATALOG);
      const ctx = { caller: { id, notBefore: Date.now() }, session, transport: "test", fetchTools: async () => CATALOG };
      for (const m of msgs) {
        const v: Verdict = await gate.checkClientMessage(ctx, m);
        if (v.action !== "forward") continue;
        const c = classify(m);
        assert.ok(c.kind !== "invalid", `forwarded an invalid message: ${JSON.stringify(m)}`);
        if (c.kind === "response") continue;
        if (c.msg.method === "tools/call") {
          const name = (c.msg.params as { name: string }).name;
          assert.ok(!deniedByOracle(rules, name), `forwarded ${name} despite a deny rule: ${JSON.stringify(rules)}`);
          assert.ok(policy.tool({ id, notBefore: Date.now() }, { name }, (c.msg.params as { arguments?: unknown }).arguments ?? {}).allow);
          assert.ok(TOOLS.includes(name), "only catalogued tools are forwarded");
        } else {
          assert.ok(!["resources/read", "prompts/get"].includes(c.msg.method), `${c.msg.method} forwarded without a rule for it`);
          assert.ok(policy.method({ id, notBefore: Date.now() }, c.msg.method).allow, `${c.msg.method} forwarded`);
        }
      }
    }),
    { numRuns: 400 },
  );
});

test("property: a filtered tools/list never contains a tool the caller may not call", () => {
  fc.assert(
    fc.property(fc.array(ruleArb, { minLength: 1, maxLength: 5 }), fc.constantFrom(...IDS), fc.subarray(CATALOG), (rules, id, tools) => {
      const { policy, gate } = buildGate(rules);
      const session = sessionFor(id);
      session.pending.set("n:1", { method: "tools/list", at: Date.now() });
      const out = gate.filterServerMessage(session, { id, notBefore: Date.now() }, { jsonrpc: "2.0", id: 1, result: { tools } }) as { result: { tools: Tool[] } };
      for (const t of out.result.tools) {
        assert.ok(!deniedByOracle(rules, t.name), `${t.name} listed despite a deny rule`);
        assert.ok(policy.listTool({ id, notBefore: Date.now() }, { name: t.name }));
        assert.ok(policy.tool({ id, notBefore: Date.now() }, { name: t.name }, {}).allow || rules.some((r) => r.effect === "deny"), `${t.name} listed but not callable`);
      }
    }),
    { numRuns: 400 },
  );
});

test("property: the pre-scan and parse never throw and never let a duplicate key or deep nesting through", () => {
  fc.assert(
    fc.property(fc.oneof(fc.json({ maxDepth: 6 }), fc.string({ maxLength: 200 }), fc.stringMatching(/^[[\]{}",:a-z0-9\\ ]{0,80}$/)), (text) => {
      const verdict = scanJson(text, 8);
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        return;
      }
      if (verdict === null) assert.doesNotThrow(() => classify(parsed));
    }),
    { numRuns: 2000 },
  );
  // Any object with a key written twice, anywhere in a message, is caught (also when one copy is escaped).
  fc.assert(
    fc.property(fc.string({ minLength: 1, maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), fc.jsonValue({ maxDepth: 2 }), fc.boolean(), (key, a, b, escape) => {
      const k2 = escape ? JSON.stringify(key).replace(/[a-z]/, (c) => `\\u00${c.charCodeAt(0).toString(16)}`) : JSON.stringify(key);
      const text = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{${JSON.stringify(key)}:${JSON.stringify(a)},${k2}:${JSON.stringify(b)}}}}`;
      assert.match(scanJson(text, 64) ?? "", /duplicate key|__proto__/, text);
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(fc.integer({ min: 9, max: 5000 }), (n) => {
      assert.match(scanJson("[".repeat(n) + "]".repeat(n), 8)!, /nesting/);
    }),
    { numRuns: 50 },
  );
});

// ---------------------------------------------------------------------------------------------------------------------
// the real agent

const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let f: MeshFetch;
let sess: RawSession;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/prop", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [
      { clients: [`${TD}/team-a/*`], tools: ["*"] },
      { clients: ["*"], tools: ["delete-*", "tenant-*"], effect: "deny" },
    ],
    pinning: { file: `${mesh.dir}/pins-prop.json` },
  });
  cleanups.add(() => agent.stop());
  f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  sess = await rawSession(f, agent.url, "2025-03-26");
  await sess.post({ jsonrpc: "2.0", id: 0, method: "tools/list", params: {} });
});

after(() => cleanups.run());

const callArb = fc.record({
  jsonrpc: fc.constant("2.0"),
  id: fc.oneof(fc.nat(), fc.string({ maxLength: 8 })),
  method: fc.constantFrom("tools/call", "tools/call", "ping", "prompts/get", "resources/read", "x"),
  params: fc.record({ name: fc.constantFrom("echo", "delete-file", "tenant-report", "add", "__proto__"), arguments: fc.dictionary(fc.constantFrom("text", "path", "a", "tenant"), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }) }),
});
const bodyArb = fc.oneof(
  callArb.map((m) => JSON.stringify(m)),
  fc.array(callArb, { minLength: 1, maxLength: 3 }).map((b) => JSON.stringify(b)),
  callArb.map((m) => JSON.stringify(m).replace('"method"', '"method":"ping","method"')),
  callArb.map((m) => {
    const s = JSON.stringify(m);
    return s.slice(0, Math.max(1, s.length - 3));
  }),
  fc.json({ maxDepth: 4 }),
  fc.string({ maxLength: 100 }),
);

test("property (real agent, bounded runs): no denied tool ever reaches the upstream; the agent always answers", async () => {
  await fc.assert(
    fc.asyncProperty(bodyArb, async (body) => {
      const before = up.received.length;
      const res = await f(sess.url, { method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": sess.sid, "mcp-protocol-version": sess.version }, body });
      await res.arrayBuffer();
      assert.ok(res.status < 500, `HTTP ${res.status} for ${body.slice(0, 200)}`);
      const got = up.received.slice(before);
      const denied = got.flatMap((r) => r.toolCalls).filter((t) => /^(delete-|tenant-)/.test(String(t)));
      assert.deepEqual(denied, [], `denied tool reached the upstream: ${summary(got)} for ${body.slice(0, 200)}`);
    }),
    { numRuns: 150 },
  );
  const ping = await sess.post({ jsonrpc: "2.0", id: "last", method: "ping" });
  assert.equal(ping.status, 200);
  assert.equal(agent.child.exitCode, null);
});

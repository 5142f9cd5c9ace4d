/**
 * End to end: the real `mcpmesh agent run` with rate limits, a concurrency cap and a cool-down, driven by the real SDK
 * client over mTLS. A limited call gets a JSON-RPC error with `data.retryAfterMs` and never reaches the upstream; a
 * cooled-down identity gets HTTP 429 with Retry-After. The admin listener's /metrics is scraped with a real HTTP
 * client and parsed, and `mcpmesh agent status` prints the summary.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { parse, stringify } from "yaml";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups, runCli } from "../helpers/cli.ts";
import { connectClient, meshRoots, rawPost, rawSession, call, rejection, tlsProbe, type MeshClient } from "../helpers/e2e.ts";
import { verifyAuditFiles } from "../../agent/audit.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let admin: string;
const ids: Record<string, string> = {};
const clients: Record<string, MeshClient> = {};
let auditFile: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/limits", { kind: "agent" });
  for (const p of ["rate/alice", "rate/carol", "conc/bob", "cool/dave"]) ids[p] = await mesh.issue(p);
  auditFile = join(mesh.dir, "audit-limits.log");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    tools: { echo: { access: "read" }, add: { access: "write" }, hold: { access: "read" } },
    rules: [
      // 3 echo calls per second per identity (this rule's own rate); writes have their own class limit.
      { id: "echo-3s", clients: [`${TD}/rate/*`], tools: ["echo"], rate: "3/s" },
      { id: "rate-add", clients: [`${TD}/rate/*`], tools: ["add"] },
      { id: "conc", clients: [`${TD}/conc/*`], tools: ["hold", "echo"] },
      { id: "cool", clients: [`${TD}/cool/*`], tools: ["get-weather"], rate: "1/h" },
    ],
    limits: {
      rate: { perIdentity: "1000/m", perClass: { write: "2/h" } },
      concurrency: 2,
      coolDown: { after: 2, within: "10m", for: "10m" },
    },
    admin: { listen: "127.0.0.1:0" },
    pinning: { file: join(mesh.dir, "pins-limits.json") },
    audit: { file: auditFile },
  });
  cleanups.add(() => agent.stop());
  admin = agent.logs().find((l) => l.event === "listening").admin;
  assert.match(admin, /^http:\/\/127\.0\.0\.1:\d+$/);
  for (const p of Object.keys(ids)) {
    clients[p] = await connectClient(agent.url, ids[p]);
    cleanups.add(() => clients[p].close());
  }
});

after(() => cleanups.run());

const callsOf = (path: string, tool: string) => up.received.filter((r) => r.headers["x-mcpmesh-identity"] === `${TD}/${path}`).flatMap((r) => r.toolCalls).filter((t) => t === tool).length;

/** Waits until the agent's audit file has a line matching `pred` (written asynchronously). */
async function auditLine(pred: (l: any) => boolean): Promise<any> {
  for (let i = 0; i < 400; i++) {
    const hit = readFileSync(auditFile, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l)).find(pred);
    if (hit) return hit;
    await sleep(25);
  }
  throw new Error("audit line not written");
}

/** A rejection's JSON-RPC error with its data (the SDK's McpError keeps `data`). */
async function limited(p: Promise<unknown>): Promise<{ code?: number; message: string; data?: any }> {
  return (await rejection(p)) as { code?: number; message: string; data?: any };
}

test("a rate of 3/s: exactly 3 calls pass, the rest are refused with a retry hint and never reach the upstream; then it refills", async () => {
  const c = clients["rate/alice"].client;
  const echo = () => c.callTool({ name: "echo", arguments: { text: "hi" } });
  for (let i = 0; i < 3; i++) assert.deepEqual((await echo()).content, [{ type: "text", text: "hi" }]);
  // However quickly the next calls come, at most a token or so can have refilled; keep calling until refused.
  let refused: { code?: number; message: string; data?: any } | null = null;
  let passed = 3;
  for (let i = 0; i < 10 && !refused; i++) {
    try {
      await echo();
      passed++;
    } catch (e) {
      refused = e as any;
    }
  }
  assert.ok(refused, "the limit refuses calls");
  assert.equal(refused.code, -32029);
  assert.match(refused.message, /Rate limit exceeded/);
  assert.equal(refused.data.scope, "rule");
  assert.ok(refused.data.retryAfterMs > 0 && refused.data.retryAfterMs <= 334, `retryAfterMs ${refused.data.retryAfterMs}`);
  assert.equal(callsOf("rate/alice", "echo"), passed, "only the calls that passed reached the upstream");
  // Another identity has its own bucket.
  assert.deepEqual((await clients["rate/carol"].client.callTool({ name: "echo", arguments: { text: "c" } })).content, [{ type: "text", text: "c" }]);
  // After waiting at least the hinted time, one more call passes.
  await sleep(refused.data.retryAfterMs + 5);
  await echo();
  assert.equal(callsOf("rate/alice", "echo"), passed + 1);
  const line = await auditLine((l) => l.log === "audit" && l.identity === `${TD}/rate/alice` && l.decision === "deny");
  assert.match(line.reason, /rate limit of rule echo-3s for tool echo \(3\/s\) exceeded/);
  assert.equal(line.rule, "echo-3s");
});

test("the write class has its own lower limit (2/h): the third write is refused, reads still pass", async () => {
  const c = clients["rate/carol"].client;
  for (let i = 0; i < 2; i++) assert.deepEqual((await c.callTool({ name: "add", arguments: { a: i, b: 1 } })).content, [{ type: "text", text: String(i + 1) }]);
  const e = await limited(c.callTool({ name: "add", arguments: { a: 5, b: 5 } }));
  assert.equal(e.code, -32029);
  assert.equal(e.data.scope, "class");
  assert.ok(e.data.retryAfterMs > 1_700_000, "the hint is the time to the next token: 30 minutes");
  assert.equal(callsOf("rate/carol", "add"), 2);
});

test("concurrency cap 2: a third call while two are in flight is refused without reaching the upstream; a slot frees on completion", async () => {
  const c = clients["conc/bob"].client;
  const h1 = c.callTool({ name: "hold", arguments: {} });
  const h2 = c.callTool({ name: "hold", arguments: {} });
  while (up.held() < 2) await sleep(10);
  const e = await limited(c.callTool({ name: "echo", arguments: { text: "third" } }));
  assert.equal(e.code, -32029);
  assert.equal(e.data.scope, "concurrency");
  assert.equal(callsOf("conc/bob", "echo"), 0);
  up.releaseHeld();
  assert.deepEqual((await h1).content, [{ type: "text", text: "released" }]);
  await h2;
  assert.deepEqual((await c.callTool({ name: "echo", arguments: { text: "now" } })).content, [{ type: "text", text: "now" }]);
});

test("cool-down: repeated violations refuse the identity's whole requests with HTTP 429 and Retry-After", async () => {
  const s = await rawSession(clients["cool/dave"].fetch, agent.url, "2025-06-18");
  const first = await s.post(call("get-weather", { city: "x" }));
  assert.equal(first.messages[0].result.content[0].text, "sunny in x");
  let violations = 0;
  for (let i = 0; i < 2; i++) {
    const r = await s.post(call("get-weather", { city: "y" }));
    assert.equal(r.status, 200);
    assert.equal(r.messages[0].error.code, -32029);
    assert.ok(Number(r.headers.get("retry-after")) > 0, "the JSON-RPC refusal carries Retry-After too");
    violations++;
  }
  assert.equal(violations, 2, "two violations were needed");
  const r = await s.post(call("get-weather", { city: "z" }));
  assert.equal(r.status, 429);
  const retry = Number(r.headers.get("retry-after"));
  assert.ok(retry > 500 && retry <= 600, `Retry-After ${retry}`);
  assert.equal(r.messages[0].error.code, -32029);
  assert.ok(r.messages[0].error.data.retryAfterMs > 500_000);
  // Even a listing is refused now; the upstream heard no call after the second violation.
  const before = up.received.length;
  const l = await rawPost(clients["cool/dave"].fetch, agent.url, { jsonrpc: "2.0", id: 1, method: "tools/list" }, { "mcp-session-id": s.sid, "mcp-protocol-version": "2025-06-18" });
  assert.equal(l.status, 429);
  assert.equal(up.received.length, before);
  assert.equal(callsOf("cool/dave", "get-weather"), 1);
  await auditLine((l2) => l2.log === "audit" && l2.identity === `${TD}/cool/dave` && /cool-down/.test(l2.reason));
});

/** Parses Prometheus text exposition into samples. */
function parseMetrics(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2].replace(/\\"/g, '"').replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

test("/metrics: calls by identity, tool and decision, limits, latency histograms, handshakes, connections, certificates, upstream", async () => {
  // A handshake without a client certificate, to be counted.
  const probe = await tlsProbe(agent.url, { ca: meshRoots(mesh) });
  assert.equal(probe.received, "");
  await agent.waitForLog((l) => l.event === "handshake_refused" && l.reason === "no_client_certificate");
  const res = await fetch(`${admin}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
  const samples = parseMetrics(await res.text());
  const get = (name: string, labels: Record<string, string> = {}) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
  const alice = `${TD}/rate/alice`;
  assert.ok(get("mcpmesh_calls_total", { identity: alice, tool: "echo", decision: "allow" }) >= 4);
  assert.ok(get("mcpmesh_calls_total", { identity: alice, tool: "echo", decision: "deny" }) >= 1);
  assert.ok(get("mcpmesh_rate_limited_total", { identity: alice, scope: "rule" }) >= 1);
  assert.equal(get("mcpmesh_rate_limited_total", { identity: `${TD}/conc/bob`, scope: "concurrency" }), 1);
  assert.ok(get("mcpmesh_decision_seconds_count", { method: "tools/call" }) >= 8);
  assert.ok(get("mcpmesh_upstream_seconds_count", { method: "POST", outcome: "ok" }) >= 8);
  assert.equal(get("mcpmesh_handshake_failures_total", { reason: "no_client_certificate" }), 1);
  assert.ok(get("mcpmesh_open_connections") >= 4, "the SDK clients' connections are open");
  assert.ok(get("mcpmesh_sessions") >= 4);
  assert.equal(get("mcpmesh_upstream_up"), 1);
  assert.equal(get("mcpmesh_cooldowns"), 1);
  const own = samples.find((s) => s.name === "mcpmesh_certificate_expiry_timestamp_seconds" && s.labels.role === "own")!;
  assert.ok(own.value * 1000 > Date.now(), "own certificate notAfter is in the future");
  assert.ok(samples.some((s) => s.name === "mcpmesh_certificate_expiry_timestamp_seconds" && s.labels.role === "root" && s.value > own.value));
  assert.ok(samples.some((s) => s.name === "mcpmesh_certificate_expiry_timestamp_seconds" && s.labels.role === "intermediate"));
});

test("`mcpmesh agent status` prints the summary from the admin listener", async () => {
  const r = await runCli(["agent", "status", "--admin", admin]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^upstream\s+UP/m);
  assert.match(r.stdout, /calls\s+\d+ allowed, \d+ denied \(\d+ by rate limits\)/);
  assert.match(r.stdout, new RegExp(`cool-down\\s+${TD}/cool/dave`));
  assert.match(r.stdout, /top identities[\s\S]*spiffe:\/\/example\.org\/rate\/alice/);
  assert.match(r.stdout, /top tools[\s\S]*echo/);
  assert.match(r.stdout, /no_client_certificate\s+1/);
  assert.match(r.stdout, /own\s+\S+Z\s+\d+\S* left/);
  const j = await runCli(["agent", "status", "--admin", admin, "--json"]);
  const st = JSON.parse(j.stdout);
  assert.equal(st.upstream.up, true);
  const bad = await runCli(["agent", "status", "--admin", "http://127.0.0.1:1"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /cannot reach the agent's admin listener/);
});

test("the agent's real audit log verifies", async () => {
  await sleep(50);
  const r = verifyAuditFiles([auditFile]);
  assert.equal(r.ok, true, JSON.stringify(r.problem));
  assert.ok(r.records > 20);
  assert.ok(readFileSync(auditFile, "utf8").includes('"decision":"deny"'));
});

test("a reload that changes admin warns that it needs a restart; /metrics stays on the listener it had", async () => {
  const cfg = parse(readFileSync(agent.configFile, "utf8"));
  assert.equal(cfg.admin.listen, "127.0.0.1:0");
  cfg.admin.listen = "127.0.0.1:1";
  writeFileSync(agent.configFile, stringify(cfg));
  agent.reload();
  const line = await agent.waitForLog((l) => l.event === "reload_partial" || l.event === "reload_failed");
  assert.equal(line.event, "reload_partial");
  assert.match(line.msg, /admin changes take effect on restart only/);
  await agent.waitForLog((l) => l.event === "reloaded");
  assert.equal((await fetch(`${admin}/metrics`)).status, 200);
});

/**
 * End to end: the real `mcpmesh agent run` in front of a real SDK McpServer, driven by the real SDK client over mTLS.
 * Policy: filtered listings per identity, allowed and denied calls, deny beats allow, default deny at the connection,
 * access classes, and arguments bound to the caller's identity. Every denial is checked at the upstream too.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, rejection, summary, type MeshClient } from "../helpers/e2e.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
const ids: Record<string, string> = {};
const clients: Record<string, MeshClient> = {};

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/policy", { kind: "agent" });
  for (const p of ["team-a/alice", "team-a/bob", "admin", "analysts/ann", "tenant/acme/u1", "other/mallory"]) ids[p] = await mesh.issue(p);
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    tools: { echo: { access: "read" }, "get-weather": { access: "read" }, "delete-file": { access: "write" } },
    rules: [
      { id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "get-*", "add"] },
      { id: "admin-all", clients: [`${TD}/admin`], tools: ["*"] },
      { id: "analysts-read", clients: [`${TD}/analysts/*`], access: ["read"] },
      { id: "tenant-own", clients: [`${TD}/tenant/{tenant}/*`], tools: ["tenant-report"], arguments: { tenant: "{tenant}" } },
      { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
      { id: "bob-no-add", clients: [`${TD}/team-a/bob`], tools: ["add"], effect: "deny" },
    ],
    pinning: { file: `${mesh.dir}/pins-policy.json` },
  });
  cleanups.add(() => agent.stop());
  for (const p of ["team-a/alice", "team-a/bob", "admin", "analysts/ann", "tenant/acme/u1"]) {
    clients[p] = await connectClient(agent.url, ids[p]);
    cleanups.add(() => clients[p].close());
  }
});

after(() => cleanups.run());

/** Requests the upstream got on behalf of one identity (the agent stamps X-MCPMesh-Identity). */
const receivedFor = (path: string) => up.received.filter((r) => r.headers["x-mcpmesh-identity"] === `${TD}/${path}`);
const toolCallsOf = (path: string) => receivedFor(path).flatMap((r) => r.toolCalls);

async function listed(path: string): Promise<string[]> {
  return (await clients[path].client.listTools()).tools.map((t) => t.name).sort();
}

test("tools/list shows each identity exactly what its rules allow; a denied tool is never listed", async () => {
  assert.deepEqual(await listed("team-a/alice"), ["add", "echo", "get-weather"]);
  // bob-no-add (deny) beats team-a (allow).
  assert.deepEqual(await listed("team-a/bob"), ["echo", "get-weather"]);
  // admin-all says "*", but no-delete wins over it.
  assert.deepEqual(await listed("admin"), ["add", "echo", "get-weather", "hold", "slow-count", "tenant-report"]);
  // Operator-declared read tools only: add and tenant-report are undeclared, delete-file is write.
  assert.deepEqual(await listed("analysts/ann"), ["echo", "get-weather"]);
  assert.deepEqual(await listed("tenant/acme/u1"), ["tenant-report"]);
  // The upstream itself listed everything: the filtering is the agent's.
  assert.ok(receivedFor("team-a/alice").some((r) => r.rpcMethods.includes("tools/list")));
});

test("an allowed call reaches the upstream and returns its result", async () => {
  const r = await clients["team-a/alice"].client.callTool({ name: "echo", arguments: { text: "hello mesh" } });
  assert.deepEqual(r.content, [{ type: "text", text: "hello mesh" }]);
  assert.ok(toolCallsOf("team-a/alice").includes("echo"));
  const added = await clients["team-a/alice"].client.callTool({ name: "add", arguments: { a: 2, b: 3 } });
  assert.deepEqual(added.content, [{ type: "text", text: "5" }]);
});

test("a denied call is answered as an unknown tool (-32602) and never reaches the upstream", async () => {
  const e = await rejection(clients["team-a/alice"].client.callTool({ name: "delete-file", arguments: { path: "/etc/passwd" } }));
  assert.equal(e.code, -32602);
  assert.match(e.message, /Unknown tool: delete-file/);
  // A tool no rule grants alice looks exactly the same.
  const e2 = await rejection(clients["team-a/alice"].client.callTool({ name: "tenant-report", arguments: { tenant: "acme" } }));
  assert.equal(e2.code, -32602);
  assert.match(e2.message, /Unknown tool: tenant-report/);
  assert.deepEqual(toolCallsOf("team-a/alice").filter((t) => t !== "echo" && t !== "add"), [], summary(receivedFor("team-a/alice")));
  const line = await agent.waitForLog((l) => l.log === "audit" && l.tool === "delete-file" && l.identity === `${TD}/team-a/alice`);
  assert.equal(line.decision, "deny");
  assert.equal(line.rule, "no-delete");
});

test("deny beats allow: admin's `*` does not reach delete-file, bob's team rule does not reach add", async () => {
  const e = await rejection(clients.admin.client.callTool({ name: "delete-file", arguments: { path: "/x" } }));
  assert.equal(e.code, -32602);
  assert.match(e.message, /Unknown tool/);
  const e2 = await rejection(clients["team-a/bob"].client.callTool({ name: "add", arguments: { a: 1, b: 1 } }));
  assert.equal(e2.code, -32602);
  assert.deepEqual(toolCallsOf("admin"), []);
  assert.deepEqual(toolCallsOf("team-a/bob"), []);
  const line = await agent.waitForLog((l) => l.log === "audit" && l.tool === "add" && l.identity === `${TD}/team-a/bob`);
  assert.equal(line.decision, "deny");
  assert.equal(line.rule, "bob-no-add");
});

test("default deny: an identity no rule names is refused at the TLS gate and the upstream hears nothing", async () => {
  await assert.rejects(connectClient(agent.url, ids["other/mallory"]));
  const line = await agent.waitForLog((l) => l.event === "handshake_refused" && l.identity === `${TD}/other/mallory`);
  assert.equal(line.reason, "not_admitted");
  assert.deepEqual(receivedFor("other/mallory"), []);
  assert.equal(
    agent.audit().filter((l) => l.identity === `${TD}/other/mallory`).length,
    0,
    "no message of a refused connection is ever decided: HTTP was never read",
  );
});

test("access classes: a rule allowing `read` admits the operator's read tools and nothing else", async () => {
  const c = clients["analysts/ann"].client;
  const r = await c.callTool({ name: "get-weather", arguments: { city: "Oslo" } });
  assert.deepEqual(r.content, [{ type: "text", text: "sunny in Oslo" }]);
  // add is undeclared (the server's hints are not trusted by default); delete-file is declared write.
  for (const name of ["add", "delete-file"]) {
    const e = await rejection(c.callTool({ name, arguments: name === "add" ? { a: 1, b: 2 } : { path: "/x" } }));
    assert.equal(e.code, -32602, name);
  }
  assert.deepEqual(toolCallsOf("analysts/ann"), ["get-weather"]);
});

test("identity-bound arguments: a tenant may ask for its own report only", async () => {
  const c = clients["tenant/acme/u1"].client;
  const own = await c.callTool({ name: "tenant-report", arguments: { tenant: "acme", month: "2025-01" } });
  assert.deepEqual(own.content, [{ type: "text", text: "report for acme" }]);
  const e = await rejection(c.callTool({ name: "tenant-report", arguments: { tenant: "globex" } }));
  assert.equal(e.code, -32602);
  assert.match(e.message, /Unknown tool: tenant-report/);
  const bodies = receivedFor("tenant/acme/u1").filter((r) => r.toolCalls.length > 0).map((r) => r.body);
  assert.equal(bodies.length, 1, summary(receivedFor("tenant/acme/u1")));
  assert.match(bodies[0], /"acme"/);
  assert.ok(!up.received.some((r) => r.body.includes("globex")), "the other tenant's call reached the upstream");
  const line = await agent.waitForLog((l) => l.log === "audit" && l.tool === "tenant-report" && l.decision === "deny" && l.identity === `${TD}/tenant/acme/u1`);
  assert.match(line.reason, /argument "tenant"/);
  assert.ok(!JSON.stringify(line).includes("globex"), "argument values are not logged");
});

/**
 * End to end: isolation by endpoints. One agent, three doors: a read-only door on 127.0.0.1 for team-a, an admin door
 * on another address (127.0.0.2) that only ops identities may even connect to and that needs a certificate issued
 * within 5 minutes, and a "strict" path on the admin listener whose step-up (10 s) no certificate can meet (they are
 * backdated 1 min). Each door has its own rules; every refusal is checked at the upstream. Also: the real binary
 * refuses a wildcard listen address unless listenAnyAddress is set.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, meshRoots, rawPost, rejection, rpc, summary, tlsProbe } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let agentDir: string;
let urls: Record<string, string>;
const ids: Record<string, string> = {};

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  agentDir = await mesh.issue("agents/doors", { kind: "agent", ips: ["127.0.0.1", "127.0.0.2"] });
  for (const p of ["team-a/alice", "ops/olga"]) ids[p] = await mesh.issue(p);
  agent = await startAgentProcess(mesh.dir, {
    identity: agentDir,
    upstream: { url: up.url },
    tools: { echo: { access: "read" }, "get-weather": { access: "read" }, "delete-file": { access: "write" } },
    endpoints: [
      { id: "read", listen: "127.0.0.1:0", rules: [{ clients: [`${TD}/team-a/*`, `${TD}/ops/*`], access: ["read"] }] },
      { id: "admin", listen: "127.0.0.2:0", path: "/admin/mcp", clients: [`${TD}/ops/*`], stepUp: "5m", rules: [{ clients: ["*"], tools: ["*"] }] },
      { id: "strict", listen: "127.0.0.2:0", path: "/strict/mcp", clients: [`${TD}/ops/*`], stepUp: "10s", rules: [{ clients: ["*"], tools: ["*"] }] },
    ],
    pinning: { file: `${mesh.dir}/pins-doors.json` },
  });
  cleanups.add(() => agent.stop());
  urls = agent.logs().find((l) => l.event === "listening").endpoints;
});

after(() => cleanups.run());

const callsBy = (p: string) => up.received.filter((r) => r.headers["x-mcpmesh-identity"] === `${TD}/${p}`).flatMap((r) => r.toolCalls);

test("each endpoint has its own URL: two listeners, three paths", () => {
  assert.match(urls.read, /^https:\/\/127\.0\.0\.1:\d+\/mcp$/);
  assert.match(urls.admin, /^https:\/\/127\.0\.0\.2:\d+\/admin\/mcp$/);
  assert.equal(new URL(urls.strict).port, new URL(urls.admin).port, "same listener, another path");
});

test("the read door: read tools only, for team-a and ops alike", async () => {
  for (const who of ["team-a/alice", "ops/olga"]) {
    const c = await connectClient(urls.read, ids[who]);
    try {
      const names = (await c.client.listTools()).tools.map((t) => t.name).sort();
      assert.deepEqual(names, ["echo", "get-weather"], who);
      const r = await c.client.callTool({ name: "echo", arguments: { text: "hi" } });
      assert.deepEqual(r.content, [{ type: "text", text: "hi" }]);
      const e = await rejection(c.client.callTool({ name: "delete-file", arguments: { path: "/x" } }));
      assert.equal(e.code, -32602, who);
    } finally {
      await c.close();
    }
  }
  assert.ok(!callsBy("team-a/alice").includes("delete-file") && !callsBy("ops/olga").includes("delete-file"), summary(up.received));
});

test("the admin door: team-a cannot even connect; ops with a fresh certificate may call a write tool", async () => {
  const roots = meshRoots(mesh);
  const key = readFileSync(join(ids["team-a/alice"], "key.pem"), "utf8");
  const cert = readFileSync(join(ids["team-a/alice"], "cert.pem"), "utf8");
  const before = up.received.length;
  const probe = await tlsProbe(urls.admin, { ca: roots, cert, key });
  assert.equal(probe.received, "", "the admin listener answered a team-a identity");
  await agent.waitForLog((l) => l.event === "handshake_refused" && l.reason === "not_admitted" && l.identity === `${TD}/team-a/alice`);
  assert.equal(up.received.length, before);

  const c = await connectClient(urls.admin, ids["ops/olga"]);
  try {
    assert.ok((await c.client.listTools()).tools.some((t) => t.name === "delete-file"));
    const r = await c.client.callTool({ name: "delete-file", arguments: { path: "/tmp/x" } });
    assert.deepEqual(r.content, [{ type: "text", text: "deleted /tmp/x" }]);
  } finally {
    await c.close();
  }
  assert.ok(callsBy("ops/olga").includes("delete-file"));
});

test("the strict door: its step-up is stricter than any certificate's age, so every call is refused", async () => {
  const c = await connectClient(urls.strict, ids["ops/olga"]);
  const before = up.received.length;
  try {
    const e = await rejection(c.client.callTool({ name: "echo", arguments: { text: "x" } }));
    assert.equal(e.code, -32602);
  } finally {
    await c.close();
  }
  const after = up.received.slice(before);
  assert.deepEqual(after.flatMap((r) => r.toolCalls), [], summary(after));
  const deny = await agent.waitForLog((l) => l.identity === `${TD}/ops/olga` && l.tool === "echo" && l.decision === "deny");
  assert.match(deny.reason, /needs a certificate issued within 10s/);
});

test("a path of another listener is not served here; a session of one door is unknown at another", async () => {
  const f = createMeshFetch(ids["ops/olga"]);
  try {
    const wrong = await rawPost(f, urls.read.replace("/mcp", "/admin/mcp"), rpc("ping"));
    assert.equal(wrong.status, 404);
    const init = await rawPost(f, urls.admin, rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } }));
    const sid = init.headers.get("mcp-session-id")!;
    assert.ok(sid);
    const other = await rawPost(f, urls.strict, rpc("tools/list"), { "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18" });
    assert.equal(other.status, 404, "sessions are per endpoint");
  } finally {
    await f.close();
  }
});

test("the real binary refuses a wildcard listen address, naming listen, (the override is in test/agent/isolation-config.test.ts)", async () => {
  for (const listen of ["0.0.0.0:0", "[::]:0"]) {
    await assert.rejects(
      startAgentProcess(mesh.dir, { listen, identity: agentDir, upstream: { url: up.url }, rules: [{ clients: ["*"], tools: ["echo"] }] }),
      (e: Error) => /listen: .* is a wildcard address/.test(e.message) && /listenAnyAddress/.test(e.message),
    );
  }
  await assert.rejects(
    startAgentProcess(mesh.dir, { identity: agentDir, upstream: { url: up.url }, endpoints: [{ listen: "0.0.0.0:0", rules: [{ clients: ["*"], tools: ["echo"] }] }] }),
    /endpoints\[0\]\.listen: 0\.0\.0\.0 is a wildcard address/,
  );
  // The override itself is covered by the config tests: this test only listens on loopback.
});

test("the upstream rule: a non-loopback upstream URL is refused at start", async () => {
  await assert.rejects(
    startAgentProcess(mesh.dir, { listen: "127.0.0.1:0", identity: agentDir, upstream: { url: "http://10.1.2.3:3001/mcp" }, rules: [{ clients: ["*"], tools: ["echo"] }] }),
    /upstream\.url: host "10\.1\.2\.3" is not loopback/,
  );
});

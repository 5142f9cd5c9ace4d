/**
 * `mcpmesh connect` end to end: the real SDK client speaks stdio to the real `mcpmesh connect` process, which forwards
 * over mTLS to the real `mcpmesh agent run` in front of a real SDK McpServer. Listings, allowed and denied calls, the
 * agent's identity checked (`--expect`, foreign CA) before anything is sent, stdout carrying nothing but JSON-RPC,
 * `--print-config` for each client, and the option errors.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { BIN, Cleanups, inParallel, runCli } from "../helpers/cli.ts";
import { rejection } from "../helpers/e2e.ts";
import { connectEnv, startConnectClient } from "../helpers/connect.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let agent: AgentProcess;
let alice: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  alice = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [
      { id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "get-*", "add"] },
      { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
  });
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

const aliceCalls = () => up.received.filter((r) => r.headers["x-mcpmesh-identity"] === `${TD}/team-a/alice`);

test("through connect, the SDK client lists what the policy allows, calls tools, and a denied call never reaches the upstream", async () => {
  const c = await startConnectClient([agent.url, "--identity", alice, "--expect", `${TD}/agents/weather`]);
  after(() => c.close());
  const tools = (await c.client.listTools()).tools.map((t) => t.name).sort();
  assert.deepEqual(tools, ["add", "echo", "get-weather"]);
  const r = await c.client.callTool({ name: "echo", arguments: { text: "via connect" } });
  assert.deepEqual(r.content, [{ type: "text", text: "via connect" }]);
  const sum = await c.client.callTool({ name: "add", arguments: { a: 20, b: 22 } });
  assert.deepEqual(sum.content, [{ type: "text", text: "42" }]);
  const e = await rejection(c.client.callTool({ name: "delete-file", arguments: { path: "/etc/passwd" } }));
  assert.equal(e.code, -32602);
  assert.match(e.message, /Unknown tool: delete-file/);
  assert.deepEqual(aliceCalls().flatMap((x) => x.toolCalls).sort(), ["add", "echo"]);
  await c.waitForLog((l) => l.event === "agent_connected" && l.transport === "streamable-http");
  assert.deepEqual(c.errors, []);
});

test("stdout carries only JSON-RPC: every byte connect writes there is a JSON-RPC message; the end of stdin ends connect", async () => {
  const child = spawn(process.execPath, [BIN, "connect", agent.url, "--identity", alice], { env: connectEnv(), stdio: ["pipe", "pipe", "pipe"] });
  after(() => child.kill("SIGKILL"));
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  const waitFor = async (id: number) => {
    const deadline = Date.now() + 30_000;
    while (!stdout.split("\n").some((l) => l.includes(`"id":${id}`))) {
      if (Date.now() > deadline) throw new Error(`no answer to ${id}; stdout:\n${stdout}\nstderr:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const send = (m: unknown) => child.stdin.write(JSON.stringify(m) + "\n");
  send({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } } });
  await waitFor(1);
  send({ jsonrpc: "2.0", method: "notifications/initialized" });
  send({ jsonrpc: "2.0", id: 2, method: "tools/list", params: {} });
  await waitFor(2);
  send({ jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "slow-count", arguments: { steps: 2 }, _meta: { progressToken: "p" } } });
  send({ jsonrpc: "2.0", id: 4, method: "tools/call", params: { name: "echo", arguments: { text: "x" } } });
  await waitFor(3);
  await waitFor(4);
  child.stdin.end();
  assert.equal(await exited, 0, stderr);
  const lines = stdout.split("\n");
  assert.equal(lines.pop(), "", "stdout ends with a newline");
  assert.ok(lines.length >= 4);
  for (const l of lines) {
    const m = JSON.parse(l);
    assert.equal(m.jsonrpc, "2.0", l);
    assert.ok("id" in m || "method" in m, l);
  }
  const byId = new Map(lines.map((l) => JSON.parse(l)).filter((m) => "id" in m).map((m) => [m.id, m]));
  assert.equal(byId.get(1).result.protocolVersion, "2025-06-18");
  assert.match(byId.get(3).error.message, /Unknown tool: slow-count/, "slow-count is not granted to team-a");
  assert.deepEqual(byId.get(4).result.content, [{ type: "text", text: "x" }]);
  // Logs went to stderr, as JSON lines.
  assert.ok(stderr.split("\n").some((l) => l.includes('"event":"connect_started"')), stderr);
});

test("--expect with another SPIFFE ID: refused at the TLS handshake, a clear message on stderr, exit 1, nothing sent", async () => {
  up.reset();
  const c = await startConnectClient([agent.url, "--identity", alice, "--expect", `${TD}/agents/payments`], { connect: false });
  const exited = new Promise<number | null>((r) => c.transport.onclose = () => r(0));
  await assert.rejects(c.client.connect(c.transport), /agent is spiffe:\/\/example\.org\/agents\/weather, expected spiffe:\/\/example\.org\/agents\/payments/);
  await exited;
  await c.waitForLog((l) => l.event === "agent_rejected");
  assert.match(c.stderr(), /agent is spiffe:\/\/example\.org\/agents\/weather, expected spiffe:\/\/example\.org\/agents\/payments/);
  assert.deepEqual(aliceCalls(), [], "the upstream heard nothing");
  // The raw view: the local client's initialize is answered with connect's own error, and connect exits 1.
  const child = spawn(process.execPath, [BIN, "connect", agent.url, "--identity", alice, "--expect", `${TD}/agents/payments`], { env: connectEnv(), stdio: ["pipe", "pipe", "pipe"] });
  after(() => child.kill("SIGKILL"));
  let stdout = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.resume();
  const code = new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
  child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id: 7, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } } }) + "\n");
  assert.equal(await code, 1);
  const answer = JSON.parse(stdout.trim());
  assert.equal(answer.id, 7);
  assert.equal(answer.error.code, -32004);
  assert.match(answer.error.message, /^mcpmesh connect: agent is spiffe:\/\/example\.org\/agents\/weather, expected/);
  assert.deepEqual(aliceCalls(), []);
});

test("an agent whose certificate comes from another CA is refused: the identity's ca.pem does not vouch for it", async () => {
  const other = await createMesh("example.org");
  after(() => other.close());
  const foreign = join(mesh.dir, "alice-foreign-roots");
  mkdirSync(foreign, { mode: 0o700 });
  for (const f of readdirSync(alice)) copyFileSync(join(alice, f), join(foreign, f));
  copyFileSync(join(other.dir, "ca", "root.pem"), join(foreign, "ca.pem"));
  up.reset();
  const c = await startConnectClient([agent.url, "--identity", foreign], { connect: false });
  await assert.rejects(c.client.connect(c.transport), /certificate was rejected/);
  await c.waitForLog((l) => l.event === "agent_rejected");
  assert.match(c.stderr(), /UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT/);
  assert.deepEqual(aliceCalls(), []);
});

test("--print-config prints the exact JSON each client expects, with absolute paths", async () => {
  for (const client of ["claude", "cursor", "vscode"]) {
    const r = await runCli(["connect", "--print-config", client, "--identity", alice, agent.url, "--name", "weather", "--expect", `${TD}/agents/weather`]);
    assert.equal(r.code, 0, r.stderr);
    const cfg = JSON.parse(r.stdout);
    const servers = client === "vscode" ? cfg.servers : cfg.mcpServers;
    assert.deepEqual(Object.keys(cfg), [client === "vscode" ? "servers" : "mcpServers"]);
    const s = servers.weather;
    if (client === "vscode") assert.equal(s.type, "stdio");
    else assert.equal(s.type, undefined);
    assert.equal(s.command, process.execPath);
    assert.ok(isAbsolute(s.args[0]) && existsSync(s.args[0]) && s.args[0].endsWith(join("bin", "mcpmesh.js")));
    assert.deepEqual(s.args.slice(1), ["connect", agent.url, "--identity", alice, "--expect", `${TD}/agents/weather`]);
    assert.match(r.stderr, client === "claude" ? /claude_desktop_config\.json/ : client === "cursor" ? /\.cursor\/mcp\.json/ : /\.vscode\/mcp\.json/);
  }
  // A relative identity directory is made absolute: clients start servers from an unknown working directory.
  const r = await runCli(["connect", "--print-config", "cursor", "--identity", ".", agent.url], { cwd: alice });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).mcpServers.mcpmesh.args[4], alice);
});

test("bad options: each names the option and says how to fix it; nothing on stdout", async () => {
  const url = "https://127.0.0.1:9/mcp";
  const cases: [string[], RegExp, number][] = [
    [[], /url: missing: pass the agent's URL, e\.g\. https:\/\//, 1],
    [["--identity", alice], /url: missing/, 1],
    [["not a url", "--identity", alice], /url: "not a url" is not a URL/, 1],
    [["http://127.0.0.1:9/mcp", "--identity", alice], /url: http:\/\/ is not allowed: the mesh speaks mTLS only; use https:\/\/127\.0\.0\.1:9\/mcp/, 1],
    [["ws://127.0.0.1:9/ws", "--identity", alice], /url: ws:\/\/ is not allowed.*use wss:\/\/127\.0\.0\.1:9\/ws/, 1],
    [["ftp://127.0.0.1/x", "--identity", alice], /url: scheme ftp: is not supported; use https:\/\//, 1],
    [["https://bob:secret@127.0.0.1:9/mcp", "--identity", alice], /url: must not carry a user name or password/, 1],
    [[url], /identity: missing: pass --identity DIR/, 1],
    [[url, "--identity", "/nonexistent/mcpmesh-id"], /identity: \/nonexistent\/mcpmesh-id is not an enrolled identity directory.*mcpmesh enroll TOKEN --dir/, 1],
    [[url, "--identity", alice, "--expect", "team-a/weather"], /expect: "team-a\/weather" is not a SPIFFE ID; e\.g\. spiffe:\/\//, 1],
    [[url, "--identity", alice, "--expect", "spiffe://Example.org/x"], /expect: .* is not a SPIFFE ID/, 1],
    [[url, "--identity", alice, "--transport", "carrier-pigeon"], /argument 'carrier-pigeon' is invalid\. Allowed choices are auto, streamable-http, sse, ws/, 2],
    [[url, "--identity", alice, "--transport", "ws"], /url: --transport ws needs a wss:\/\/ URL, e\.g\. wss:\/\/127\.0\.0\.1:9\/ws/, 1],
    [["wss://127.0.0.1:9/ws", "--identity", alice, "--transport", "sse"], /url: --transport sse needs an https:\/\/ URL, e\.g\. https:\/\/127\.0\.0\.1:9\/sse/, 1],
    [["--print-config", "emacs", "--identity", alice, url], /argument 'emacs' is invalid\. Allowed choices are claude, cursor, vscode/, 2],
    [["--print-config", "claude", "--identity", alice, url, "--name", "my server"], /name: "my server" must be 1-64 letters/, 1],
    [["--print-config", "claude", url], /identity: missing/, 1],
  ];
  const results = await inParallel(cases, 2, ([args]) => runCli(["connect", ...args]));
  cases.forEach(([args, re, code], i) => {
    const r = results[i];
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(" "));
    assert.equal(r.stdout, "", args.join(" "));
  });
  const help = await runCli(["connect", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /mcpmesh connect https:\/\/agent\.example\.org:8443\/mcp --identity/);
});

/**
 * The MCP Inspector CLI (`@modelcontextprotocol/inspector --cli`, on Node 24) lists and calls tools through a stdio
 * command that is `mcpmesh connect` — what a person does to poke at a meshed server. Skips without Node 24 and the
 * Inspector installed by .ci/run.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { BIN } from "../helpers/cli.ts";
import { node24Tool } from "../helpers/node24.ts";
import { connectEnv } from "../helpers/connect.ts";

const TD = "spiffe://example.org";
const tool = node24Tool("@modelcontextprotocol/inspector", "clients/launcher/build/index.js");

function inspector(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { node, script } = tool as { node: string; script: string };
  const child = spawn(node, [script, "--cli", ...args], { env: connectEnv(), stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
  return new Promise((resolve) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}

test("the MCP Inspector CLI lists and calls tools through mcpmesh connect", { skip: typeof tool === "string" ? tool : false, timeout: 300_000 }, async () => {
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
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "get-*"] }],
  });
  after(() => agent.stop());
  const target = ["--", process.execPath, BIN, "connect", agent.url, "--identity", alice, "--expect", `${TD}/agents/weather`];

  const list = await inspector(["--method", "tools/list", ...target]);
  assert.equal(list.code, 0, list.stderr);
  const listed = JSON.parse(list.stdout);
  assert.deepEqual(listed.tools.map((t: { name: string }) => t.name).sort(), ["echo", "get-weather"]);

  const call = await inspector(["--method", "tools/call", "--tool-name", "get-weather", "--tool-arg", "city=Lisbon", ...target]);
  assert.equal(call.code, 0, call.stderr);
  assert.deepEqual(JSON.parse(call.stdout).content, [{ type: "text", text: "sunny in Lisbon" }]);
  assert.ok(up.received.some((r) => r.toolCalls.includes("get-weather") && r.headers["x-mcpmesh-identity"] === `${TD}/team-a/alice`));

  // A tool the policy does not grant is not even listed (the Inspector looks it up before calling); the upstream
  // never hears of it.
  const denied = await inspector(["--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=1", "--tool-arg", "b=2", ...target]);
  assert.notEqual(denied.code, 0);
  assert.match(denied.stdout + denied.stderr, /Tool 'add' not found on server/);
  assert.ok(!up.received.some((r) => r.toolCalls.includes("add")));
});

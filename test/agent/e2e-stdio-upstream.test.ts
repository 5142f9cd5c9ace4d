/**
 * End to end with a stdio upstream: the real `mcpmesh agent run` with `upstream.command` running the fixture server
 * (test/helpers/stdio-server.ts), the real SDK client over mTLS. A call works; a crash mid-call is an error to the
 * caller, the child is restarted and the next call in the same session works; a denied call never reaches the child;
 * the agent's secrets stay out of the child's environment; stopping the agent leaves no child behind.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";
import { connectClient, rejection, type MeshClient } from "../helpers/e2e.ts";
import { readStdioRecord, stdioServerCommand } from "../helpers/stdio-server.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let agent: AgentProcess;
let alice: MeshClient;
let record: string;
let aliceDir: string;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

const text = (r: any): string => r.content[0].text;
const pidOf = async (c: MeshClient): Promise<number> => Number(text(await c.client.callTool({ name: "pid", arguments: {} })));

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  record = join(tmpdir(cleanups.add, "mcpmesh-e2e-stdio-"), "record.jsonl");
  const agentDir = await mesh.issue("agents/stdio", { kind: "agent" });
  aliceDir = await mesh.issue("team-a/alice");
  agent = await startAgentProcess(
    mesh.dir,
    {
      listen: "127.0.0.1:0",
      identity: agentDir,
      upstream: { command: stdioServerCommand(), env: { MCPMESH_TEST_RECORD: record }, restart: { initialDelay: "50ms" } },
      rules: [
        { id: "alice", clients: [`${TD}/team-a/alice`], tools: ["echo", "pid", "crash", "env", "hold"] },
        { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
      ],
      pinning: { file: `${mesh.dir}/pins-stdio.json` },
    },
    { env: { MCPMESH_TEST_AGENT_SECRET: "s3cr3t-from-the-agent-env" } },
  );
  cleanups.add(() => agent.stop());
  alice = await connectClient(agent.url, aliceDir);
  cleanups.add(() => alice.close());
});

after(() => cleanups.run());

test("a call through the mesh reaches the stdio child and returns; the child's stderr is in the agent log", async () => {
  assert.equal(text(await alice.client.callTool({ name: "echo", arguments: { text: "over stdio" } })), "over stdio");
  const listening = agent.logs().find((l) => l.event === "listening");
  assert.equal(listening.upstreamKind, "stdio");
  const pid = await pidOf(alice);
  const started = await agent.waitForLog((l) => l.event === "upstream_stderr" && l.line === `stdio-server: started pid=${pid}`);
  assert.equal(started.identity, `${TD}/team-a/alice`);
});

test("a denied call never reaches the child", async () => {
  const e = await rejection(alice.client.callTool({ name: "delete-file", arguments: { path: "/etc/passwd" } }));
  assert.match(e.message, /Unknown tool: delete-file/);
  assert.ok(!readStdioRecord(record).toolCalls.includes("delete-file"));
});

test("the agent's environment does not reach the child", async () => {
  assert.equal(text(await alice.client.callTool({ name: "env", arguments: { name: "MCPMESH_TEST_AGENT_SECRET" } })), "<unset>");
  assert.equal(text(await alice.client.callTool({ name: "env", arguments: { name: "MCPMESH_TEST_RECORD" } })), record);
});

test("a crash mid-call: the caller gets an error, the child is restarted, the next call in the same session works", async () => {
  const pid1 = await pidOf(alice);
  const e = await rejection(alice.client.callTool({ name: "crash", arguments: { code: 1 } }));
  assert.match(e.message, /upstream process exited with code 1/);
  const respawn = await agent.waitForLog((l) => l.event === "upstream_spawn" && l.pid !== pid1);
  await agent.waitForLog((l) => l.event === "upstream_replay_initialize" && l.pid === respawn.pid);
  const pid2 = await pidOf(alice);
  assert.equal(pid2, respawn.pid);
  assert.ok(!alive(pid1), "the crashed child is gone");
  assert.equal(text(await alice.client.callTool({ name: "echo", arguments: { text: "still here" } })), "still here");
  // The restart is logged with its backoff.
  const restart = agent.logs().find((l) => l.event === "upstream_restart");
  assert.equal(restart.attempt, 1);
  assert.equal(restart.backoffMs, 50);
});

test("stopping the agent leaves no child behind (one child per session, all stopped)", async () => {
  const pid = await pidOf(alice);
  const second = await connectClient(agent.url, aliceDir);
  cleanups.add(() => second.close());
  const pid2 = await pidOf(second);
  assert.notEqual(pid2, pid, "a second session has its own child");
  assert.ok(alive(pid) && alive(pid2));
  await agent.stop();
  const stopped = agent.logs().find((l) => l.event === "stopped");
  assert.ok(stopped, "the agent stopped gracefully (not killed)");
  for (const p of [pid, pid2]) assert.ok(!alive(p), `child ${p} still running after the agent stopped`);
  for (const l of agent.logs().filter((x) => x.event === "upstream_spawn")) assert.ok(!alive(l.pid), `child ${l.pid} gone`);
});

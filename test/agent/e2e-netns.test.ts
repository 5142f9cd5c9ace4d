/**
 * Network isolation with real namespaces (ip netns + a veth pair, created and removed here; needs root). Namespace A
 * holds the MCP server, bound to A's loopback, and the agent, listening on A's veth address 10.231.0.1. A client in
 * namespace B (10.231.0.2) reaches the tools only through the agent, and cannot reach the server's port at all.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups, REPO_ROOT } from "../helpers/cli.ts";

const TD = "spiffe://example.org";
const tag = randomBytes(3).toString("hex");
const NS_A = `mcpmesh-a-${tag}`;
const NS_B = `mcpmesh-b-${tag}`;
const VETH_A = `mmA${tag}`;
const VETH_B = `mmB${tag}`;
const ADDR_A = "10.231.0.1";
const ADDR_B = "10.231.0.2";
const CHILD = join(REPO_ROOT, "test", "helpers", "netns-child.ts");

function ip(...args: string[]): { ok: boolean; err: string } {
  const r = spawnSync("ip", args, { encoding: "utf8" });
  return { ok: r.status === 0, err: `${r.stderr ?? ""}${r.error?.message ?? ""}` };
}

// Decided before any test runs: skip (with the reason) when namespaces cannot be made here.
let skip: string | false = false;
if (process.getuid?.() !== 0) skip = "needs root for ip netns (CI runs as root)";
else {
  const probe = ip("netns", "add", NS_A);
  if (!probe.ok) skip = `ip netns add failed: ${probe.err.trim()}`;
  else ip("netns", "del", NS_A);
}

const cleanups = new Cleanups();
let mesh: TestMesh;
let agent: AgentProcess;
let upstreamPort: number;
let clientDir: string;

function runIn(ns: string, args: string[], timeoutMs = 60_000): Promise<any> {
  return new Promise((resolve, reject) => {
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, "--import", "tsx", CHILD, ...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(t);
      try {
        resolve(JSON.parse(out.trim().split("\n").pop()!));
      } catch {
        reject(new Error(`${args[0]} in ${ns} exited ${code}: ${err.slice(-3000)}`));
      }
    });
  });
}

before(async () => {
  if (skip) return;
  // Namespaces first, so that cleanup (LIFO) removes them last, after every process in them has stopped.
  cleanups.add(() => {
    ip("netns", "del", NS_A);
    ip("netns", "del", NS_B);
  });
  for (const step of [
    ["netns", "add", NS_A],
    ["netns", "add", NS_B],
    ["link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B],
    ["link", "set", VETH_A, "netns", NS_A],
    ["link", "set", VETH_B, "netns", NS_B],
    ["-n", NS_A, "addr", "add", `${ADDR_A}/24`, "dev", VETH_A],
    ["-n", NS_B, "addr", "add", `${ADDR_B}/24`, "dev", VETH_B],
    ["-n", NS_A, "link", "set", VETH_A, "up"],
    ["-n", NS_B, "link", "set", VETH_B, "up"],
    ["-n", NS_A, "link", "set", "lo", "up"],
    ["-n", NS_B, "link", "set", "lo", "up"],
  ]) {
    const r = ip(...step);
    if (!r.ok) throw new Error(`ip ${step.join(" ")}: ${r.err}`);
  }
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  const agentDir = await mesh.issue("agents/netns", { kind: "agent", ips: [ADDR_A] });
  clientDir = await mesh.issue("team-a/alice");

  // The MCP server, in A, on A's loopback.
  const upChild: ChildProcess = spawn("ip", ["netns", "exec", NS_A, process.execPath, "--import", "tsx", CHILD, "upstream"], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  cleanups.add(
    () =>
      new Promise<void>((resolve) => {
        if (upChild.exitCode !== null || upChild.signalCode !== null) return resolve();
        upChild.once("exit", () => resolve());
        upChild.kill("SIGTERM");
        setTimeout(() => upChild.kill("SIGKILL"), 5000).unref();
      }),
  );
  upstreamPort = await new Promise<number>((resolve, reject) => {
    let out = "";
    upChild.stdout!.on("data", (d) => {
      out += d;
      const m = /"port":(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    upChild.once("exit", (code) => reject(new Error(`upstream in ${NS_A} exited ${code}`)));
  });

  // The agent, in A, bridging the veth address to the loopback server.
  agent = await startAgentProcess(
    mesh.dir,
    {
      listen: `${ADDR_A}:0`,
      identity: agentDir,
      upstream: { url: `http://127.0.0.1:${upstreamPort}/mcp` },
      rules: [{ clients: [`${TD}/team-a/*`], tools: ["echo", "get-*"] }],
      pinning: { file: join(mesh.dir, "pins-netns.json") },
    },
    { wrap: ["ip", "netns", "exec", NS_A] },
  );
  cleanups.add(() => agent.stop());
});

after(() => cleanups.run());

test("a client in namespace B uses the tools through the agent on A's veth address", { skip }, async () => {
  assert.match(agent.url, new RegExp(`^https://${ADDR_A.replace(/\./g, "\\.")}:\\d+/mcp$`));
  const r = await runIn(NS_B, ["client", agent.url, clientDir]);
  assert.deepEqual(r.tools, ["echo", "get-weather"]);
  assert.equal(r.echo, "from namespace B");
});

test("from namespace B the MCP server's port cannot be reached at all", { skip }, async () => {
  // Sanity: the agent's port is reachable from B, so the network itself works.
  assert.equal((await runIn(NS_B, ["probe", ADDR_A, new URL(agent.url).port])).result, "connected");
  // The server's port on A's veth address: nothing listens there (it is bound to A's loopback).
  assert.notEqual((await runIn(NS_B, ["probe", ADDR_A, String(upstreamPort)])).result, "connected");
  // B's own loopback is another stack: the port is not there either.
  assert.notEqual((await runIn(NS_B, ["probe", "127.0.0.1", String(upstreamPort)])).result, "connected");
  // ... while inside A, on its loopback, the server is there (the agent's route to it).
  assert.equal((await runIn(NS_A, ["probe", "127.0.0.1", String(upstreamPort)])).result, "connected");
});

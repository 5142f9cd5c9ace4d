/**
 * Differential conformance: `@modelcontextprotocol/conformance server` runs every active scenario against the
 * conformance server directly, then against the same server behind a real `mcpmesh agent` (reached over mTLS through a
 * loopback relay that uses the mesh fetch). Per-scenario outcomes must match, except the differences listed with a
 * reason in test/conformance/baseline.json; a baseline entry that no longer differs fails too, so the list stays true.
 * Runs on Node 24 (MCPMESH_NODE24) with the suite installed by .ci/run; skips with the reason otherwise.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createMesh } from "../helpers/mesh.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { node24Tool } from "../helpers/node24.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import { startConformanceServer } from "./server.ts";
import { startRelay } from "./relay.ts";
import { unexplainedDifferences, type Baseline, type Outcome } from "./compare.ts";

const TD = "spiffe://example.org";
const tool = node24Tool("@modelcontextprotocol/conformance", "dist/index.js");
const baseline: Baseline = JSON.parse(readFileSync(join(import.meta.dirname, "baseline.json"), "utf8"));


async function runSuite(url: string, outDir: string): Promise<Map<string, Outcome>> {
  const { node, script } = tool as { node: string; script: string };
  const child = spawn(node, [script, "server", "--url", url, "-o", outDir], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (output += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (output += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
  await new Promise((r) => child.on("close", r));
  clearTimeout(timer);
  const out = new Map<string, Outcome>();
  for (const d of readdirSync(outDir)) {
    const m = /^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$/.exec(d);
    if (!m) continue;
    const checks: { id: string; status: string }[] = JSON.parse(readFileSync(join(outDir, d, "checks.json"), "utf8"));
    const failed = checks.filter((c) => c.status === "FAILURE").map((c) => c.id);
    out.set(m[1], { pass: failed.length === 0 && checks.length > 0, failed });
  }
  if (out.size === 0) throw new Error(`the conformance suite produced no results:\n${output.slice(-4000)}`);
  return out;
}

test("conformance: the same scenarios pass directly and through the mesh (differences only as listed in baseline.json)", { skip: typeof tool === "string" ? tool : false, timeout: 900_000 }, async () => {
  const work = mkdtempSync(join(tmpdir(), "mcpmesh-conformance-"));
  after(() => rmSync(work, { recursive: true, force: true }));
  const server = await startConformanceServer();
  after(() => server.close());
  const mesh = await createMesh();
  after(() => mesh.close());
  const agentDir = await mesh.issue("agents/conformance", { kind: "agent" });
  const runner = await mesh.issue("conformance/runner");
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: server.url },
    rules: [{ id: "runner", clients: [`${TD}/conformance/runner`], tools: ["*"], resources: ["test://**"], prompts: ["*"] }],
  });
  after(() => agent.stop());
  const f = createMeshFetch(runner, { expect: `${TD}/agents/conformance` });
  after(() => f.close());
  const relay = await startRelay(agent.url, f);
  after(() => relay.close());

  const direct = await runSuite(server.url, join(work, "direct"));
  const viaMesh = await runSuite(relay.url, join(work, "mesh"));
  // The harness itself works: our conformance server passes the whole active suite when reached directly.
  assert.deepEqual([...direct].filter(([, o]) => !o.pass).map(([s, o]) => `${s}: ${o.failed.join(",")}`), []);
  assert.ok(direct.size >= 25, `only ${direct.size} scenarios ran`);

  assert.deepEqual(unexplainedDifferences(direct, viaMesh, baseline), []);
});

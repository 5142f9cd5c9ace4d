/**
 * What `mcpmesh connect` adds to a desktop client's call: sequential tools/call latency (one client, one call at a
 * time, as a chat client calls tools) in three set-ups against the same upstream, in one run:
 *   direct   SDK client → upstream (plain HTTP)
 *   mesh     SDK client with the mesh fetch → agent (mTLS) → upstream
 *   connect  SDK client over stdio → `mcpmesh connect` → agent (mTLS) → upstream
 *
 *   node --import tsx bench/connect.ts [--calls 500] [--warmup 50]
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { stringify } from "yaml";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { createMeshFetch } from "../identity/fetch.ts";
import { Cleanup, REPO, fmt, intSetting, startBenchMesh, startNode, summarize, table } from "./lib.ts";

const CALLS = Math.max(1, intSetting("calls", "BENCH_CALLS", 500));
const WARMUP = intSetting("warmup", "BENCH_WARMUP", 50);
const TOOL = { name: "read-note", arguments: { title: "welcome" } };

const cleanup = new Cleanup();
const hardCap = setTimeout(() => void cleanup.run().then(() => process.exit(2)), 180_000);

async function measure(transport: Transport): Promise<number[]> {
  const client = new Client({ name: "bench-connect", version: "1.0.0" });
  await client.connect(transport);
  try {
    for (let i = 0; i < WARMUP; i++) await client.callTool(TOOL);
    const out: number[] = [];
    for (let i = 0; i < CALLS; i++) {
      const t0 = performance.now();
      const r = await client.callTool(TOOL);
      out.push(performance.now() - t0);
      if (r.isError) throw new Error(`tool error: ${JSON.stringify(r.content)}`);
    }
    return out;
  } finally {
    await client.close();
  }
}

try {
  const { tmp, agentDir, clientDir, upstream } = await startBenchMesh(cleanup, "mcpmesh-bench-connect-");
  const configFile = join(tmp, "agent.yaml");
  writeFileSync(configFile, stringify({ listen: "127.0.0.1:0", identity: agentDir, upstream: { url: upstream.ready }, rules: [{ clients: ["spiffe://example.org/bench/*"], tools: ["*"] }] }));
  const agent = await startNode(["bin/mcpmesh.js", "agent", "run", "--config", configFile], (line) => {
    try {
      const l = JSON.parse(line) as { event?: string; url?: string };
      return l.event === "listening" ? l.url : undefined;
    } catch {
      return undefined;
    }
  }, { env: { MCPMESH_LOG_LEVEL: "info" } });
  cleanup.add(() => agent.stop());
  const meshFetch = createMeshFetch(clientDir);
  cleanup.add(() => meshFetch.close());

  const rows: [string, number[]][] = [];
  rows.push(["direct", await measure(new StreamableHTTPClientTransport(new URL(upstream.ready)))]);
  rows.push(["mesh", await measure(new StreamableHTTPClientTransport(new URL(agent.ready), { fetch: meshFetch }))]);
  rows.push(["connect", await measure(new StdioClientTransport({ command: process.execPath, args: [join(REPO, "bin", "mcpmesh.js"), "connect", agent.ready, "--identity", clientDir, "--no-renew"], env: { ...process.env, MCPMESH_LOG_LEVEL: "warn" } as Record<string, string>, stderr: "inherit" }))]);
  console.log(`${CALLS} sequential tools/call per set-up after ${WARMUP} warm-up calls, node ${process.version}`);
  console.log(table(["set-up", "p50 ms", "p99 ms", "mean ms", "calls/s"], rows.map(([name, lat]) => {
    const s = summarize(lat, 0, lat.reduce((a, b) => a + b, 0));
    return [name, fmt(s.p50), fmt(s.p99), fmt(s.mean), fmt(s.perSecond, 0)];
  })));
} catch (e) {
  console.error(`bench failed: ${(e as Error).stack ?? e}`);
  process.exitCode = 1;
} finally {
  clearTimeout(hardCap);
  await cleanup.run();
}

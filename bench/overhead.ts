/**
 * The cost of limits, metrics, alerts and the hash-chained audit log on the agent's hot path, before/after in one run.
 *
 *   node --import tsx bench/overhead.ts [--clients 8] [--calls 4000] [--warmup 300] [--rounds 4]
 *
 * Two real agents (`bin/mcpmesh.js agent run`, each in its own process) sit in front of the same upstream
 * (examples/notes-server/server.ts): "baseline" with every usage feature off (`limits.rate.perIdentity: off`,
 * `concurrency: 0`, `coolDown: off`, no admin listener so no metrics, audit without the chain) and "features" with
 * all of them on (per-identity, per-tool and per-class buckets that never bite, a concurrency cap, cool-down, the
 * admin listener and its metrics, alerts, the hash-chained audit file). C connections (raw undici Pool over mTLS, one
 * session each) POST a prebuilt tools/call; the two agents are measured in alternating rounds so drift falls on both.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { stringify } from "yaml";
import { Pool } from "undici";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";
import { loadIdentity } from "../identity/store.ts";
import { verifyAuditFiles } from "../agent/audit.ts";
import { Cleanup, startBenchMesh, fmt, intSetting, processCpuMs, startNode, summarize, table, type Stats } from "./lib.ts";

const CLIENTS = Math.max(1, intSetting("clients", "BENCH_CLIENTS", 8));
const CALLS = Math.max(1, intSetting("calls", "BENCH_CALLS", 4000));
const WARMUP = intSetting("warmup", "BENCH_WARMUP", 300);
const ROUNDS = Math.max(1, intSetting("rounds", "BENCH_ROUNDS", 4));
const EXPECTED_TEXT = "This note lives on a server only the mesh can reach.";
const cleanup = new Cleanup();

type Call = () => Promise<void>;

async function rawCalls(url: string, connect: Record<string, unknown>): Promise<{ calls: Call[]; pool: Pool }> {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections: CLIENTS, connect, pipelining: 1 });
  const base = { "content-type": "application/json", accept: "application/json, text/event-stream" };
  const post = async (headers: Record<string, string>, body: string) => {
    const res = await pool.request({ path: u.pathname, method: "POST", headers, body });
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
  };
  const calls: Call[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const init = await post(base, JSON.stringify({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: LATEST_PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: `ovh-${i}`, version: "1" } } }));
    const sid = init.headers["mcp-session-id"];
    if (init.status !== 200 || typeof sid !== "string") throw new Error(`initialize failed: HTTP ${init.status} ${init.text.slice(0, 200)}`);
    const version = /"protocolVersion":"([^"]+)"/.exec(init.text)?.[1] ?? LATEST_PROTOCOL_VERSION;
    const headers = { ...base, "mcp-session-id": sid, "mcp-protocol-version": version };
    await post(headers, JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }));
    let id = 1;
    calls.push(async () => {
      const r = await post(headers, `{"jsonrpc":"2.0","id":${id++},"method":"tools/call","params":{"name":"read-note","arguments":{"title":"welcome"}}}`);
      if (r.status !== 200 || !r.text.includes(EXPECTED_TEXT)) throw new Error(`unexpected: HTTP ${r.status} ${r.text.slice(0, 200)}`);
    });
  }
  return { calls, pool };
}

async function drive(calls: Call[], total: number): Promise<{ latencies: number[]; wallMs: number }> {
  const latencies: number[] = [];
  let issued = 0;
  const start = performance.now();
  await Promise.all(calls.map(async (call) => {
    while (issued < total) {
      issued++;
      const t0 = performance.now();
      await call();
      latencies.push(performance.now() - t0);
    }
  }));
  return { latencies, wallMs: performance.now() - start };
}

async function main(): Promise<void> {
  console.log(`node ${process.version}, ${cpus().length} CPUs; ${CLIENTS} connections, ${WARMUP} warm-up + ${CALLS} measured calls per agent; tool read-note`);
  const { tmp, agentDir, clientDir, upstream } = await startBenchMesh(cleanup, "mcpmesh-ovh-");

  const common = {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: upstream.ready },
    tools: { "read-note": { access: "read" } },
    pinning: { file: join(tmp, "pins.json") },
  };
  const configs = {
    baseline: {
      ...common,
      rules: [{ clients: ["spiffe://example.org/bench/*"], tools: ["*"] }],
      limits: { rate: { perIdentity: "off" }, concurrency: 0, coolDown: "off" },
      audit: { file: join(tmp, "audit-baseline.log"), chain: false },
      alerts: { firstUseAfter: 0 },
    },
    features: {
      ...common,
      rules: [{ id: "bench", clients: ["spiffe://example.org/bench/*"], tools: ["*"], rate: "100000000/m" }],
      limits: { rate: { perIdentity: "100000000/m", perTool: "100000000/m", perClass: { read: "100000000/m" } }, concurrency: 1000, coolDown: { after: 50, within: "1m", for: "1m" } },
      admin: { listen: "127.0.0.1:0" },
      audit: { file: join(tmp, "audit-features.log"), maxBytes: 4 * 1_048_576, keep: 100 },
      alerts: {},
    },
  };
  const id = loadIdentity(clientDir);
  const connect = { cert: id.certPem, key: id.keyPem, ca: id.rootsPem, minVersion: "TLSv1.3" };
  const modes = {} as Record<"baseline" | "features", { calls: Call[]; pid?: number; admin?: string }>;
  for (const mode of ["baseline", "features"] as const) {
    const file = join(tmp, `${mode}.yaml`);
    writeFileSync(file, stringify(configs[mode]));
    let admin: string | undefined;
    const proc = await startNode(["bin/mcpmesh.js", "agent", "run", "--config", file], (line) => {
      try {
        const l = JSON.parse(line) as { event?: string; url?: string; admin?: string };
        if (l.event === "listening") admin = l.admin;
        return l.event === "listening" ? l.url : undefined;
      } catch {
        return undefined;
      }
    }, { env: { MCPMESH_LOG_LEVEL: "info" } });
    cleanup.add(() => proc.stop());
    const { calls, pool } = await rawCalls(proc.ready, connect);
    cleanup.add(() => pool.close());
    modes[mode] = { calls, pid: proc.child.pid, admin };
  }

  const acc = { baseline: { lat: [] as number[], wall: 0, cpu: 0 }, features: { lat: [] as number[], wall: 0, cpu: 0 } };
  for (const mode of ["baseline", "features"] as const) await drive(modes[mode].calls, WARMUP);
  for (let r = 0; r < ROUNDS; r++) {
    const n = Math.floor(CALLS / ROUNDS);
    const order: Array<"baseline" | "features"> = r % 2 === 0 ? ["baseline", "features"] : ["features", "baseline"];
    for (const mode of order) {
      const c0 = processCpuMs(modes[mode].pid) ?? 0;
      const res = await drive(modes[mode].calls, n);
      acc[mode].cpu += (processCpuMs(modes[mode].pid) ?? 0) - c0;
      acc[mode].lat.push(...res.latencies);
      acc[mode].wall += res.wallMs;
    }
  }
  const stats: Record<string, Stats> = {};
  const rows = (["baseline", "features"] as const).map((mode) => {
    const s = (stats[mode] = summarize(acc[mode].lat, 0, acc[mode].wall));
    return [mode, String(s.calls), fmt(s.perSecond, 0), fmt(s.p50), fmt(s.p99), fmt(s.mean), fmt(acc[mode].cpu / Math.max(1, s.calls), 3)];
  });
  console.log(`\ntools/call read-note through the agent, ${CLIENTS} connections (raw undici Pool over mTLS), ${CALLS} calls per agent`);
  console.log(table(["agent", "calls", "calls/s", "p50 ms", "p99 ms", "mean ms", "agent cpu ms/call"], rows));
  const b = stats.baseline;
  const f = stats.features;
  console.log(`overhead of limits + metrics + alerts + chained audit: p50 ${fmt(f.p50 - b.p50, 3)} ms, p99 ${fmt(f.p99 - b.p99, 3)} ms, ` +
    `agent CPU ${fmt((acc.features.cpu / f.calls - acc.baseline.cpu / b.calls) * 1000, 1)} µs/call; throughput ${fmt((f.perSecond / b.perSecond) * 100, 0)}% of baseline`);
  await new Promise((r) => setTimeout(r, 300));
  const v = verifyAuditFiles([join(tmp, "audit-features.log")]);
  const scrape = modes.features.admin ? await (await fetch(`${modes.features.admin}/metrics`)).text() : "";
  const counted = /mcpmesh_calls_total\{[^}]*tool="read-note",decision="allow"\} (\d+)/.exec(scrape)?.[1];
  console.log(`features agent: audit chain ${v.ok ? "verifies" : `BROKEN (${v.problem?.reason})`} (${v.records} records in the current file), /metrics counted ${counted ?? "?"} allowed read-note calls; baseline audit ${readFileSync(join(tmp, "audit-baseline.log"), "utf8").split("\n").length - 1} lines`);
}

try {
  await main();
  await cleanup.run();
  process.exit(0);
} catch (e) {
  console.error(`bench failed: ${(e as Error).stack ?? e}`);
  await cleanup.run();
  process.exit(1);
}

/**
 * tools/call throughput and latency through the agent vs direct to the same upstream, in one run.
 *
 *   node --import tsx bench/agent.ts [--clients 8] [--calls 3000] [--warmup 200] [--rounds 4] [--no-raw] [--profile]
 *
 * env: BENCH_CLIENTS, BENCH_CALLS, BENCH_WARMUP, BENCH_ROUNDS, BENCH_NO_RAW=1, BENCH_PROFILE=1 (same as the flags).
 *
 * The upstream (examples/notes-server/server.ts) and the agent (the real `bin/mcpmesh.js agent run`) each run in their own
 * process, so this process (the load generator) shares an event loop with neither. C concurrent SDK clients call
 * `read-note {title: "welcome"}` in a loop; the same client code runs in both modes, only the fetch differs (mTLS
 * fetch from identity/fetch.ts to the agent vs plain undici fetch to the upstream). A second table repeats the
 * measurement with a raw undici Pool POSTing a prebuilt tools/call body, without SDK-client overhead.
 * With --profile the agent runs under --cpu-prof and the top functions by self time are printed; with
 * BENCH_PROFILE_DIR=DIR the .cpuprofile files are also kept there (open them in Chrome DevTools).
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { stringify } from "yaml";
import { cpus } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Agent as UndiciAgent, Pool, fetch as undiciFetch, type Dispatcher } from "undici";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";
import { createMeshFetch } from "../identity/fetch.ts";
import { loadIdentity } from "../identity/store.ts";
import { Cleanup, flag, startBenchMesh, fmt, intSetting, processCpuMs, startNode, summarize, table, type Stats } from "./lib.ts";

const CLIENTS = Math.max(1, intSetting("clients", "BENCH_CLIENTS", 8));
const CALLS = Math.max(1, intSetting("calls", "BENCH_CALLS", 3000));
const WARMUP = intSetting("warmup", "BENCH_WARMUP", 200);
const RAW = !flag("no-raw", "BENCH_NO_RAW");
/** Where the agent's .cpuprofile files are kept (BENCH_PROFILE_DIR; implies --profile); otherwise a temp dir. */
const PROFILE_DIR = process.env.BENCH_PROFILE_DIR || undefined;
const PROFILE = PROFILE_DIR !== undefined || flag("profile", "BENCH_PROFILE");
const ROUNDS = Math.max(1, intSetting("rounds", "BENCH_ROUNDS", 4));
const HARD_CAP_MS = 120_000;
const TOOL = { name: "read-note", arguments: { title: "welcome" } };
const EXPECTED_TEXT = "This note lives on a server only the mesh can reach.";

/** A single call; resolves when the result is in, rejects on any error (including a tool error). */
type Call = () => Promise<void>;

const cleanup = new Cleanup();
let finishing: Promise<void> | undefined;
/** Stops every child and removes temp dirs (once, however many paths lead here), then exits. */
async function finish(code: number, why?: unknown): Promise<never> {
  if (!finishing) {
    if (why !== undefined) console.error(`bench failed: ${why instanceof Error ? (why.stack ?? why.message) : String(why)}`);
    finishing = cleanup.run();
  }
  await finishing;
  process.exit(code);
}
const hardCap = setTimeout(() => void finish(2, new Error(`hard cap of ${HARD_CAP_MS / 1000} s reached`)), HARD_CAP_MS);
process.once("SIGINT", () => void finish(130, new Error("interrupted")));
process.once("SIGTERM", () => void finish(143, new Error("terminated")));

/** Runs `total` calls spread over the callers (one loop each), measuring each call's latency. */
async function drive(calls: Call[], total: number): Promise<{ latencies: number[]; errors: number; wallMs: number }> {
  const latencies: number[] = [];
  let issued = 0;
  let errors = 0;
  let firstError: unknown;
  const start = performance.now();
  await Promise.all(
    calls.map(async (call) => {
      while (issued < total) {
        issued++;
        const t0 = performance.now();
        try {
          await call();
          latencies.push(performance.now() - t0);
        } catch (e) {
          errors++;
          firstError ??= e;
          if (errors > Math.max(10, total / 100)) throw new Error(`too many failed calls (${errors}); first: ${(firstError as Error)?.message ?? firstError}`, { cause: e });
        }
      }
    }),
  );
  const wallMs = performance.now() - start;
  if (errors) console.error(`  ${errors} failed calls; first: ${(firstError as Error)?.message ?? firstError}`);
  return { latencies, errors, wallMs };
}

/** CPU time used per measured call, in ms, by each process (undefined where /proc is not there). */
interface CpuPerCall {
  loadgen: number;
  agent?: number;
  upstream?: number;
}
interface Result {
  stats: Stats;
  cpu: CpuPerCall;
}

/** The processes whose CPU time is charged to each measured call. */
const pids: { agent?: number; upstream?: number } = {};

function cpuNow(): { loadgen: number; agent?: number; upstream?: number } {
  const u = process.cpuUsage();
  return { loadgen: (u.user + u.system) / 1000, agent: processCpuMs(pids.agent), upstream: processCpuMs(pids.upstream) };
}

/**
 * Warms both modes up, then measures them in alternating rounds (direct, agent, agent, direct, ...) so that JIT
 * warm-up, GC and machine drift fall on both alike. Calls/s is measured calls over the time spent in that mode.
 */
async function compare(label: string, direct: Call[], agent: Call[]): Promise<{ direct: Result; agent: Result }> {
  const blank = () => ({ latencies: [] as number[], errors: 0, wallMs: 0, cpu: { loadgen: 0, agent: 0 as number | undefined, upstream: 0 as number | undefined } });
  const acc = { direct: blank(), agent: blank() };
  if (WARMUP) {
    await drive(direct, WARMUP);
    await drive(agent, WARMUP);
  }
  for (let r = 0; r < ROUNDS; r++) {
    const n = Math.floor(CALLS / ROUNDS) + (r < CALLS % ROUNDS ? 1 : 0);
    const order: Array<"direct" | "agent"> = r % 2 === 0 ? ["direct", "agent"] : ["agent", "direct"];
    for (const mode of order) {
      const before = cpuNow();
      const res = await drive(mode === "direct" ? direct : agent, n);
      const after = cpuNow();
      const m = acc[mode];
      m.latencies.push(...res.latencies);
      m.errors += res.errors;
      m.wallMs += res.wallMs;
      m.cpu.loadgen += after.loadgen - before.loadgen;
      for (const k of ["agent", "upstream"] as const) m.cpu[k] = m.cpu[k] === undefined || after[k] === undefined || before[k] === undefined ? undefined : m.cpu[k] + after[k] - before[k];
    }
  }
  const result = (m: ReturnType<typeof blank>): Result => {
    const n = Math.max(1, m.latencies.length + m.errors);
    return {
      stats: summarize(m.latencies, m.errors, m.wallMs),
      cpu: { loadgen: m.cpu.loadgen / n, agent: m.cpu.agent === undefined ? undefined : m.cpu.agent / n, upstream: m.cpu.upstream === undefined ? undefined : m.cpu.upstream / n },
    };
  };
  const out = { direct: result(acc.direct), agent: result(acc.agent) };
  for (const mode of ["direct", "agent"] as const) {
    const s = out[mode].stats;
    console.error(`  ${label} ${mode.padEnd(6)}: ${fmt(s.perSecond, 0)} calls/s, p50 ${fmt(s.p50)} ms, p99 ${fmt(s.p99)} ms`);
  }
  return out;
}

/** C SDK clients over Streamable HTTP with the given fetch; one session each. */
async function sdkCalls(url: string, fetchFn: typeof fetch): Promise<{ calls: Call[]; close(): Promise<void> }> {
  const clients: Client[] = [];
  const close = async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
  };
  try {
    for (let i = 0; i < CLIENTS; i++) {
      const client = new Client({ name: `bench-${i}`, version: "1.0.0" });
      await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch: fetchFn }));
      clients.push(client);
    }
  } catch (e) {
    await close();
    throw e;
  }
  const calls = clients.map((client) => async () => {
    const r = await client.callTool(TOOL);
    const content = r.content as Array<{ type: string; text?: string }>;
    if (r.isError || content?.[0]?.text !== EXPECTED_TEXT) throw new Error(`unexpected result: ${JSON.stringify(r).slice(0, 300)}`);
  });
  return { calls, close };
}

/**
 * C sessions initialized by hand over one undici Pool; each call POSTs a prebuilt tools/call body and reads the whole
 * response (JSON or an SSE stream, whichever the server picks).
 */
async function rawCalls(url: string, connect: Record<string, unknown> | undefined): Promise<{ calls: Call[]; close(): Promise<void> }> {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections: CLIENTS, connect, pipelining: 1 });
  const base = { "content-type": "application/json", accept: "application/json, text/event-stream" };
  const post = async (headers: Record<string, string>, body: string) => {
    const res = await pool.request({ path: u.pathname, method: "POST", headers, body });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text };
  };
  try {
    const calls: Call[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const init = await post(base, JSON.stringify({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: LATEST_PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: `bench-raw-${i}`, version: "1.0.0" } } }));
      const sid = init.headers["mcp-session-id"];
      if (init.status !== 200 || typeof sid !== "string") throw new Error(`raw initialize failed: HTTP ${init.status} ${init.text.slice(0, 300)}`);
      const version = /"protocolVersion":"([^"]+)"/.exec(init.text)?.[1] ?? LATEST_PROTOCOL_VERSION;
      const headers = { ...base, "mcp-session-id": sid, "mcp-protocol-version": version };
      const note = await post(headers, JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }));
      if (note.status !== 202) throw new Error(`raw notifications/initialized: HTTP ${note.status} ${note.text.slice(0, 300)}`);
      let id = 1;
      calls.push(async () => {
        const r = await post(headers, `{"jsonrpc":"2.0","id":${id++},"method":"tools/call","params":{"name":"read-note","arguments":{"title":"welcome"}}}`);
        if (r.status !== 200 || !r.text.includes(EXPECTED_TEXT) || r.text.includes('"isError":true')) throw new Error(`unexpected raw result: HTTP ${r.status} ${r.text.slice(0, 300)}`);
      });
    }
    return { calls, close: () => pool.close() };
  } catch (e) {
    await pool.destroy();
    throw e;
  }
}

const cpuCell = (ms: number | undefined) => (ms === undefined ? "-" : fmt(ms));

function row(mode: string, r: Result): string[] {
  const s = r.stats;
  return [mode, String(s.calls), String(s.errors), fmt(s.perSecond, 0), fmt(s.p50), fmt(s.p99), fmt(s.mean), fmt(s.max), cpuCell(r.cpu.loadgen), cpuCell(r.cpu.agent), cpuCell(r.cpu.upstream)];
}
const HEADER = ["mode", "calls", "errors", "calls/s", "p50 ms", "p99 ms", "mean ms", "max ms", "cpu/call: loadgen", "agent", "upstream"];

function report(title: string, r: { direct: Result; agent: Result }): void {
  const d = r.direct.stats;
  const a = r.agent.stats;
  console.log(`\n${title}`);
  console.log(table(HEADER, [row("direct", r.direct), row("agent", r.agent)]));
  console.log(
    `added latency per call (agent p50 - direct p50): ${fmt(a.p50 - d.p50)} ms (p99: ${fmt(a.p99 - d.p99)} ms);` +
      ` throughput through the agent: ${fmt((a.perSecond / d.perSecond) * 100, 0)}% of direct`,
  );
}

/** Top functions by self time in the agent's CPU profile(s). */
function printProfile(dir: string): void {
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
  if (files.length === 0) {
    console.log("\n(no CPU profile was written by the agent)");
    return;
  }
  const self = new Map<string, number>();
  const byPackage = new Map<string, number>();
  let totalUs = 0;
  for (const f of files) {
    const prof = JSON.parse(readFileSync(join(dir, f), "utf8")) as {
      nodes: Array<{ id: number; hitCount?: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
      samples: number[];
      timeDeltas: number[];
    };
    const nodes = new Map(prof.nodes.map((n) => [n.id, n]));
    prof.samples.forEach((id, i) => {
      const dt = prof.timeDeltas[i] ?? 0;
      const cf = nodes.get(id)?.callFrame;
      if (!cf || cf.functionName === "(idle)") return;
      totalUs += dt;
      const url = cf.url.replace(/^file:\/\//, "");
      const short = url.includes("/node_modules/") ? url.slice(url.lastIndexOf("/node_modules/") + 14) : url.replace(`${process.cwd()}/`, "");
      const key = `${cf.functionName || "(anonymous)"}  ${short ? `${short}:${cf.lineNumber + 1}` : ""}`;
      self.set(key, (self.get(key) ?? 0) + dt);
      const pkg = !url ? cf.functionName || "(native)" : url.startsWith("node:") ? "node: internals" : url.includes("/node_modules/") ? (short.startsWith("@") ? short.split("/").slice(0, 2).join("/") : short.split("/")[0]) : `mcpmesh ${short.split("/")[0]}/`;
      byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + dt);
    });
  }
  const top = (m: Map<string, number>, n: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, us]) => [k, fmt(us / 1000, 0), fmt((us / totalUs) * 100, 1)]);
  console.log(`\nagent CPU profile: ${fmt(totalUs / 1e6, 1)} s busy (not idle) over the agent's whole life, startup included (${files.length} thread(s)); self time`);
  console.log(table(["by package / area", "self ms", "%"], top(byPackage, 12)));
  console.log();
  console.log(table(["top functions by self time", "self ms", "%"], top(self, 25)));
}

async function main(): Promise<void> {
  console.log(`node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? "?"}); ${CLIENTS} concurrent clients, ${WARMUP} warm-up + ${CALLS} measured calls per mode; tool read-note`);

  const { tmp, agentDir, clientDir, upstream } = await startBenchMesh(cleanup, "mcpmesh-bench-");
  const upstreamUrl = upstream.ready;
  pids.upstream = upstream.child.pid;

  // The agent: the real binary in its own process (spawned here rather than by test/helpers/agent-process.ts so that
  // --cpu-prof can be given: Node 20 refuses it in NODE_OPTIONS).
  const profDir = PROFILE_DIR ?? join(tmp, "prof");
  const configFile = join(tmp, "agent.yaml");
  writeFileSync(
    configFile,
    stringify({
      listen: "127.0.0.1:0",
      identity: agentDir,
      upstream: { url: upstreamUrl },
      tools: { "read-note": { access: "read" } },
      rules: [{ clients: ["spiffe://example.org/bench/*"], tools: ["*"] }],
      pinning: { file: join(tmp, "pins.json") },
      audit: { file: join(tmp, "audit.log") },
    }),
  );
  const agentProc = await startNode(
    [...(PROFILE ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`] : []), "bin/mcpmesh.js", "agent", "run", "--config", configFile],
    (line) => {
      try {
        const l = JSON.parse(line) as { event?: string; url?: string };
        return l.event === "listening" && typeof l.url === "string" ? l.url : undefined;
      } catch {
        return undefined;
      }
    },
    { env: { MCPMESH_LOG_LEVEL: "info" } },
  );
  cleanup.add(() => agentProc.stop());
  pids.agent = agentProc.child.pid;
  if (!agentProc.ready.startsWith("https://127.0.0.1:")) throw new Error(`agent listens on ${agentProc.ready}, expected https://127.0.0.1:PORT`);
  const agentUrl = new URL("/mcp", agentProc.ready).href;
  console.log(`upstream ${upstreamUrl} (own process), agent ${agentUrl} (own process: bin/mcpmesh.js agent run${PROFILE ? " under --cpu-prof" : ""})`);

  // SDK clients: the same code both ways; only the fetch differs.
  const plain = new UndiciAgent();
  cleanup.add(() => plain.destroy());
  const plainFetch = ((input: any, init?: any) => undiciFetch(input, { ...(init ?? {}), dispatcher: plain as Dispatcher })) as unknown as typeof fetch;
  // follow: false: the identity does not change during the run, and re-reading it from disk on every request
  // (the default) would charge the load generator, not the agent.
  const meshFetch = createMeshFetch(clientDir, { follow: false });
  cleanup.add(() => meshFetch.close());

  console.error("SDK clients:");
  const d = await sdkCalls(upstreamUrl, plainFetch);
  cleanup.add(() => d.close());
  const a = await sdkCalls(agentUrl, meshFetch);
  cleanup.add(() => a.close());
  const sdk = await compare("sdk", d.calls, a.calls);
  await a.close();
  await d.close();

  let raw: { direct: Result; agent: Result } | undefined;
  if (RAW) {
    console.error("raw undici Pool:");
    const id = loadIdentity(clientDir);
    const rd = await rawCalls(upstreamUrl, undefined);
    cleanup.add(() => rd.close());
    const ra = await rawCalls(agentUrl, { cert: id.certPem, key: id.keyPem, ca: id.rootsPem, minVersion: "TLSv1.3" });
    cleanup.add(() => ra.close());
    raw = await compare("raw", rd.calls, ra.calls);
  }

  const audited = readFileSync(join(tmp, "audit.log"), "utf8").split("\n").filter(Boolean).length;

  report(`tools/call read-note, ${CLIENTS} concurrent MCP SDK clients (Streamable HTTP), ${CALLS} calls per mode`, sdk);
  if (raw) report(`tools/call read-note, raw undici Pool (${CLIENTS} connections, one session each, prebuilt body), ${CALLS} calls per mode`, raw);
  console.log("cpu/call: CPU time (user+system, ms) each process used per measured call while that mode ran");
  console.log(`\nagent audit log: ${audited} lines`);

  if (PROFILE) {
    await agentProc.stop(); // the profile is written when the agent exits
    printProfile(profDir);
  }
}

try {
  await main();
  clearTimeout(hardCap);
  await finish(0);
} catch (e) {
  await finish(1, e);
}

/**
 * Issuance throughput of the mesh CA: certificates signed per second
 *   - through the HTTPS API: N enrollments against a real `mcpmesh ca serve` process, each a fresh TLS connection
 *     with its own one-time token and CSR, `concurrency` in flight at once;
 *   - in-process: `Authority.enroll` called directly, same N and concurrency, same SQLite durability.
 * Tokens and CSRs are made before the clock starts; only issuance is timed. Each path gets its own throwaway CA in a
 * temp dir, removed at the end.
 *
 *   node --import tsx bench/issuance.ts [--n 200] [--concurrency 200] [--warmup 10]
 *   (or MCPMESH_BENCH_N / MCPMESH_BENCH_CONCURRENCY / MCPMESH_BENCH_WARMUP)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";
import { parseArgs } from "node:util";
import { Authority, createToken } from "../ca/authority.ts";
import { caRequest } from "../identity/ca-client.ts";
import { newKeyAndCsr } from "../identity/enroll.ts";

const PASSPHRASE = "bench passphrase, not a secret";
const BIN = join(import.meta.dirname, "..", "bin", "mcpmesh.js");

function options(): { n: number; concurrency: number; warmup: number } {
  const { values } = parseArgs({ options: { n: { type: "string" }, concurrency: { type: "string" }, warmup: { type: "string" } } });
  const int = (v: string | undefined, env: string, dflt: number, name: string) => {
    const raw = v ?? process.env[env];
    if (raw === undefined) return dflt;
    const x = Number(raw);
    if (!Number.isInteger(x) || x < 0) throw new Error(`--${name}: "${raw}" is not a non-negative integer`);
    return x;
  };
  const n = int(values.n, "MCPMESH_BENCH_N", 200, "n");
  if (n < 1) throw new Error("--n must be at least 1");
  return { n, concurrency: Math.max(1, int(values.concurrency, "MCPMESH_BENCH_CONCURRENCY", n, "concurrency")), warmup: int(values.warmup, "MCPMESH_BENCH_WARMUP", 10, "warmup") };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** `mcpmesh ca serve`, resolved once it logs "listening". */
function serve(dir: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, MCPMESH_CA_PASSPHRASE: PASSPHRASE, MCPMESH_LOG_LEVEL: "warn" };
    delete env.NODE_OPTIONS;
    // Log level warn keeps the per-request info lines out of the measurement; "listening" is info, so poll /healthz.
    const child = spawn(process.execPath, [BIN, "ca", "serve", "--dir", dir], { env, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
    child.once("exit", (code) => reject(new Error(`ca serve exited (${code}) before it was ready:\n${err}`)));
    resolve(child);
  });
}

async function waitHealthy(url: string, rootPem: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error("ca serve exited");
    try {
      const r = await caRequest({ baseUrl: url, method: "GET", path: "/healthz", ca: rootPem, timeoutMs: 2000 });
      if (r.status === 200) return;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error("ca serve did not come up within 60 s");
    await new Promise((r) => setTimeout(r, 100));
  }
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", () => {
      clearTimeout(killer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

interface Job {
  token: string;
  csr: string;
}

async function prepare(dir: string, count: number, prefix: string): Promise<Job[]> {
  const { config, store } = Authority.openStore(dir);
  try {
    const jobs: Job[] = [];
    for (let i = 0; i < count; i++) {
      const { token } = createToken(store, config, { identity: `bench/${prefix}-${i}`, ttlMs: 3_600_000 }, Date.now());
      jobs.push({ token, csr: (await newKeyAndCsr()).csrPem });
    }
    return jobs;
  } finally {
    store.close();
  }
}

/** Runs `fn` over the jobs with at most `concurrency` in flight; returns per-call latencies and the wall time. */
async function run(jobs: Job[], concurrency: number, fn: (j: Job) => Promise<void>): Promise<{ latencies: number[]; wallMs: number }> {
  const latencies: number[] = [];
  let next = 0;
  const start = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      const t = performance.now();
      await fn(job);
      latencies.push(performance.now() - t);
    }
  }));
  return { latencies, wallMs: performance.now() - start };
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function row(path: string, n: number, concurrency: number, r: { latencies: number[]; wallMs: number }): string[] {
  const sorted = [...r.latencies].sort((a, b) => a - b);
  return [path, String(n), String(concurrency), (r.wallMs / 1000).toFixed(2), (n / (r.wallMs / 1000)).toFixed(1), pct(sorted, 50).toFixed(1), pct(sorted, 99).toFixed(1)];
}

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ");
  return [line(header), w.map((x) => "-".repeat(x)).join("  "), ...rows.map(line)].join("\n");
}

async function main(): Promise<void> {
  const { n, concurrency, warmup } = options();
  const root = mkdtempSync(join(tmpdir(), "mcpmesh-bench-"));
  let server: ChildProcess | undefined;
  let direct: Authority | undefined;
  try {
    // --- HTTPS: a CA served by the real binary ---
    const httpsDir = join(root, "https-ca");
    const url = `https://127.0.0.1:${await freePort()}`;
    (await Authority.init({ dir: httpsDir, trustDomain: "bench.example", url, passphrase: PASSPHRASE })).close();
    server = await serve(httpsDir);
    const rootPem = readFileSync(join(httpsDir, "root.pem"), "utf8");
    await waitHealthy(url, rootPem, server);
    process.stderr.write(`preparing ${warmup + n} tokens and CSRs for HTTPS...\n`);
    const httpsJobs = await prepare(httpsDir, warmup + n, "https");
    const enrollHttps = async (j: Job) => {
      const r = await caRequest({ baseUrl: url, method: "POST", path: "/v1/enroll", body: { token: j.token, csr: j.csr }, ca: rootPem, timeoutMs: 120_000 });
      if (r.status !== 201) throw new Error(`enroll answered ${r.status}: ${r.body.toString()}`);
    };
    await run(httpsJobs.slice(0, warmup), Math.min(concurrency, 4), enrollHttps);
    process.stderr.write(`timing ${n} HTTPS enrollments (${concurrency} concurrent)...\n`);
    const https = await run(httpsJobs.slice(warmup), concurrency, enrollHttps);

    // --- in-process: Authority.enroll on its own CA ---
    const directDir = join(root, "direct-ca");
    (await Authority.init({ dir: directDir, trustDomain: "bench.example", url: "https://127.0.0.1:9", passphrase: PASSPHRASE })).close();
    process.stderr.write(`preparing ${warmup + n} tokens and CSRs in-process...\n`);
    const directJobs = await prepare(directDir, warmup + n, "direct");
    direct = await Authority.open({ dir: directDir, passphrase: PASSPHRASE });
    const a = direct;
    const enrollDirect = async (j: Job) => {
      await a.enroll(j.token, j.csr);
    };
    await run(directJobs.slice(0, warmup), Math.min(concurrency, 4), enrollDirect);
    process.stderr.write(`timing ${n} in-process enrollments (${concurrency} concurrent)...\n`);
    const inProcess = await run(directJobs.slice(warmup), concurrency, enrollDirect);

    const issued = a.list().filter((c) => c.kind === "client").length;
    if (issued !== warmup + n) throw new Error(`in-process CA recorded ${issued} certificates, expected ${warmup + n}`);

    console.log(`mcpmesh CA issuance — node ${process.version}, ${cpus().length} CPU(s), load ${loadavg().map((l) => l.toFixed(2)).join(" ")}`);
    console.log("ECDSA P-256 leaves, SQLite WAL synchronous=FULL; HTTPS = new TLS 1.3 connection per enrollment to `mcpmesh ca serve`\n");
    console.log(table(["path", "N", "concurrency", "total s", "certs/s", "p50 ms", "p99 ms"], [row("https api", n, concurrency, https), row("in-process", n, concurrency, inProcess)]));
  } finally {
    direct?.close();
    if (server) await stop(server);
    rmSync(root, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench/issuance: ${(e as Error).stack ?? String(e)}`);
  process.exitCode = 1;
});

/**
 * Small helpers shared by the benchmarks in bench/: latency statistics, a plain-text table, child processes that are
 * always stopped, and a hard time cap.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";

export const REPO = join(import.meta.dirname, "..");

export interface Stats {
  calls: number;
  errors: number;
  seconds: number;
  perSecond: number;
  p50: number;
  p99: number;
  mean: number;
  max: number;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export function summarize(latenciesMs: number[], errors: number, wallMs: number): Stats {
  const sorted = Float64Array.from(latenciesMs).sort();
  const arr = Array.from(sorted);
  const sum = arr.reduce((a, b) => a + b, 0);
  return {
    calls: arr.length,
    errors,
    seconds: wallMs / 1000,
    perSecond: arr.length / (wallMs / 1000),
    p50: percentile(arr, 50),
    p99: percentile(arr, 99),
    mean: arr.length ? sum / arr.length : NaN,
    max: arr.length ? arr[arr.length - 1] : NaN,
  };
}

/** Renders rows as an aligned table; the first column is left-aligned, the others right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

export const fmt = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : "-");

/** Reads an integer setting from `--name N` / `--name=N` on the command line, then env `ENV`, then the default. */
export function intSetting(name: string, env: string, def: number): number {
  const argv = process.argv.slice(2);
  let raw: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) raw = argv[i + 1];
    else if (argv[i].startsWith(`--${name}=`)) raw = argv[i].slice(name.length + 3);
  }
  raw ??= process.env[env];
  if (raw === undefined || raw === "") return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} / ${env} must be a non-negative integer, got "${raw}"`);
  return n;
}

export function flag(name: string, env: string): boolean {
  if (process.argv.slice(2).includes(`--${name}`)) return true;
  const v = process.env[env];
  return v !== undefined && v !== "" && v !== "0" && v !== "false";
}

/**
 * Things to undo at the end, last registered first; each runs once, and a step that takes longer than `stepMs` is
 * left behind so the steps after it (stopping child processes, removing temp dirs) still run.
 */
export class Cleanup {
  #steps: Array<() => unknown> = [];
  constructor(readonly stepMs = 8000) {}
  add(step: () => unknown): void {
    this.#steps.push(step);
  }
  async run(): Promise<void> {
    while (this.#steps.length) {
      const step = this.#steps.pop()!;
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          Promise.resolve().then(step),
          new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`took over ${this.stepMs} ms; left behind`)), this.stepMs))),
        ]);
      } catch (e) {
        console.error(`cleanup step failed: ${(e as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
    }
  }
}

export interface Child {
  child: ChildProcess;
  /** What `ready` returned for the line that made the child ready. */
  ready: string;
  stop(): Promise<void>;
}

/**
 * Starts `node ARGS...` in the repo and waits until `ready` returns a string for a line of its stdout or stderr.
 * The child is stopped (SIGTERM, then SIGKILL after 5 s) if it does not get ready within `ms`.
 */
export async function startNode(args: string[], ready: (line: string) => string | undefined, opts: { ms?: number; env?: Record<string, string> } = {}): Promise<Child> {
  const ms = opts.ms ?? 30_000;
  const child = spawn(process.execPath, args, { cwd: REPO, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...opts.env } });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    }
  };
  let tail = "";
  try {
    const found = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`node ${args.join(" ")} not ready within ${ms} ms:\n${tail}`)), ms);
      let done = false;
      const lines = () => {
        let buf = "";
        return (c: Buffer) => {
          const text = c.toString("utf8");
          tail = (tail + text).slice(-4000);
          if (done) return;
          buf += text;
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const hit = ready(buf.slice(0, nl));
            buf = buf.slice(nl + 1);
            if (hit !== undefined) {
              done = true;
              clearTimeout(timer);
              resolve(hit);
              return;
            }
          }
        };
      };
      // Both pipes stay drained for the child's whole life, so a chatty child never blocks on a full pipe.
      child.stdout!.on("data", lines());
      child.stderr!.on("data", lines());
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`node ${args.join(" ")} exited (${code ?? signal}) before it was ready:\n${tail}`));
      });
    });
    return { child, ready: found, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * CPU time (user + system, all threads) a process has used so far, in ms, from /proc (Linux); undefined elsewhere.
 * For this process use `process.cpuUsage()` instead (same thing, finer grained).
 */
export function processCpuMs(pid: number | undefined, tid?: number): number | undefined {
  if (pid === undefined) return undefined;
  try {
    // With `tid`, one thread's CPU (/proc/PID/task/TID/stat, same layout); the main thread's TID is the PID.
    const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, "utf8");
    // The command name (field 2) may contain spaces; the fields after its closing parenthesis are plain.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields[0] is field 3 (state): utime is field 14, stime field 15; in clock ticks (USER_HZ, 100 on Linux).
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}
const CLOCK_TICKS = 100;

/**
 * What every agent benchmark starts from: a temp dir, a throwaway mesh with an agent and a client identity, and the
 * notes MCP server in its own process. Everything is registered with `cleanup`.
 */
export async function startBenchMesh(cleanup: Cleanup, prefix: string): Promise<{ tmp: string; agentDir: string; clientDir: string; upstream: Child }> {
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { createMesh } = await import("../test/helpers/mesh.ts");
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  cleanup.add(() => rmSync(tmp, { recursive: true, force: true }));
  const mesh = await createMesh();
  cleanup.add(() => mesh.close());
  const agentDir = await mesh.issue("bench/agent", { kind: "agent" });
  const clientDir = await mesh.issue("bench/client", { kind: "client" });
  const upstream = await startNode(["--import", "tsx", "examples/notes-server/server.ts", "0"], (line) => /^notes MCP server on (http:\/\/127\.0\.0\.1:\d+\/mcp)$/.exec(line)?.[1]);
  cleanup.add(() => upstream.stop());
  return { tmp, agentDir, clientDir, upstream };
}

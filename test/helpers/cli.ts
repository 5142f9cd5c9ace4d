/**
 * Drives the real `mcpmesh` binary (bin/mcpmesh.js, run with this very Node) as a child process: one-shot commands
 * with their stdout, stderr and exit code, and long-running servers (`ca serve`) that are considered up once they log
 * `"event":"listening"`. Everything started here is stopped by the cleanup the caller registers.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir as osTmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = join(REPO_ROOT, "bin", "mcpmesh.js");

/** Registers a cleanup function: `after`, `(fn) => t.after(fn)`, or a Cleanups stack's `add`. */
export type Defer = (fn: () => unknown) => void;

/** A LIFO stack of cleanups, for fixtures built inside `before` hooks: `after(() => stack.run())`. */
export class Cleanups {
  readonly #fns: (() => unknown)[] = [];
  add: Defer = (fn) => {
    this.#fns.push(fn);
  };
  async run(): Promise<void> {
    const errors: unknown[] = [];
    while (this.#fns.length > 0) {
      const fn = this.#fns.pop()!;
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, "cleanup failed");
  }
}

/** A fresh private temporary directory, removed (recursively) in cleanup. */
export function tmpdir(defer: Defer, prefix = "mcpmesh-test-"): string {
  const dir = mkdtempSync(join(osTmpdir(), prefix));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Variables to set; `undefined` removes one from the inherited environment. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Generous: a busy 2-core machine compiles the CLI with tsx on every start. */
  timeoutMs?: number;
}

function childEnv(env: CliOptions["env"]): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...process.env };
  // The test runner's own options (--import tsx, --test...) must not leak into the CLI.
  delete out.NODE_OPTIONS;
  delete out.NODE_TEST_CONTEXT;
  for (const [k, v] of Object.entries(env ?? {})) {
    if (v === undefined) delete out[k];
    else out[k] = v;
  }
  return out;
}

/** Runs `mcpmesh ARGS...` to completion. */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? REPO_ROOT, env: childEnv(opts.env), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`mcpmesh ${args.join(" ")}: no exit within ${opts.timeoutMs ?? 60_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, opts.timeoutMs ?? 60_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
}

/** Runs a command that must succeed; throws with its output otherwise. */
export async function runCliOk(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const r = await runCli(args, opts);
  if (r.code !== 0) throw new Error(`mcpmesh ${args.join(" ")} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

export interface RunningProcess {
  child: ChildProcess;
  /** The URL from the `listening` log line. */
  url: string;
  /** Everything the process wrote to stderr so far (its JSON log). */
  stderr(): string;
  stdout(): string;
  /** Resolves with the exit code / signal once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then waits for the exit (SIGKILL after `graceMs`). Idempotent. */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts a long-running `mcpmesh ARGS...` and resolves once it logs `"event":"listening"` on stderr. If the process
 * exits first, or nothing is heard within `startTimeoutMs`, rejects with its output (and makes sure it is gone).
 */
export function startCli(args: string[], defer: Defer, opts: CliOptions & { startTimeoutMs?: number } = {}): Promise<RunningProcess> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? REPO_ROOT, env: childEnv(opts.env), stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.on("close", (code, signal) => res({ code, signal }));
  });
  let exitedYet = false;
  void exited.then(() => (exitedYet = true));
  const stop = async (graceMs = 10_000) => {
    if (!exitedYet) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(killer);
      }
    }
    return exited;
  };
  defer(() => stop());
  return new Promise((resolvePromise, reject) => {
    let done = false;
    const fail = (why: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      void stop().then(() => reject(new Error(`mcpmesh ${args.join(" ")}: ${why}\nstdout: ${stdout}\nstderr: ${stderr}`)));
    };
    const timer = setTimeout(() => fail(`did not log "listening" within ${opts.startTimeoutMs ?? 60_000} ms`), opts.startTimeoutMs ?? 60_000);
    child.on("error", (e) => fail(`cannot start: ${e.message}`));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
      if (done) return;
      for (const line of stderr.split("\n")) {
        if (!line.includes('"event":"listening"')) continue;
        let url: string;
        try {
          url = (JSON.parse(line) as { url: string }).url;
        } catch {
          continue; // a partial line; the rest comes with the next chunk
        }
        done = true;
        clearTimeout(timer);
        resolvePromise({ child, url, stderr: () => stderr, stdout: () => stdout, exited, stop });
        return;
      }
    });
    void exited.then(({ code, signal }) => fail(`exited (${code ?? signal}) before listening`));
  });
}

/** Parses JSON log lines from a process's stderr (non-JSON lines are skipped). */
export function logLines(stderr: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of stderr.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      /* partial line */
    }
  }
  return out;
}

/** Maps `items` through `fn` with at most `limit` running at once (CLI tables on a small machine). */
export async function inParallel<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

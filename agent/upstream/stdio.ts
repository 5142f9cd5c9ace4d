import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { JSONRPCMessageSchema, type JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import type { Logger } from "../../lib/log.ts";
import type { RestartConfig } from "../config.ts";
import { idKey } from "../jsonrpc.ts";
import type { UpstreamConnector } from "./connector.ts";
import { UpstreamError } from "./http.ts";
import { errorFor, InFlight, isRequest } from "./inflight.ts";

/** What a stdio child gets from the agent's own environment without being asked: enough to run, no secrets. */
export const DEFAULT_INHERITED_ENV = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"] as const;

/** Bytes queued for a child's stdin beyond which requests are refused: a child that stops reading cannot grow the agent. */
export const MAX_STDIN_BUFFER_BYTES = 8 * 1024 * 1024;

/** A stdout line longer than this is a broken child: it is killed (and restarted) rather than buffered further. */
export const MAX_STDOUT_LINE_BYTES = 64 * 1024 * 1024;

export interface StderrLimits {
  /** Longer lines are cut, with a note of how much was cut. */
  maxLineChars: number;
  /** Token bucket shared by every child of a connector: burst, then lines per second. */
  burst: number;
  perSecond: number;
}

export const DEFAULT_STDERR_LIMITS: StderrLimits = { maxLineChars: 2000, burst: 200, perSecond: 50 };

export interface StdioConnectorOptions {
  command: string[];
  env?: Record<string, string>;
  inheritEnv?: string[];
  cwd?: string;
  restart: RestartConfig;
  /** How long a replayed `initialize` may take before the new child is considered hung (and killed). */
  timeoutMs: number;
  logger: Logger;
  /** SIGTERM, then SIGKILL after this long. Default 2 s. */
  killGraceMs?: number;
  stderr?: Partial<StderrLimits>;
  /** A stdout line longer than this kills the child (it is broken). Default MAX_STDOUT_LINE_BYTES. */
  maxStdoutLineBytes?: number;
  /** Default MAX_STDIN_BUFFER_BYTES. */
  maxStdinBufferBytes?: number;
  /** The environment DEFAULT_INHERITED_ENV and inheritEnv read from. Default process.env. */
  baseEnv?: NodeJS.ProcessEnv;
}

/**
 * The child's whole environment: DEFAULT_INHERITED_ENV and `inheritEnv` copied from the agent's environment where set,
 * then `env` from the config over them. Nothing else of the agent's environment (tokens, passphrases, cloud
 * credentials) reaches the child.
 */
export function childEnvironment(opts: { env?: Record<string, string>; inheritEnv?: string[]; baseEnv?: NodeJS.ProcessEnv }): Record<string, string> {
  const base = opts.baseEnv ?? process.env;
  const out: Record<string, string> = {};
  for (const name of [...DEFAULT_INHERITED_ENV, ...(opts.inheritEnv ?? [])]) {
    const v = base[name];
    if (v !== undefined) out[name] = v;
  }
  for (const [k, v] of Object.entries(opts.env ?? {})) out[k] = v;
  return out;
}

/**
 * A stdio MCP server run by the agent: one child process per downstream session. A stdio server is built for one
 * client — its state, its server→client requests (sampling, elicitation) and its notifications have no addressing —
 * so sharing one child would mix identities; one child each keeps them apart at the cost of a process per session.
 *
 * The command comes from the config only (argv, no shell); the environment is `childEnvironment()`. A child that exits
 * while its channel is open is a crash: each in-flight request gets a JSON-RPC error (-32000, "upstream process exited
 * with code N"), then the child is restarted with exponential backoff and jitter, and the channel replays the
 * session's `initialize` (the response is swallowed) and `notifications/initialized` before passing anything else,
 * so the downstream session carries on. Requests that arrive while the child is down get an error at once; after
 * `restart.maxRestarts` consecutive rapid crashes the channel gives up and closes. stderr lines go to the log
 * (`event: "upstream_stderr"`, cut and rate-bounded); stdout lines that are not JSON-RPC are logged and dropped.
 * Children run in their own process group, killed as a group on close: SIGTERM, then SIGKILL after a grace period.
 */
export class StdioConnector implements UpstreamConnector {
  readonly kind = "stdio" as const;
  readonly #opts: StdioConnectorOptions;
  readonly #env: Record<string, string>;
  readonly #channels = new Set<StdioChannel>();
  readonly #stderr: StderrGate;
  #closed = false;

  constructor(opts: StdioConnectorOptions) {
    if (opts.command.length === 0 || opts.command[0] === "") throw new UpstreamError("upstream.command: the program must not be empty");
    this.#opts = opts;
    this.#env = childEnvironment(opts);
    this.#stderr = new StderrGate({ ...DEFAULT_STDERR_LIMITS, ...opts.stderr }, opts.logger);
  }

  open(ctx: { identity: string; sessionId: string }): Transport {
    if (this.#closed) throw new UpstreamError("the stdio upstream connector is closed");
    const ch: StdioChannel = new StdioChannel({
      command: this.#opts.command,
      env: this.#env,
      cwd: this.#opts.cwd,
      restart: this.#opts.restart,
      timeoutMs: this.#opts.timeoutMs,
      killGraceMs: this.#opts.killGraceMs ?? 2000,
      maxStdoutLineBytes: this.#opts.maxStdoutLineBytes ?? MAX_STDOUT_LINE_BYTES,
      maxStdinBufferBytes: this.#opts.maxStdinBufferBytes ?? MAX_STDIN_BUFFER_BYTES,
      logger: this.#opts.logger.child({ session: ctx.sessionId, identity: ctx.identity }),
      stderr: this.#stderr,
      forget: () => this.#channels.delete(ch),
    });
    this.#channels.add(ch);
    return ch;
  }

  /** Live children (for status and tests). */
  pids(): number[] {
    return [...this.#channels].map((c) => c.pid).filter((p): p is number => p !== undefined);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([...this.#channels].map((c) => c.close()));
    this.#stderr.flush();
  }
}

/** Bounds what children can write to the agent log: long lines cut, a shared token bucket, drops counted. */
class StderrGate {
  readonly #limits: StderrLimits;
  readonly #logger: Logger;
  #tokens: number;
  #last = Date.now();
  #dropped = 0;
  #timer?: NodeJS.Timeout;

  constructor(limits: StderrLimits, logger: Logger) {
    this.#limits = limits;
    this.#logger = logger;
    this.#tokens = limits.burst;
  }

  line(logger: Logger, pid: number | undefined, text: string): void {
    const now = Date.now();
    this.#tokens = Math.min(this.#limits.burst, this.#tokens + ((now - this.#last) / 1000) * this.#limits.perSecond);
    this.#last = now;
    if (this.#tokens < 1) {
      // The count is logged with the next line let through, or a second after dropping began, whichever is first.
      if (this.#dropped++ === 0) this.#timer = setTimeout(() => this.flush(), 1000).unref();
      return;
    }
    this.#tokens--;
    this.flush();
    const cut = text.length > this.#limits.maxLineChars;
    logger.info({ event: "upstream_stderr", pid, line: cut ? text.slice(0, this.#limits.maxLineChars) : text, ...(cut ? { truncatedChars: text.length - this.#limits.maxLineChars } : {}) }, "upstream stderr");
  }

  flush(): void {
    clearTimeout(this.#timer);
    if (this.#dropped === 0) return;
    this.#logger.warn({ event: "upstream_stderr_dropped", dropped: this.#dropped }, "upstream stderr lines dropped (rate limit)");
    this.#dropped = 0;
  }
}

/** Splits a byte stream into lines; a line over `max` bytes is reported once and skipped up to its end. */
class LineSplitter {
  #parts: Buffer[] = [];
  #size = 0;
  #skipping = false;
  readonly #max: number;
  readonly #onLine: (line: string) => void;
  readonly #onOverflow: (bytes: number) => void;

  constructor(max: number, onLine: (line: string) => void, onOverflow: (bytes: number) => void) {
    this.#max = max;
    this.#onLine = onLine;
    this.#onOverflow = onOverflow;
  }

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) {
        this.#append(chunk.subarray(start));
        return;
      }
      this.#append(chunk.subarray(start, nl));
      if (!this.#skipping) {
        const line = Buffer.concat(this.#parts, this.#size).toString("utf8");
        this.#onLine(line.endsWith("\r") ? line.slice(0, -1) : line);
      }
      this.#parts = [];
      this.#size = 0;
      this.#skipping = false;
      start = nl + 1;
    }
  }

  /** What is left without a final newline. */
  end(): void {
    if (this.#size > 0 && !this.#skipping) this.#onLine(Buffer.concat(this.#parts, this.#size).toString("utf8"));
    this.#parts = [];
    this.#size = 0;
  }

  #append(b: Buffer): void {
    if (this.#skipping || b.length === 0) return;
    if (this.#size + b.length > this.#max) {
      this.#skipping = true;
      this.#onOverflow(this.#size + b.length);
      this.#parts = [];
      this.#size = 0;
      return;
    }
    this.#parts.push(b);
    this.#size += b.length;
  }
}

interface ChannelOptions {
  command: string[];
  env: Record<string, string>;
  cwd?: string;
  restart: RestartConfig;
  timeoutMs: number;
  killGraceMs: number;
  maxStdoutLineBytes: number;
  maxStdinBufferBytes: number;
  logger: Logger;
  stderr: StderrGate;
  forget: () => void;
}

/** The most messages a channel holds while a restarted child replays `initialize`. */
const MAX_QUEUED = 1000;

type State = "new" | "running" | "replaying" | "down" | "closed";

class StdioChannel implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;

  readonly #o: ChannelOptions;
  readonly #inFlight = new InFlight();
  #state: State = "new";
  #child?: ChildProcess;
  #startedAt = 0;
  /** Consecutive restarts whose child did not stay up `stableAfterMs`. */
  #restarts = 0;
  #restartTimer?: NodeJS.Timeout;
  #replayTimer?: NodeJS.Timeout;
  #lastExit = "";
  /** The session's initialize request and whether the client has sent notifications/initialized: what a restart replays. */
  #initialize?: JSONRPCMessage;
  #initialized = false;
  #replayId?: string;
  #queue: JSONRPCMessage[] = [];
  /** Requests the current child sent to the client: only answers to these are passed to it. */
  #serverRequests = new Set<string>();
  #closing?: Promise<void>;

  constructor(o: ChannelOptions) {
    this.#o = o;
  }

  get pid(): number | undefined {
    return this.#state === "closed" ? undefined : this.#child?.pid;
  }

  async start(): Promise<void> {
    if (this.#state !== "new") throw new UpstreamError("upstream stdio channel already started");
    try {
      await this.#spawn();
    } catch (e) {
      this.#finish();
      throw e;
    }
  }

  async send(message: JSONRPCMessage): Promise<void> {
    const m = message as any;
    if (this.#state === "closed" || this.#state === "new") throw new UpstreamError(`upstream stdio channel is ${this.#state === "new" ? "not started" : "closed"}`);
    if (m.method === "initialize" && isRequest(message)) this.#initialize = message;
    else if (m.method === "notifications/initialized") this.#initialized = true;
    else if (m.method === undefined && m.id !== undefined && m.id !== null) {
      // A response to a server→client request: only the child that asked may get it; an earlier child's is dropped.
      if (!this.#serverRequests.delete(idKey(m.id))) {
        this.#o.logger.debug({ event: "upstream_stale_response" }, "response to a request of an exited upstream process dropped");
        return;
      }
    }
    if (this.#state === "down") {
      if (isRequest(message)) this.onmessage?.(errorFor(message.id, `upstream process is restarting (${this.#lastExit})`));
      return;
    }
    if (this.#state === "replaying") {
      if (this.#queue.length >= MAX_QUEUED) {
        if (isRequest(message)) this.onmessage?.(errorFor(message.id, "upstream process is restarting (too many queued messages)"));
        return;
      }
      this.#queue.push(message);
      return;
    }
    this.#write(message);
  }

  async close(): Promise<void> {
    if (this.#state === "closed") return this.#closing;
    this.#closing = this.#stop();
    return this.#closing;
  }

  async #stop(): Promise<void> {
    const child = this.#child;
    this.#finish(false);
    // The connector keeps the channel until its child is gone, so the connector's close() waits for it too.
    try {
      if (child) await terminate(child, this.#o.killGraceMs);
    } finally {
      this.#o.forget();
    }
  }

  /** Marks the channel closed (once) and tells the caller; `forget` when no child is left to wait for. */
  #finish(forget = true): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    clearTimeout(this.#restartTimer);
    clearTimeout(this.#replayTimer);
    this.#queue = [];
    if (forget) this.#o.forget();
    this.onclose?.();
  }

  #write(message: JSONRPCMessage): void {
    const stdin = this.#child?.stdin;
    if (stdin && stdin.writableLength > this.#o.maxStdinBufferBytes) {
      this.#o.logger.warn({ event: "upstream_input_full", pid: this.#child?.pid, queuedBytes: stdin.writableLength }, "upstream is not reading its input; message refused");
      if (isRequest(message)) this.onmessage?.(errorFor(message.id, "upstream is not reading its input"));
      return;
    }
    this.#inFlight.sent(message);
    stdin?.write(JSON.stringify(message) + "\n");
  }

  #spawn(): Promise<void> {
    const [prog, ...args] = this.#o.command;
    const child = spawn(prog, args, {
      env: this.#o.env,
      cwd: this.#o.cwd,
      stdio: ["pipe", "pipe", "pipe"],
      shell: false,
      // Its own process group, so close() reaches what the server itself spawned (npx → sh → node).
      detached: true,
      windowsHide: true,
    });
    this.#child = child;
    this.#serverRequests = new Set();
    const log = this.#o.logger;
    const out = new LineSplitter(this.#o.maxStdoutLineBytes, (line) => this.#fromChild(child, line), (bytes) => {
      log.error({ event: "upstream_stdout_overflow", pid: child.pid, bytes }, "upstream wrote an over-long line to stdout; killing it");
      killGroup(child, "SIGKILL");
    });
    const err = new LineSplitter(1024 * 1024, (line) => this.#o.stderr.line(log, child.pid, line), (bytes) => this.#o.stderr.line(log, child.pid, `[a stderr line of more than ${bytes} bytes was dropped]`));
    child.stdout!.on("data", (b: Buffer) => out.push(b));
    child.stdout!.on("end", () => out.end());
    child.stderr!.on("data", (b: Buffer) => err.push(b));
    child.stderr!.on("end", () => err.end());
    // EPIPE when the child is gone: its exit is what counts.
    child.stdin!.on("error", () => {});

    // `error` (could not start), `exit` and `close` can all report one child's end: it is handled once.
    let handled = false;
    const gone = (how: string) => {
      if (handled) return;
      handled = true;
      if (this.#child === child) this.#crashed(child, how);
    };
    return new Promise<void>((resolve, reject) => {
      let spawned = false;
      child.once("spawn", () => {
        spawned = true;
        this.#startedAt = Date.now();
        // The state moves on in the same tick as the spawn: a message sent right after sees the new child.
        this.#spawned(child);
        log.info({ event: "upstream_spawn", pid: child.pid, command: prog }, "upstream process started");
        resolve();
      });
      child.once("error", (e) => {
        if (spawned) {
          log.warn({ event: "upstream_process_error", pid: child.pid, err: e.message }, "upstream process error");
          return;
        }
        log.error({ event: "upstream_spawn_failed", command: prog, err: e.message }, "upstream process could not be started");
        const error = new UpstreamError(`upstream command ${JSON.stringify(prog)} could not be started: ${e.message}`, { cause: e });
        reject(error);
        gone(`upstream process could not be started: ${(e as NodeJS.ErrnoException).code ?? e.message}`);
      });
      const onGone = (code: number | null, signal: NodeJS.Signals | null) => {
        if (handled || !spawned) return;
        const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
        log.warn({ event: "upstream_exit", pid: child.pid, code, signal, uptimeMs: Date.now() - this.#startedAt }, `upstream process ${how}`);
        gone(`upstream process ${how}`);
      };
      // `close` comes after stdout is drained (responses written just before the exit still count); a grandchild that
      // keeps the pipe open must not delay the crash handling, so the group is killed at `exit` and a timer backs it up.
      child.once("exit", (code, signal) => {
        killGroup(child, "SIGKILL");
        setTimeout(() => onGone(code, signal), 2000).unref();
      });
      child.once("close", onGone);
    });
  }

  #fromChild(child: ChildProcess, line: string): void {
    if (this.#child !== child || this.#state === "closed") return;
    if (line.trim() === "") return;
    let message: JSONRPCMessage;
    try {
      message = JSONRPCMessageSchema.parse(JSON.parse(line));
    } catch {
      this.#o.logger.warn({ event: "upstream_stdout_dropped", pid: child.pid, line: line.slice(0, 200), chars: line.length }, "upstream wrote a line to stdout that is not JSON-RPC; dropped");
      return;
    }
    const m = message as any;
    if (this.#replayId !== undefined && m.method === undefined && m.id === this.#replayId) {
      this.#replayDone(child, m.error ? `initialize replay failed: ${m.error.message}` : undefined);
      return;
    }
    if (m.method !== undefined && m.id !== undefined && m.id !== null) this.#serverRequests.add(idKey(m.id));
    this.#inFlight.received(message);
    this.onmessage?.(message);
  }

  #crashed(child: ChildProcess, how: string): void {
    // A child that never started on start() is start()'s failure, not a crash to recover from.
    if (this.#state === "closed" || this.#state === "new") return;
    this.#lastExit = how;
    clearTimeout(this.#replayTimer);
    this.#replayId = undefined;
    const failed = this.#inFlight.failAll(how);
    for (const q of this.#queue) if (isRequest(q)) failed.push(errorFor(q.id, how));
    this.#queue = [];
    for (const e of failed) this.onmessage?.(e);
    if (this.#child !== child) return;

    const r = this.#o.restart;
    if (this.#startedAt > 0 && Date.now() - this.#startedAt >= r.stableAfterMs) this.#restarts = 0;
    if (this.#restarts >= r.maxRestarts) {
      this.#o.logger.error({ event: "upstream_gave_up", restarts: this.#restarts, last: how }, "upstream process keeps crashing; giving up");
      this.#finish();
      return;
    }
    this.#restarts++;
    const backoffMs = Math.min(r.maxDelayMs, r.initialDelayMs * 2 ** (this.#restarts - 1));
    const delayMs = Math.round(backoffMs * (1 - Math.random() * 0.5));
    this.#state = "down";
    this.#o.logger.warn({ event: "upstream_restart", attempt: this.#restarts, backoffMs, delayMs }, "restarting upstream process");
    this.#restartTimer = setTimeout(() => void this.#restart(), delayMs);
  }

  async #restart(): Promise<void> {
    if (this.#state !== "down") return;
    this.#startedAt = 0;
    // A failure to start is counted as a crash by #spawn's error handler.
    await this.#spawn().catch(() => {});
  }

  /** A child is up: a first one serves at once; a restarted one first gets the session's initialize replayed. */
  #spawned(child: ChildProcess): void {
    if (this.#state === "new" || !this.#initialize) {
      if (this.#state === "new" || this.#state === "down") this.#state = "running";
      return;
    }
    if (this.#state !== "down") return;
    this.#state = "replaying";
    this.#replayId = `mcpmesh-replay-${randomUUID()}`;
    const init = { ...(this.#initialize as any), id: this.#replayId };
    this.#replayTimer = setTimeout(() => this.#replayDone(child, "initialize replay timed out"), this.#o.timeoutMs);
    this.#o.logger.info({ event: "upstream_replay_initialize", pid: child.pid }, "replaying initialize to the restarted upstream");
    child.stdin!.write(JSON.stringify(init) + "\n");
  }

  #replayDone(child: ChildProcess, failure?: string): void {
    clearTimeout(this.#replayTimer);
    this.#replayId = undefined;
    if (this.#child !== child || this.#state !== "replaying") return;
    if (failure) {
      this.#o.logger.error({ event: "upstream_replay_failed", pid: child.pid, err: failure }, "restarted upstream did not accept the session's initialize");
      killGroup(child, "SIGKILL");
      return;
    }
    if (this.#initialized) child.stdin!.write(JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) + "\n");
    this.#state = "running";
    const queued = this.#queue;
    this.#queue = [];
    for (const m of queued) this.#write(m);
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** SIGTERM to the child's group (and stdin closed), SIGKILL after `graceMs`; resolves once the child has exited. */
async function terminate(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.pid === undefined) return;
  const exited = child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.stdin?.end();
  killGroup(child, "SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), graceMs)));
  if (await Promise.race([exited.then(() => false), timedOut])) {
    killGroup(child, "SIGKILL");
    await exited;
  }
  clearTimeout(timer);
  // Whatever the server left in its group goes too.
  killGroup(child, "SIGKILL");
}

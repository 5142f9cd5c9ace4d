import { formatDuration } from "../lib/duration.ts";
import type { Logger } from "../lib/log.ts";
import type { AlertsConfig } from "./config.ts";
import type { DecisionEvent } from "./gatekeeper.ts";

/**
 * Anomaly alerts. Counts run in fixed windows of `alerts.window` (aligned to the clock); each alert fires at most once
 * per subject per window and names who, what, the window and the numbers, so an operator can start from it alone.
 * Alerts are `alert`-level (55) log events and, with `alerts.webhook`, POSTed as JSON by a bounded background queue.
 */
export type AlertKind = "call_spike" | "repeated_failures" | "handshake_failures" | "first_tool_use" | "write_burst" | "unanticipated_volume";

export interface Alert {
  alert: AlertKind;
  message: string;
  identity?: string;
  tool?: string;
  remote?: string;
  /** The window the numbers count over, e.g. "1m". */
  window: string;
  windowStart: string;
  count: number;
  threshold: number;
  baseline?: number;
  detail?: Record<string, unknown>;
  at: string;
}

interface Counter {
  win: number;
  count: number;
}

interface Baseline extends Counter {
  ewma: number;
  /** Completed windows folded into the EWMA. */
  windows: number;
}

export interface AlertEngineOptions {
  logger: Logger;
  now?: () => number;
  /** Called for every alert raised (metrics, webhook). */
  onAlert?: (a: Alert) => void;
}

export class AlertEngine {
  #cfg: AlertsConfig;
  readonly #o: AlertEngineOptions;
  readonly #now: () => number;
  readonly #baselines = new Map<string, Baseline>();
  readonly #counters = new Map<string, Counter>();
  readonly #fired = new Map<string, number>();
  readonly #calls = new Map<string, number>();
  readonly #toolsUsed = new Map<string, Set<string>>();

  constructor(cfg: AlertsConfig, opts: AlertEngineOptions) {
    this.#cfg = cfg;
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
  }

  update(cfg: AlertsConfig): void {
    this.#cfg = cfg;
  }

  #win(now: number): number {
    return Math.floor(now / this.#cfg.windowMs);
  }

  #count(key: string, win: number): number {
    let c = this.#counters.get(key);
    if (!c || c.win !== win) {
      c = { win, count: 0 };
      this.#counters.set(key, c);
    }
    return ++c.count;
  }

  #raise(dedupKey: string, win: number, a: Omit<Alert, "window" | "windowStart" | "at">): void {
    const k = `${a.alert}\u0000${dedupKey}`;
    if (this.#fired.get(k) === win) return;
    this.#fired.set(k, win);
    const now = this.#now();
    const alert: Alert = { ...a, window: formatDuration(this.#cfg.windowMs), windowStart: new Date(win * this.#cfg.windowMs).toISOString(), at: new Date(now).toISOString() };
    this.#o.logger.alert({ event: "alert", ...alert }, a.message);
    this.#o.onAlert?.(alert);
    if (this.#fired.size > 100_000) this.#prune(win);
  }

  #prune(win: number): void {
    for (const [k, w] of this.#fired) if (w < win) this.#fired.delete(k);
    for (const [k, c] of this.#counters) if (c.win < win) this.#counters.delete(k);
  }

  /** Every gatekeeper decision. */
  decision(ev: DecisionEvent): void {
    const now = this.#now();
    const win = this.#win(now);
    const cfg = this.#cfg;
    const id = ev.identity;
    if (ev.decision === "deny") {
      if (ev.failure === "rate") {
        this.#raise(`rate\u0000${id}`, win, {
          alert: "unanticipated_volume", identity: id, tool: ev.tool, count: 1, threshold: 0,
          message: `${id} is calling beyond its configured rate limit (${ev.limitScope ?? "limit"})${ev.tool ? ` on ${ev.tool}` : ""}${ev.coolDown ? "; cool-down started" : ""}`,
          detail: { scope: ev.limitScope, coolDown: ev.coolDown === true },
        });
        return;
      }
      const n = this.#count(`f\u0000${id}`, win);
      if (n >= cfg.failures) {
        this.#raise(id, win, {
          alert: "repeated_failures", identity: id, tool: ev.tool, count: n, threshold: cfg.failures,
          message: `${id} had ${n} authorization/validation failures within ${formatDuration(cfg.windowMs)} (threshold ${cfg.failures}); last: ${ev.failure} on ${ev.tool ?? ev.method}`,
          detail: { lastFailure: ev.failure, lastMethod: ev.method },
        });
      }
      return;
    }
    if (ev.method !== "tools/call" || !ev.tool) return;
    const tool = ev.tool;

    // Volume per identity, beyond what the operator said to expect.
    const total = this.#count(`v\u0000${id}`, win);
    if (cfg.maxCalls !== undefined && total > cfg.maxCalls) {
      this.#raise(`max\u0000${id}`, win, {
        alert: "unanticipated_volume", identity: id, tool, count: total, threshold: cfg.maxCalls,
        message: `${id} made ${total} calls within ${formatDuration(cfg.windowMs)}, more than alerts.maxCalls (${cfg.maxCalls}) anticipates`,
      });
    }

    // A spike of one tool against this identity's EWMA baseline for it.
    const bk = `${id}\u0000${tool}`;
    let b = this.#baselines.get(bk);
    if (!b) {
      b = { win, count: 0, ewma: 0, windows: 0 };
      this.#baselines.set(bk, b);
    }
    if (b.win !== win) {
      // Fold the finished window and any empty ones since into the baseline.
      const gap = Math.min(win - b.win, 64);
      for (let i = 0; i < gap; i++) {
        const c = i === 0 ? b.count : 0;
        b.ewma = b.windows === 0 ? c : cfg.ewmaAlpha * c + (1 - cfg.ewmaAlpha) * b.ewma;
        b.windows++;
      }
      b.win = win;
      b.count = 0;
    }
    b.count++;
    if (b.count >= cfg.spikeMinCalls && b.count > cfg.spikeFactor * b.ewma) {
      this.#raise(bk, win, {
        alert: "call_spike", identity: id, tool, count: b.count, threshold: Math.max(cfg.spikeMinCalls, Math.floor(cfg.spikeFactor * b.ewma) + 1), baseline: Math.round(b.ewma * 100) / 100,
        message: `${id} called ${tool} ${b.count} times within ${formatDuration(cfg.windowMs)}, against a baseline of ${b.ewma.toFixed(2)} per window (factor ${cfg.spikeFactor})`,
        detail: { baselineWindows: b.windows, factor: cfg.spikeFactor },
      });
    }

    // A burst of writes.
    if (ev.access === "write") {
      const w = this.#count(`w\u0000${id}`, win);
      if (w >= cfg.writeBurst) {
        this.#raise(`w\u0000${id}`, win, {
          alert: "write_burst", identity: id, tool, count: w, threshold: cfg.writeBurst,
          message: `${id} made ${w} write calls within ${formatDuration(cfg.windowMs)} (threshold ${cfg.writeBurst}); last: ${tool}`,
        });
      }
    }

    // First use of a tool, once the identity's habits are known.
    const calls = (this.#calls.get(id) ?? 0) + 1;
    this.#calls.set(id, calls);
    let used = this.#toolsUsed.get(id);
    if (!used) this.#toolsUsed.set(id, (used = new Set()));
    if (!used.has(tool)) {
      used.add(tool);
      if (cfg.firstUseAfter > 0 && calls > cfg.firstUseAfter) {
        this.#raise(`${id}\u0000${tool}`, win, {
          alert: "first_tool_use", identity: id, tool, count: calls - 1, threshold: cfg.firstUseAfter,
          message: `${id} used ${tool} for the first time, after ${calls - 1} calls to ${[...used].filter((t) => t !== tool).slice(0, 10).join(", ")}`,
          detail: { knownTools: [...used].filter((t) => t !== tool).slice(0, 50) },
        });
      }
    }
  }

  /** A refused or failed handshake; `remote` is "address:port". */
  handshakeFailure(remote: string, reason: string): void {
    const win = this.#win(this.#now());
    const addr = remote.replace(/:\d+$/, "");
    const n = this.#count(`h\u0000${addr}`, win);
    if (n >= this.#cfg.handshakeFailures) {
      this.#raise(addr, win, {
        alert: "handshake_failures", remote: addr, count: n, threshold: this.#cfg.handshakeFailures,
        message: `${n} failed TLS handshakes from ${addr} within ${formatDuration(this.#cfg.windowMs)} (threshold ${this.#cfg.handshakeFailures}); last reason: ${reason}`,
        detail: { lastReason: reason },
      });
    }
  }
}

/**
 * Delivers alerts to a webhook: a bounded queue drained by one background loop, each alert retried with exponential
 * backoff. `push` never waits and never throws; what cannot be queued or delivered is counted as dropped.
 */
export class WebhookSender {
  readonly #url: string;
  readonly #queue: Alert[] = [];
  readonly #max: number;
  readonly #attempts: number;
  readonly #retryMs: number;
  readonly #onDrop: () => void;
  readonly #onFail: () => void;
  readonly #logger: Logger;
  #running = false;
  #closed = false;
  #idle: Promise<void> = Promise.resolve();
  dropped = 0;
  delivered = 0;

  constructor(opts: { url: string; queue: number; attempts: number; retryMs: number; logger: Logger; onDrop?: () => void; onFail?: () => void }) {
    this.#url = opts.url;
    this.#max = opts.queue;
    this.#attempts = opts.attempts;
    this.#retryMs = opts.retryMs;
    this.#logger = opts.logger;
    this.#onDrop = opts.onDrop ?? (() => {});
    this.#onFail = opts.onFail ?? (() => {});
  }

  push(a: Alert): void {
    if (this.#closed) return;
    if (this.#queue.length >= this.#max) {
      this.dropped++;
      this.#onDrop();
      return;
    }
    this.#queue.push(a);
    if (!this.#running) {
      this.#running = true;
      this.#idle = this.#run();
    }
  }

  async #run(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const a = this.#queue.shift()!;
        let ok = false;
        for (let i = 0; i < this.#attempts && !this.#closed; i++) {
          if (i > 0) await new Promise((r) => setTimeout(r, this.#retryMs * 2 ** (i - 1)).unref());
          try {
            const res = await fetch(this.#url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(a), signal: AbortSignal.timeout(5000) });
            await res.arrayBuffer().catch(() => {});
            if (res.status >= 200 && res.status < 300) {
              ok = true;
              break;
            }
            throw new Error(`HTTP ${res.status}`);
          } catch (e) {
            this.#onFail();
            this.#logger.debug({ event: "alert_webhook_failed", attempt: i + 1, reason: (e as Error).message }, "alert webhook delivery failed");
          }
        }
        if (ok) this.delivered++;
        else {
          this.dropped++;
          this.#onDrop();
          this.#logger.warn({ event: "alert_webhook_dropped", alert: a.alert, attempts: this.#attempts }, "alert could not be delivered to the webhook");
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /** Waits for the queue to drain (tests, shutdown), at most `ms`. */
  async drain(ms = 5000): Promise<void> {
    await Promise.race([this.#idle, new Promise((r) => setTimeout(r, ms).unref())]);
  }

  close(): void {
    this.#closed = true;
  }
}

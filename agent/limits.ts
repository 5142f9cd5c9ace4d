import type { CoolDownConfig, LimitsConfig, RateSpec } from "./config.ts";
import type { ToolAccess } from "./policy.ts";

/**
 * Usage limits on tools/call: token buckets per identity, per identity × tool (or per identity × allowing rule, when
 * the rule has its own `rate:`), per identity × access class; a cap on in-flight calls per identity; and a cool-down
 * for identities that keep hitting the limits. Pure bookkeeping with an injectable clock: the gatekeeper asks, the
 * transports release.
 */

/** A token bucket holding at most `limit` tokens, refilled at `limit / periodMs` per ms. */
export class TokenBucket {
  #tokens: number;
  #last: number;
  readonly spec: RateSpec;

  constructor(spec: RateSpec, now: number) {
    this.spec = spec;
    this.#tokens = spec.limit;
    this.#last = now;
  }

  #refill(now: number): void {
    if (now > this.#last) {
      this.#tokens = Math.min(this.spec.limit, this.#tokens + ((now - this.#last) * this.spec.limit) / this.spec.periodMs);
      this.#last = now;
    }
  }

  /** Milliseconds until one token is available (0 = available now). Does not take it. */
  wait(now: number): number {
    this.#refill(now);
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * this.spec.periodMs) / this.spec.limit);
  }

  take(): void {
    this.#tokens -= 1;
  }

  /** Full again (idle buckets can be forgotten). */
  full(now: number): boolean {
    this.#refill(now);
    return this.#tokens >= this.spec.limit;
  }
}

export type LimitScope = "identity" | "tool" | "rule" | "class" | "concurrency";

export type LimitVerdict =
  | { ok: true; release: () => void }
  | { ok: false; scope: LimitScope; retryAfterMs: number; reason: string; limit: string; coolDown: boolean };

export interface LimitRequest {
  identity: string;
  tool: string;
  access: ToolAccess;
  /** The allowing rule's id and its own rate, if any. */
  rule?: { id: string; rate?: RateSpec };
}

const NOOP = () => {};

export class Limiter {
  #cfg: LimitsConfig;
  readonly #now: () => number;
  readonly #buckets = new Map<string, TokenBucket>();
  readonly #inFlight = new Map<string, number>();
  /** Violation timestamps per identity (for the cool-down), and cool-downs in force (until). */
  readonly #violations = new Map<string, number[]>();
  readonly #cooling = new Map<string, number>();
  #lastSweep: number;

  constructor(cfg: LimitsConfig, opts: { now?: () => number } = {}) {
    this.#cfg = cfg;
    this.#now = opts.now ?? Date.now;
    this.#lastSweep = this.#now();
  }

  /** New limits (config reload). Buckets whose spec changed start full with the new spec. */
  update(cfg: LimitsConfig): void {
    this.#cfg = cfg;
  }

  #bucket(key: string, spec: RateSpec, now: number): TokenBucket {
    let b = this.#buckets.get(key);
    if (!b || b.spec.limit !== spec.limit || b.spec.periodMs !== spec.periodMs) {
      b = new TokenBucket(spec, now);
      this.#buckets.set(key, b);
    }
    return b;
  }

  /** Milliseconds the identity stays in cool-down (0 = none). */
  coolDownLeft(identity: string, now = this.#now()): number {
    const until = this.#cooling.get(identity);
    if (until === undefined) return 0;
    if (until <= now) {
      this.#cooling.delete(identity);
      return 0;
    }
    return until - now;
  }

  /** Identities in cool-down now, with the ms left. */
  coolingDown(now = this.#now()): { identity: string; leftMs: number }[] {
    const out: { identity: string; leftMs: number }[] = [];
    for (const id of [...this.#cooling.keys()]) {
      const left = this.coolDownLeft(id, now);
      if (left > 0) out.push({ identity: id, leftMs: left });
    }
    return out;
  }

  inFlight(identity: string): number {
    return this.#inFlight.get(identity) ?? 0;
  }

  /**
   * Decides one tools/call. All buckets that apply must hold a token; only then are the tokens taken (a refused call
   * costs nothing). An allowed call holds one concurrency slot until `release()`.
   */
  check(req: LimitRequest): LimitVerdict {
    const now = this.#now();
    this.#sweep(now);
    const { rate, concurrency } = this.#cfg;
    const cd = this.coolDownLeft(req.identity, now);
    if (cd > 0) return { ok: false, scope: "identity", retryAfterMs: cd, reason: `identity in cool-down for another ${cd} ms`, limit: "cool-down", coolDown: true };
    const checks: { scope: LimitScope; key: string; spec: RateSpec }[] = [];
    if (rate.perIdentity) checks.push({ scope: "identity", key: `i\u0000${req.identity}`, spec: rate.perIdentity });
    if (req.rule?.rate) checks.push({ scope: "rule", key: `r\u0000${req.rule.id}\u0000${req.identity}\u0000${req.tool}`, spec: req.rule.rate });
    else if (rate.perTool) checks.push({ scope: "tool", key: `t\u0000${req.identity}\u0000${req.tool}`, spec: rate.perTool });
    const cls = rate.perClass[req.access];
    if (cls) checks.push({ scope: "class", key: `c\u0000${req.identity}\u0000${req.access}`, spec: cls });
    const buckets = checks.map((c) => this.#bucket(c.key, c.spec, now));
    for (let i = 0; i < checks.length; i++) {
      const wait = buckets[i].wait(now);
      if (wait > 0) {
        const c = checks[i];
        const what = c.scope === "identity" ? "per identity" : c.scope === "tool" ? `per identity × tool ${req.tool}` : c.scope === "rule" ? `of rule ${req.rule!.id} for tool ${req.tool}` : `per identity × ${req.access} calls`;
        return this.#violation(req.identity, now, { scope: c.scope, retryAfterMs: wait, reason: `rate limit ${what} (${c.spec.text}) exceeded`, limit: c.spec.text });
      }
    }
    if (concurrency > 0 && this.inFlight(req.identity) >= concurrency) {
      // No retry time can be known: a call in flight ends when the upstream answers. A short hint.
      return this.#violation(req.identity, now, { scope: "concurrency", retryAfterMs: 100, reason: `concurrency limit (${concurrency} calls in flight) reached`, limit: String(concurrency) });
    }
    for (const b of buckets) b.take();
    if (concurrency <= 0) return { ok: true, release: NOOP };
    this.#inFlight.set(req.identity, this.inFlight(req.identity) + 1);
    let released = false;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        const n = this.inFlight(req.identity) - 1;
        if (n <= 0) this.#inFlight.delete(req.identity);
        else this.#inFlight.set(req.identity, n);
      },
    };
  }

  #violation(identity: string, now: number, v: { scope: LimitScope; retryAfterMs: number; reason: string; limit: string }): LimitVerdict {
    const cd: CoolDownConfig | null = this.#cfg.coolDown;
    let coolDown = false;
    if (cd) {
      const list = (this.#violations.get(identity) ?? []).filter((t) => t > now - cd.withinMs);
      list.push(now);
      if (list.length >= cd.after) {
        this.#cooling.set(identity, now + cd.forMs);
        this.#violations.delete(identity);
        coolDown = true;
      } else this.#violations.set(identity, list);
    }
    return { ok: false, ...v, coolDown };
  }

  /** Forgets full buckets and old violations now and then, so memory follows the active identities only. */
  #sweep(now: number): void {
    if (now - this.#lastSweep < 60_000) return;
    this.#lastSweep = now;
    for (const [k, b] of this.#buckets) if (b.full(now)) this.#buckets.delete(k);
    const within = this.#cfg.coolDown?.withinMs ?? 0;
    for (const [k, list] of this.#violations) if (list[list.length - 1] <= now - within) this.#violations.delete(k);
  }
}

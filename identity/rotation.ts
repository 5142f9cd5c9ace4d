import { EventEmitter } from "node:events";
import { silentLogger, type Logger } from "../lib/log.ts";
import { loadIdentity } from "./store.ts";
import { renewIdentity, type RenewResult } from "./renew.ts";

export interface RotationOptions {
  dir: string;
  logger?: Logger;
  /** Renew at this fraction of the lifetime (default 0.5), jittered by ±`jitter` (default 0.1) of it. */
  fraction?: number;
  jitter?: number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  random?: () => number;
}

/**
 * Keeps an identity directory's certificate fresh: renews at half-life ±10% (jitter spreads a fleet enrolled at
 * once), backs off while the CA is down, raises an `alert`-level log once less than a third of the lifetime is left
 * and renewal keeps failing, and stops with "expired" when the certificate ran out (only a new token helps then).
 * Events: "renewed" (RenewResult), "failed" (Error), "expiring" ({ remainingMs }), "expired".
 * A started scheduler keeps the process alive, like an interval does; `stop()` releases it.
 */
export class RenewalScheduler extends EventEmitter {
  readonly #opts: Required<Omit<RotationOptions, "logger">> & { logger: Logger };
  #timer: NodeJS.Timeout | null = null;
  #failures = 0;
  #stopped = false;

  constructor(opts: RotationOptions) {
    super();
    this.#opts = {
      fraction: 0.5, jitter: 0.1, minBackoffMs: 1000, maxBackoffMs: 5 * 60_000, random: Math.random,
      ...opts, logger: opts.logger ?? silentLogger(),
    };
  }

  /** When the next renewal is due for a certificate valid [notBefore, notAfter). */
  dueAt(notBefore: number, notAfter: number): number {
    const life = notAfter - notBefore;
    const jitter = (this.#opts.random() * 2 - 1) * this.#opts.jitter;
    return notBefore + life * this.#opts.fraction * (1 + jitter);
  }

  start(): void {
    this.#stopped = false;
    this.#scheduleFromFile();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Renews now (used by tests and by SIGHUP-style triggers), then reschedules. */
  async renewNow(): Promise<RenewResult | null> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    return this.#attempt();
  }

  #scheduleFromFile(): void {
    if (this.#stopped) return;
    const id = loadIdentity(this.#opts.dir);
    const due = this.dueAt(id.notBefore, id.notAfter);
    this.#arm(Math.max(0, due - Date.now()));
    this.#opts.logger.info({ event: "renewal_scheduled", identity: id.id, serial: id.serial, at: new Date(Math.max(due, Date.now())).toISOString() }, "next certificate renewal scheduled");
  }

  #arm(ms: number): void {
    if (this.#stopped) return;
    // setTimeout overflows past 2^31-1 ms; re-arm in steps for long lifetimes.
    const step = Math.min(ms, 2 ** 31 - 1);
    this.#timer = setTimeout(() => {
      if (step < ms) this.#arm(ms - step);
      else void this.#attempt();
    }, step);
  }

  async #attempt(): Promise<RenewResult | null> {
    const log = this.#opts.logger;
    let id;
    try {
      id = loadIdentity(this.#opts.dir);
    } catch (e) {
      this.emit("failed", e);
      log.error({ event: "renewal_failed", reason: (e as Error).message }, "cannot read the identity directory");
      this.#arm(this.#backoff());
      return null;
    }
    const now = Date.now();
    if (id.notAfter <= now) {
      log.error({ event: "certificate_expired", identity: id.id, serial: id.serial, notAfter: new Date(id.notAfter).toISOString() },
        "certificate expired; renewal is no longer possible: enroll again with a new token");
      this.stop();
      this.emit("expired");
      return null;
    }
    try {
      const res = await renewIdentity(this.#opts.dir);
      this.#failures = 0;
      log.info({ event: "renewed", identity: res.identity, serial: res.serial, previous: res.previousSerial, notAfter: new Date(res.notAfter).toISOString() }, "certificate renewed");
      this.emit("renewed", res);
      this.#scheduleFromFile();
      return res;
    } catch (e) {
      this.#failures++;
      const remainingMs = id.notAfter - Date.now();
      const life = id.notAfter - id.notBefore;
      const retryIn = Math.min(this.#backoff(), Math.max(remainingMs, 0));
      log.warn({ event: "renewal_failed", identity: id.id, attempt: this.#failures, retryInMs: retryIn, reason: (e as Error).message }, "certificate renewal failed; will retry");
      this.emit("failed", e);
      if (remainingMs < life / 3) {
        log.alert({ event: "certificate_expiring", alert: "cert_expiring", identity: id.id, serial: id.serial, remainingMs, failures: this.#failures },
          "certificate has less than a third of its life left and renewal keeps failing");
        this.emit("expiring", { remainingMs });
      }
      this.#arm(retryIn);
      return null;
    }
  }

  #backoff(): number {
    const base = Math.min(this.#opts.maxBackoffMs, this.#opts.minBackoffMs * 2 ** Math.min(this.#failures, 20));
    return base * (0.8 + this.#opts.random() * 0.4);
  }
}

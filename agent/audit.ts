import { createHash } from "node:crypto";
import { pino, type Logger } from "pino";

/** One line per decision. Argument values never appear: a hash of them does, enough to correlate, not to read. */
export interface AuditRecord {
  identity: string;
  session: string | null;
  method: string;
  tool?: string;
  target?: string;
  decision: "allow" | "deny";
  rule: string | null;
  reason: string;
  /** Time the agent spent deciding, in microseconds. */
  decisionUs: number;
  argsHash?: string;
  transport?: string;
}

export interface AuditSink {
  record(r: AuditRecord): void;
  flush(): Promise<void>;
}

export function hashArguments(args: unknown): string | undefined {
  if (args === undefined) return undefined;
  return createHash("sha256").update(JSON.stringify(args) ?? "").digest("base64url").slice(0, 22);
}

/**
 * The audit log: pino JSON lines to a file (appended) or stdout, through an asynchronous buffered destination so
 * that writing never blocks the request path.
 */
export class AuditLog implements AuditSink {
  readonly #log: Logger;
  readonly #dest: ReturnType<typeof pino.destination>;

  constructor(opts: { file?: string; sync?: boolean } = {}) {
    this.#dest = pino.destination({ dest: opts.file ?? 1, sync: opts.sync ?? false, mkdir: true });
    this.#log = pino({ base: { log: "audit" }, messageKey: "msg", timestamp: pino.stdTimeFunctions.isoTime }, this.#dest);
  }

  record(r: AuditRecord): void {
    this.#log.info(r);
  }

  flush(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.#dest.flush((() => resolve()) as any);
      } catch {
        resolve();
      }
    });
  }

  close(): void {
    try {
      this.#dest.flushSync();
    } catch {
      // not ready yet (nothing written): nothing to flush
    }
    this.#dest.end();
  }
}

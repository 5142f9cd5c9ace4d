import { EventEmitter } from "node:events";
import { Writable } from "node:stream";
import { createLogger, type Logger } from "../../lib/log.ts";

/** A real project logger writing into memory, with a way to wait for a line (no sleeps in tests). */
export interface CapturedLog {
  logger: Logger;
  lines: any[];
  /** Lines with this `event`. */
  events(event: string): any[];
  /** Resolves with the first line (already logged or coming) for which `pred` holds. */
  waitFor(pred: (line: any) => boolean, what?: string, timeoutMs?: number): Promise<any>;
}

export function captureLog(level = "debug"): CapturedLog {
  const lines: any[] = [];
  const emitter = new EventEmitter();
  const sink = new Writable({
    write(chunk, _e, cb) {
      for (const l of String(chunk).split("\n")) {
        if (!l) continue;
        const line = JSON.parse(l);
        lines.push(line);
        emitter.emit("line", line);
      }
      cb();
    },
  });
  return {
    logger: createLogger({ name: "test", level, destination: sink }),
    lines,
    events: (event) => lines.filter((l) => l.event === event),
    waitFor(pred, what = "a log line", timeoutMs = 60_000) {
      const found = lines.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const onLine = (line: any) => {
          if (!pred(line)) return;
          emitter.off("line", onLine);
          clearTimeout(timer);
          resolve(line);
        };
        const timer = setTimeout(() => {
          emitter.off("line", onLine);
          reject(new Error(`timed out waiting for ${what}; log:\n${lines.map((l) => JSON.stringify(l)).join("\n")}`));
        }, timeoutMs);
        emitter.on("line", onLine);
      });
    },
  };
}

import { InvalidArgumentError } from "./errors.ts";

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses durations such as `90s`, `15m`, `1h`, `1h30m`, `500ms` into milliseconds. */
export function parseDuration(text: string, field: string): number {
  if (typeof text === "number") return text;
  const s = String(text).trim();
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * UNITS[m[2]];
    matched = re.lastIndex;
  }
  if (s.length === 0 || matched !== s.length || !Number.isFinite(total) || total <= 0) {
    throw new InvalidArgumentError(field, `"${s}" is not a duration (examples: 90s, 15m, 1h, 1h30m)`);
  }
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

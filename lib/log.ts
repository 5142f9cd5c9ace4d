import { pino, type Logger as PinoLogger, type DestinationStream } from "pino";

/** pino with one extra level, `alert` (55, between error and fatal), for events a human must look at. */
export type Logger = PinoLogger<"alert">;

/**
 * The project's logger: pino, JSON lines. Secrets never reach it: callers log identities, serials and hashes, not
 * tokens, keys or argument values; the redact list is a second line of defence for fields that must never appear.
 */
export function createLogger(opts: { name: string; level?: string; destination?: DestinationStream | string | number } = { name: "mcpmesh" }): Logger {
  const dest = opts.destination === undefined ? 2 : opts.destination;
  return pino(
    {
      name: opts.name,
      level: opts.level ?? process.env.MCPMESH_LOG_LEVEL ?? "info",
      customLevels: { alert: 55 },
      redact: { paths: ["token", "*.token", "passphrase", "*.passphrase", "key", "*.privateKey", "arguments", "*.arguments"], censor: "[redacted]" },
      base: { name: opts.name },
    },
    typeof dest === "object" ? dest : pino.destination({ dest, sync: true }),
  );
}

/** A logger that drops everything, for library callers that pass none. */
export function silentLogger(): Logger {
  return pino({ level: "silent", customLevels: { alert: 55 } });
}

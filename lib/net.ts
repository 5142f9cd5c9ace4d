import { createServer, isIP } from "node:net";
import { InvalidArgumentError } from "./errors.ts";

/** Parses `host:port`, `[v6]:port`; the port must be 0..65535 (0 = pick a free one, for tests). */
export function parseHostPort(text: string, field: string): { host: string; port: number } {
  if (typeof text !== "string") throw new InvalidArgumentError(field, "must be HOST:PORT");
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:[\]]+):(\d{1,5})$/.exec(text);
  if (!m) throw new InvalidArgumentError(field, `"${text}" is not HOST:PORT (IPv6 as [::1]:PORT)`);
  const port = Number(m[2]);
  if (port > 65535) throw new InvalidArgumentError(field, `port ${port} is out of range`);
  return { host: m[1], port };
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost") return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || h === "0:0:0:0:0:0:0:1";
  return false;
}

export function isWildcardHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "0.0.0.0" || h === "::" || h === "0:0:0:0:0:0:0:0";
}

/** A free TCP port on 127.0.0.1 (bound, then released; for the demo and tests that start a server right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

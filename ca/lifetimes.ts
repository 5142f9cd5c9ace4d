import { isIP } from "node:net";
import { InvalidArgumentError } from "../lib/errors.ts";
import type { CertKind } from "./store.ts";

// The parts of the certificate profile that tokens need too. They live apart from profile.ts, which loads the X.509
// library, so that `mcpmesh ca token` and `ca revoke` start without it.

export const MAX_LEAF_TTL_MS = 24 * 3_600_000;
export const DEFAULT_TTL_MS: Record<CertKind, number> = { client: 3_600_000, agent: 24 * 3_600_000, server: 24 * 3_600_000 };

export function validateSans(dns: string[], ips: string[]): void {
  for (const d of dns) {
    if (!/^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(d) || d.length > 253) {
      throw new InvalidArgumentError("dns", `"${d}" is not a valid DNS name`);
    }
  }
  for (const ip of ips) if (isIP(ip) === 0) throw new InvalidArgumentError("ip", `"${ip}" is not an IP address`);
}

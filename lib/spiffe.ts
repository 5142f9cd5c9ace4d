import { InvalidArgumentError } from "./errors.ts";

/**
 * SPIFFE IDs as the mesh uses them: `spiffe://<trust-domain>/<path>`. The rules follow the SPIFFE-ID spec (lower-case
 * trust domain of [a-z0-9.-_], path segments of [A-Za-z0-9.-_], no empty, "." or ".." segments, no query/fragment,
 * no percent-encoding), which is stricter than URL parsing and closes the door on look-alike identities.
 */
const TRUST_DOMAIN_RE = /^[a-z0-9._-]+$/;
const SEGMENT_RE = /^[A-Za-z0-9._-]+$/;
const MAX_ID_LENGTH = 2048;

export interface SpiffeId {
  trustDomain: string;
  /** Path without the leading slash, e.g. `team-a/alice`. */
  path: string;
  /** The canonical string form. */
  uri: string;
}

export function validateTrustDomain(td: string, field = "trust domain"): string {
  if (typeof td !== "string" || td.length === 0 || td.length > 255 || !TRUST_DOMAIN_RE.test(td)) {
    throw new InvalidArgumentError(field, `"${String(td)}" is not a valid trust domain (lower-case letters, digits, '.', '-', '_')`);
  }
  return td;
}

/** Validates an identity path given on the CLI (`team-a/alice`, with or without a leading slash). */
export function validateIdentityPath(path: string, field = "identity"): string {
  if (typeof path !== "string") throw new InvalidArgumentError(field, "must be a string");
  const p = path.startsWith("/") ? path.slice(1) : path;
  if (p.length === 0) throw new InvalidArgumentError(field, "must not be empty");
  for (const seg of p.split("/")) {
    if (!SEGMENT_RE.test(seg) || seg === "." || seg === "..") {
      throw new InvalidArgumentError(field, `"${path}" has an invalid path segment "${seg}" (letters, digits, '.', '-', '_'; no empty, '.' or '..')`);
    }
  }
  return p;
}

export function makeSpiffeId(trustDomain: string, path: string): SpiffeId {
  validateTrustDomain(trustDomain);
  const p = validateIdentityPath(path);
  return { trustDomain, path: p, uri: `spiffe://${trustDomain}/${p}` };
}

/** Parses a SPIFFE ID strictly; returns null if it is not one. */
export function parseSpiffeId(uri: string): SpiffeId | null {
  if (typeof uri !== "string" || uri.length > MAX_ID_LENGTH || !uri.startsWith("spiffe://")) return null;
  const rest = uri.slice("spiffe://".length);
  const slash = rest.indexOf("/");
  if (slash <= 0) return null;
  const td = rest.slice(0, slash);
  const path = rest.slice(slash + 1);
  if (!TRUST_DOMAIN_RE.test(td)) return null;
  if (path.length === 0) return null;
  for (const seg of path.split("/")) {
    if (!SEGMENT_RE.test(seg) || seg === "." || seg === "..") return null;
  }
  return { trustDomain: td, path, uri };
}

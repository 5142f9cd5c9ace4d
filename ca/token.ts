import { createHash, randomBytes } from "node:crypto";
import { InvalidArgumentError } from "../lib/errors.ts";

/**
 * Enrollment tokens: `mcpmesh1.<base64url JSON>`. The JSON carries what the enrolling side needs to trust nothing it
 * was not told: the CA's URL and the SHA-256 fingerprint of its root certificate, plus a 256-bit secret. The CA
 * stores only a hash of the secret; the identity, kind and certificate TTL live in the CA's database, bound to it.
 */
const PREFIX = "mcpmesh1.";

export interface TokenPayload {
  url: string;
  fingerprint: string;
  secret: string;
}

export function newTokenSecret(): string {
  return randomBytes(32).toString("base64url");
}

export function hashTokenSecret(secret: string): string {
  return createHash("sha256").update(`mcpmesh-token:${secret}`).digest("hex");
}

export function encodeToken(p: TokenPayload): string {
  return PREFIX + Buffer.from(JSON.stringify({ v: 1, u: p.url, f: p.fingerprint, s: p.secret })).toString("base64url");
}

export function decodeToken(token: string): TokenPayload {
  const t = typeof token === "string" ? token.trim() : "";
  if (!t.startsWith(PREFIX)) throw new InvalidArgumentError("token", "not an mcpmesh enrollment token (it should start with \"mcpmesh1.\")");
  let obj: any;
  try {
    obj = JSON.parse(Buffer.from(t.slice(PREFIX.length), "base64url").toString("utf8"));
  } catch {
    throw new InvalidArgumentError("token", "is damaged (not decodable); copy it again in full");
  }
  if (!obj || obj.v !== 1 || typeof obj.u !== "string" || typeof obj.f !== "string" || typeof obj.s !== "string" ||
      !/^[0-9a-f]{64}$/.test(obj.f) || obj.s.length < 32) {
    throw new InvalidArgumentError("token", "is damaged (fields missing or malformed); copy it again in full");
  }
  let url: URL;
  try {
    url = new URL(obj.u);
  } catch {
    throw new InvalidArgumentError("token", "carries an invalid CA URL");
  }
  if (url.protocol !== "https:") throw new InvalidArgumentError("token", "carries a CA URL that is not https");
  return { url: obj.u, fingerprint: obj.f, secret: obj.s };
}

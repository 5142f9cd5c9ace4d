import { readFileSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError, StateError } from "../lib/errors.ts";
import { makeSpiffeId } from "../lib/spiffe.ts";
import { normalizeSerial } from "../lib/serial.ts";
import { NotFoundError } from "./errors.ts";
import { DEFAULT_TTL_MS, MAX_LEAF_TTL_MS, validateSans } from "./lifetimes.ts";
import { CaStore, type CertKind, type CertRecord } from "./store.ts";
import { encodeToken, hashTokenSecret, newTokenSecret } from "./token.ts";

// What the CLI does with the CA's store alone: tokens, revocation, listing. None of it needs the CA's key or the
// X.509 library, and it must start fast: revocation latency is counted from the moment `mcpmesh ca revoke` starts,
// and `ca serve` picks the change up from the store.

const DEFAULT_TOKEN_TTL_MS = 15 * 60_000;
const MAX_TOKEN_TTL_MS = 7 * 86_400_000;

export interface CaConfig {
  version: 1;
  trustDomain: string;
  url: string;
  rootFingerprint: string;
  /** SPIFFE IDs allowed to revoke over the API (mTLS). */
  admins: string[];
  createdAt: string;
}

export interface TokenOptions {
  identity: string;
  kind?: CertKind;
  ttlMs?: number;
  certTtlMs?: number;
  dns?: string[];
  ips?: string[];
}

export interface CertificateStatus extends Omit<CertRecord, "pem"> {
  status: "valid" | "expired" | "revoked";
}

export const CA_FILES = { config: "ca.json", root: "root.pem", rootKey: "root.key", int: "intermediate.pem", intKey: "intermediate.key", db: "ca.db" };

export function readCaConfig(dir: string): CaConfig {
  const path = join(dir, CA_FILES.config);
  let raw: string;
  try {
    raw = readFileSync(path, "utf8");
  } catch {
    throw new StateError(`no CA in ${dir} (missing ${CA_FILES.config}); run \`mcpmesh ca init --dir ${dir}\` first`);
  }
  try {
    const c = JSON.parse(raw) as CaConfig;
    if (c.version !== 1 || typeof c.trustDomain !== "string" || typeof c.url !== "string" || typeof c.rootFingerprint !== "string") throw new Error("fields missing");
    c.admins ??= [];
    return c;
  } catch (e) {
    throw new StateError(`${path} is corrupt: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Opens the store without the passphrase, for commands that only read or revoke (revocation needs no key: the CRL
 * is signed by `ca serve`, which holds the key).
 */
export function openCaStore(dir: string): { config: CaConfig; store: CaStore } {
  const config = readCaConfig(dir);
  return { config, store: CaStore.open(join(dir, CA_FILES.db)) };
}

/** Token creation needs no key, so `mcpmesh ca token` works without the passphrase. */
export function createToken(store: CaStore, config: CaConfig, opts: TokenOptions, now: number) {
  const kind = opts.kind ?? "client";
  if (kind !== "client" && kind !== "agent") throw new InvalidArgumentError("kind", `"${String(kind)}" must be client or agent`);
  const identity = makeSpiffeId(config.trustDomain, opts.identity).uri;
  const ttlMs = opts.ttlMs ?? DEFAULT_TOKEN_TTL_MS;
  if (!(ttlMs > 0) || ttlMs > MAX_TOKEN_TTL_MS) throw new InvalidArgumentError("ttl", "must be between 1s and 7d");
  const certTtlMs = opts.certTtlMs ?? DEFAULT_TTL_MS[kind];
  if (!(certTtlMs >= 60_000) || certTtlMs > MAX_LEAF_TTL_MS) throw new InvalidArgumentError("cert-ttl", "must be between 1m and 24h (certificates are short-lived by design)");
  const dns = opts.dns ?? [];
  const ips = opts.ips ?? [];
  if (kind === "client" && (dns.length > 0 || ips.length > 0)) throw new InvalidArgumentError("dns", "DNS/IP names are for agent certificates only (--kind agent)");
  validateSans(dns, ips);
  const secret = newTokenSecret();
  const expiresAt = now + ttlMs;
  store.transaction(() => {
    store.insertToken({ hash: hashTokenSecret(secret), identity, kind, certTtlMs, dns, ips, createdAt: now, expiresAt, usedAt: null });
    store.addEvent("token.created", { identity, detail: { kind, expiresAt, certTtlMs } }, now);
  });
  return { token: encodeToken({ url: config.url, fingerprint: config.rootFingerprint, secret }), identity, kind, expiresAt, certTtlMs };
}

export function revoke(store: CaStore, config: CaConfig, target: { serial?: string; identity?: string; reason?: string }, now: number, by: string): string[] {
  if ((target.serial ? 1 : 0) + (target.identity ? 1 : 0) !== 1) throw new InvalidArgumentError("target", "give exactly one of serial or identity");
  const reason = target.reason ?? "unspecified";
  if (typeof reason !== "string" || reason.length > 200) throw new InvalidArgumentError("reason", "must be a short text");
  let serials: string[];
  if (target.serial) {
    if (!/^[0-9a-fA-F:]+$/.test(target.serial)) throw new InvalidArgumentError("serial", `"${target.serial}" is not a hexadecimal serial number`);
    const serial = normalizeSerial(target.serial);
    const rec = store.getCert(serial);
    if (!rec) throw new NotFoundError(`serial: no certificate ${serial} was issued by this CA`);
    serials = [serial];
  } else {
    const identity = target.identity!.startsWith("spiffe://") ? target.identity! : makeSpiffeId(config.trustDomain, target.identity!).uri;
    serials = store.serialsForIdentity(identity);
    if (serials.length === 0) throw new NotFoundError(`identity: no certificate was issued to ${identity}`);
  }
  return store.transaction(() => {
    const done = store.revokeSerials(serials, now, reason);
    for (const s of done) store.addEvent("cert.revoked", { serial: s, detail: { reason, by } }, now);
    if (done.length > 0) store.setMeta("revocations", String(Number(store.getMeta("revocations") ?? "0") + 1));
    return done;
  });
}

export function listCertificates(store: CaStore, now: number): CertificateStatus[] {
  return store.listCerts().map(({ pem: _pem, ...r }) => ({ ...r, status: r.revokedAt !== null ? "revoked" : r.notAfter <= now ? "expired" : "valid" }));
}

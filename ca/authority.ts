import { EventEmitter } from "node:events";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { isIP } from "node:net";
import { InvalidArgumentError, StateError } from "../lib/errors.ts";
import { ensurePrivateDir, exists, writeFileAtomic, writePrivateFileAtomic } from "../lib/files.ts";
import { makeSpiffeId, validateTrustDomain, validateIdentityPath, parseSpiffeId } from "../lib/spiffe.ts";
import { KeyObject } from "node:crypto";
import { derToPem, fingerprint, normalizeSerial, pemToDer } from "../lib/x509.ts";
import { x509, crypto } from "../lib/peculiar.ts";
import { children, readWhole } from "./der.ts";
import { CaExistsError, ForbiddenError, RenewRejectedError, TokenRejectedError } from "./errors.ts";
import { EC_SIGN, decryptPrivateKey, encryptPrivateKey, generateP256, toWebCryptoPublicKey, toWebCryptoSigningKey } from "./keys.ts";
import { acceptCsr, DEFAULT_TTL_MS, makeIssuer, randomSerial, signLeaf, validateSans, type Issuer, type LeafRequest, type SignedLeaf } from "./profile.ts";
import { CaStore, type CertKind, type CertRecord } from "./store.ts";
import type { SigningPool } from "./signing-pool.ts";
import { hashTokenSecret, decodeToken } from "./token.ts";
import { CA_FILES, createToken, listCertificates, openCaStore, readCaConfig, revoke, type CaConfig, type CertificateStatus, type TokenOptions } from "./admin.ts";

export { createToken, revoke, listCertificates, type CaConfig, type CertificateStatus, type TokenOptions } from "./admin.ts";

const ROOT_TTL_MS = 10 * 365 * 86_400_000;
const INTERMEDIATE_TTL_MS = 5 * 365 * 86_400_000;
/** CRLs are short-lived too: agents re-fetch before nextUpdate, and a stale CRL is a signal, not a silent pass. */
export const CRL_VALIDITY_MS = 60 * 60_000;

export interface InitOptions {
  dir: string;
  trustDomain: string;
  url: string;
  passphrase: string;
  admins?: string[];
  clock?: () => number;
}

export interface IssuedCertificate {
  serial: string;
  identity: string;
  kind: CertKind;
  notBefore: number;
  notAfter: number;
  /** Leaf followed by the intermediate, PEM. */
  chainPem: string;
  /** Trust bundle (roots), PEM. */
  rootsPem: string;
}


function validateUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidArgumentError("url", `"${url}" is not a URL (expected https://HOST:PORT)`);
  }
  if (u.protocol !== "https:") throw new InvalidArgumentError("url", `"${url}" must use https`);
  if (u.pathname !== "/" || u.search || u.hash || u.username) throw new InvalidArgumentError("url", `"${url}" must be only https://HOST:PORT`);
  return u;
}

function validatePassphrase(p: string): void {
  if (typeof p !== "string" || p.length < 8) throw new InvalidArgumentError("passphrase", "must be at least 8 characters");
}

/**
 * The certificate authority's core: keys, profiles, tokens, issuance, renewal, revocation and the CRL. It knows
 * nothing of HTTP; ca/server.ts is one consumer, the CLI another. Emits "revoked" (serials[]) on revocations made
 * through this instance.
 */
export class Authority extends EventEmitter {
  readonly dir: string;
  readonly config: CaConfig;
  readonly root: x509.X509Certificate;
  readonly intermediate: x509.X509Certificate;
  readonly rootPem: string;
  readonly intermediatePem: string;
  readonly #store: CaStore;
  readonly #issuer: Issuer;
  readonly #clock: () => number;
  #pool: SigningPool | undefined;
  #crl: { pem: string; at: number; nextUpdate: number; dataVersion: string } | null = null;

  private constructor(dir: string, config: CaConfig, rootPem: string, intPem: string, issuerKey: CryptoKey, signer: KeyObject, store: CaStore, clock: () => number) {
    super();
    this.dir = dir;
    this.config = config;
    this.rootPem = rootPem;
    this.intermediatePem = intPem;
    this.root = new x509.X509Certificate(rootPem);
    this.intermediate = new x509.X509Certificate(intPem);
    this.#store = store;
    this.#issuer = makeIssuer(intPem, issuerKey, signer);
    this.#clock = clock;
  }

  get trustDomain(): string {
    return this.config.trustDomain;
  }

  get now(): number {
    return this.#clock();
  }

  /** Creates a new CA in an empty (or new) directory. Refuses to touch an existing CA. */
  static async init(opts: InitOptions): Promise<Authority> {
    validateTrustDomain(opts.trustDomain, "trust-domain");
    const url = validateUrl(opts.url);
    validatePassphrase(opts.passphrase);
    const admins = (opts.admins ?? []).map((a) => (a.startsWith("spiffe://") ? a : makeSpiffeId(opts.trustDomain, validateIdentityPath(a, "admin")).uri));
    for (const a of admins) if (!parseSpiffeId(a)) throw new InvalidArgumentError("admin", `"${a}" is not a SPIFFE ID`);
    if (exists(opts.dir)) {
      const present = readdirSync(opts.dir).filter((f) => Object.values(CA_FILES).includes(f));
      if (present.length > 0) throw new CaExistsError(opts.dir);
    }
    const clock = opts.clock ?? Date.now;
    const now = clock();
    ensurePrivateDir(opts.dir);

    const rootKeys = generateP256();
    const intKeys = generateP256();
    const rootSigning = await toWebCryptoSigningKey(rootKeys.privateKey);
    const rootPublic = await toWebCryptoPublicKey(rootKeys.publicKey);
    const intPublic = await toWebCryptoPublicKey(intKeys.publicKey);
    const rootName = `CN=mcpmesh root CA,O=mcpmesh,OU=${opts.trustDomain}`;
    const root = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: rootName,
      issuer: rootName,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + ROOT_TTL_MS),
      signingAlgorithm: EC_SIGN,
      publicKey: rootPublic,
      signingKey: rootSigning,
      extensions: [
        new x509.BasicConstraintsExtension(true, 1, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(rootPublic),
      ],
    });
    const intermediate = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=mcpmesh intermediate CA,O=mcpmesh,OU=${opts.trustDomain}`,
      issuer: root.subject,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + INTERMEDIATE_TTL_MS),
      signingAlgorithm: EC_SIGN,
      publicKey: intPublic,
      signingKey: rootSigning,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
        await x509.SubjectKeyIdentifierExtension.create(intPublic),
        await x509.AuthorityKeyIdentifierExtension.create(root, false),
      ],
    });
    const rootPem = root.toString("pem") + "\n";
    const intPem = intermediate.toString("pem") + "\n";
    const config: CaConfig = {
      version: 1,
      trustDomain: opts.trustDomain,
      url: url.origin,
      rootFingerprint: fingerprint(rootPem),
      admins,
      createdAt: new Date(now).toISOString(),
    };
    // Keys first, config last: a directory without ca.json is an unfinished init and can be retried by hand.
    writePrivateFileAtomic(join(opts.dir, CA_FILES.rootKey), encryptPrivateKey(rootKeys.privateKey, opts.passphrase));
    writePrivateFileAtomic(join(opts.dir, CA_FILES.intKey), encryptPrivateKey(intKeys.privateKey, opts.passphrase));
    writeFileAtomic(join(opts.dir, CA_FILES.root), rootPem);
    writeFileAtomic(join(opts.dir, CA_FILES.int), intPem);
    const store = CaStore.open(join(opts.dir, CA_FILES.db), { create: true });
    store.addEvent("ca.init", { detail: { trustDomain: opts.trustDomain, url: config.url, rootFingerprint: config.rootFingerprint } }, now);
    writeFileAtomic(join(opts.dir, CA_FILES.config), JSON.stringify(config, null, 2) + "\n", 0o600);
    const intSigning = await toWebCryptoSigningKey(intKeys.privateKey);
    return new Authority(opts.dir, config, rootPem, intPem, intSigning, intKeys.privateKey, store, clock);
  }

  /**
   * Opens an existing CA; the passphrase decrypts the intermediate key (the root key stays encrypted on disk).
   * `signingThreads` > 0 checks CSRs and signs leaves on that many worker threads (ca/signing-pool.ts); 0, the
   * default, does it on this thread. `onSigningFailure` hears why a signing thread stopped.
   */
  static async open(opts: { dir: string; passphrase: string; clock?: () => number; signingThreads?: number; onSigningFailure?: (e: Error) => void }): Promise<Authority> {
    const config = Authority.readConfig(opts.dir);
    let rootPem: string, intPem: string, intKeyPem: string;
    try {
      rootPem = readFileSync(join(opts.dir, CA_FILES.root), "utf8");
      intPem = readFileSync(join(opts.dir, CA_FILES.int), "utf8");
      intKeyPem = readFileSync(join(opts.dir, CA_FILES.intKey), "utf8");
    } catch (e) {
      throw new StateError(`the CA directory ${opts.dir} is incomplete: ${(e as Error).message}`, { cause: e });
    }
    if (fingerprint(rootPem) !== config.rootFingerprint) throw new StateError(`${join(opts.dir, CA_FILES.root)} does not match the fingerprint recorded in ca.json`);
    const key = decryptPrivateKey(intKeyPem, opts.passphrase, "the intermediate CA key");
    const threads = opts.signingThreads ?? 0;
    if (!Number.isInteger(threads) || threads < 0 || threads > 64) throw new InvalidArgumentError("signing-threads", `${threads} is not a whole number from 0 to 64`);
    const store = CaStore.open(join(opts.dir, CA_FILES.db));
    const authority = new Authority(opts.dir, config, rootPem, intPem, await toWebCryptoSigningKey(key), key, store, opts.clock ?? Date.now);
    if (threads > 0) {
      const { SigningPool } = await import("./signing-pool.ts");
      authority.#pool = new SigningPool(authority.#issuer, threads, opts.onSigningFailure).warm();
    }
    return authority;
  }

  /**
   * Opens the store without the passphrase, for commands that only read or revoke (revocation needs no key: the CRL
   * is signed by `ca serve`, which holds the key).
   */
  static openStore(dir: string): { config: CaConfig; store: CaStore } {
    return openCaStore(dir);
  }

  static readConfig(dir: string): CaConfig {
    return readCaConfig(dir);
  }


  close(): void {
    this.#store.close();
    void this.#pool?.close();
  }

  /** The store's write-ahead log: it changes on every write by any process (the live feed watches it). */
  get storeWalPath(): string {
    return join(this.dir, `${CA_FILES.db}-wal`);
  }

  get store(): CaStore {
    return this.#store;
  }

  /** PEM of the roots agents and clients trust. */
  get bundlePem(): string {
    return this.rootPem;
  }

  createToken(opts: TokenOptions): { token: string; identity: string; kind: CertKind; expiresAt: number; certTtlMs: number } {
    return createToken(this.#store, this.config, opts, this.#clock());
  }

  async enroll(token: string, csrPem: unknown): Promise<IssuedCertificate> {
    const now = this.#clock();
    const payload = decodeToken(token);
    if (payload.fingerprint !== this.config.rootFingerprint) {
      throw new TokenRejectedError("MCPMESH_TOKEN_UNKNOWN", "token: it was made by another CA (root fingerprint differs)");
    }
    const hash = hashTokenSecret(payload.secret);
    const rec = this.#store.getToken(hash);
    if (!rec) throw new TokenRejectedError("MCPMESH_TOKEN_UNKNOWN", "token: unknown to this CA");
    if (rec.usedAt !== null) throw new TokenRejectedError("MCPMESH_TOKEN_USED", "token: already used (tokens are single-use; ask for a new one)");
    if (rec.expiresAt <= now) throw new TokenRejectedError("MCPMESH_TOKEN_EXPIRED", "token: expired (ask for a new one)");
    const { cert, intent } = await this.#checkAndSign(csrPem, { spiffeId: rec.identity, kind: rec.kind, dns: rec.dns, ips: rec.ips, ttlMs: rec.certTtlMs, now });
    const record = this.#record(cert, rec.kind, rec.identity, rec.certTtlMs, rec.dns, rec.ips, now, "enroll", null);
    // Redemption and recording are one transaction: of two concurrent enrollments only one can flip used_at, and the
    // loser's certificate is never recorded nor returned. Concurrent issuances share one durable commit (group
    // commit); this one's answer waits for it.
    const won = await intent.commit(() => {
      if (!this.#store.redeemToken(hash, this.#clock(), record.serial)) return false;
      this.#store.insertCert(record);
      this.#store.addEvent("cert.enrolled", { identity: rec.identity, serial: record.serial, detail: { kind: rec.kind, notAfter: record.notAfter } }, now);
      return true;
    });
    if (!won) {
      const again = this.#store.getToken(hash);
      if (again && again.usedAt !== null) throw new TokenRejectedError("MCPMESH_TOKEN_USED", "token: already used (tokens are single-use; ask for a new one)");
      throw new TokenRejectedError("MCPMESH_TOKEN_EXPIRED", "token: expired (ask for a new one)");
    }
    return this.#issued(record);
  }

  /**
   * Renews the certificate the caller authenticated with. `peerDer` is the leaf the TLS layer saw; `chainTrusted`
   * says whether it verified against our roots. The new certificate keeps identity, kind, SANs and lifetime.
   */
  async renew(peer: { leafDer: Uint8Array | null; chainTrusted: boolean }, csrPem: unknown, requestedIdentity?: unknown): Promise<IssuedCertificate> {
    const now = this.#clock();
    const rec = this.#authenticate(peer, now);
    if (requestedIdentity !== undefined && requestedIdentity !== null && requestedIdentity !== rec.identity) {
      throw new RenewRejectedError("MCPMESH_IDENTITY_MISMATCH", `identity: a certificate for ${rec.identity} can only renew ${rec.identity}`);
    }
    const { cert, intent } = await this.#checkAndSign(csrPem, { spiffeId: rec.identity, kind: rec.kind, dns: rec.dns, ips: rec.ips, ttlMs: rec.ttlMs, now });
    const record = this.#record(cert, rec.kind, rec.identity, rec.ttlMs, rec.dns, rec.ips, now, "renew", rec.serial);
    const ok = await intent.commit(() => {
      // Re-check inside the transaction: a revocation that landed while we were signing must win.
      if (!this.#store.isCertActive(rec.serial)) return false;
      this.#store.insertCert(record);
      this.#store.addEvent("cert.renewed", { identity: rec.identity, serial: record.serial, detail: { from: rec.serial, notAfter: record.notAfter } }, now);
      return true;
    });
    if (!ok) throw new RenewRejectedError("MCPMESH_CERT_REVOKED", "certificate: revoked; it cannot renew (enroll again with a new token)");
    return this.#issued(record);
  }

  /**
   * The CSR check and the leaf signature (both on the thread pool), with the store told that a commit will follow so
   * that concurrent issuances share one durable commit; a refused CSR withdraws that.
   */
  async #checkAndSign(csrPem: unknown, leaf: Omit<LeafRequest, "spki">): Promise<{ cert: SignedLeaf; intent: ReturnType<CaStore["intent"]> }> {
    const intent = this.#store.intent();
    try {
      if (this.#pool) return { cert: await this.#pool.checkAndSign(csrPem, leaf), intent };
      const spki = await acceptCsr(csrPem);
      return { cert: await signLeaf(this.#issuer, { ...leaf, spki }), intent };
    } catch (e) {
      intent.cancel();
      throw e;
    }
  }

  /** Checks that a TLS peer holds a valid, unrevoked certificate we issued; returns its record. */
  authenticatePeer(peer: { leafDer: Uint8Array | null; chainTrusted: boolean }): CertRecord {
    return this.#authenticate(peer, this.#clock());
  }

  #authenticate(peer: { leafDer: Uint8Array | null; chainTrusted: boolean }, now: number): CertRecord {
    if (!peer.leafDer) throw new RenewRejectedError("MCPMESH_NO_CLIENT_CERT", "certificate: none presented (renewal and revocation need the current certificate over mTLS)");
    const leafDer = Buffer.from(peer.leafDer.buffer, peer.leafDer.byteOffset, peer.leafDer.byteLength);
    let serial: string;
    try {
      serial = certificateSerial(leafDer);
    } catch {
      throw new RenewRejectedError("MCPMESH_CERT_UNKNOWN", "certificate: unreadable");
    }
    const rec = this.#store.getCert(serial);
    // A certificate we did not issue is unknown whatever chain it came with; comparing the stored certificate's bytes
    // also rules out a foreign certificate that happens to reuse one of our serials.
    if (!rec || !pemToDer(rec.pem).equals(leafDer)) {
      throw new RenewRejectedError("MCPMESH_CERT_UNKNOWN", "certificate: not issued by this CA");
    }
    if (rec.revokedAt !== null) throw new RenewRejectedError("MCPMESH_CERT_REVOKED", "certificate: revoked; it cannot renew (enroll again with a new token)");
    if (rec.notAfter <= now) throw new RenewRejectedError("MCPMESH_CERT_EXPIRED", "certificate: expired; it cannot renew (enroll again with a new token)");
    if (!peer.chainTrusted) {
      // Expired chains are reported above; anything else untrusted is not ours.
      throw new RenewRejectedError("MCPMESH_CERT_UNKNOWN", "certificate: does not chain to this CA");
    }
    return rec;
  }

  isAdmin(identity: string): boolean {
    return this.config.admins.includes(identity);
  }

  /** Revocation by an admin over the API. */
  revokeAsAdmin(caller: CertRecord, target: { serial?: string; identity?: string; reason?: string }): string[] {
    if (!this.isAdmin(caller.identity)) throw new ForbiddenError(`${caller.identity} is not an admin of this CA`);
    return this.revoke(target, caller.identity);
  }

  revoke(target: { serial?: string; identity?: string; reason?: string }, by = "local"): string[] {
    const serials = revoke(this.#store, this.config, target, this.#clock(), by);
    if (serials.length > 0) {
      this.#crl = null;
      this.emit("revoked", serials);
    }
    return serials;
  }

  list(): CertificateStatus[] {
    return listCertificates(this.#store, this.#clock());
  }

  /** The current CRL, signed by the intermediate; regenerated on revocation and at half its validity. */
  async crlPem(): Promise<string> {
    const now = this.#clock();
    const version = this.#store.getMeta("revocations") ?? "0";
    if (this.#crl && this.#crl.dataVersion === version && now < this.#crl.at + CRL_VALIDITY_MS / 2) return this.#crl.pem;
    const number = Number(this.#store.getMeta("crl_number") ?? "0") + 1;
    this.#store.setMeta("crl_number", String(number));
    const entries = this.#store.revokedUnexpired(now).map((c) => ({
      serialNumber: c.serial.length % 2 ? `0${c.serial}` : c.serial,
      revocationDate: new Date(c.revokedAt!),
      // @peculiar/x509 writes an empty (invalid) entry-extension list when an entry has none; an invalidity date
      // (the revocation time) and a reason code keep every entry well-formed.
      invalidity: new Date(Math.floor(c.revokedAt! / 1000) * 1000),
      reason: CRL_REASONS[c.reason ?? ""],
    }));
    const crl = await x509.X509CrlGenerator.create({
      issuer: this.intermediate.subject,
      thisUpdate: new Date(now - 60_000),
      nextUpdate: new Date(now + CRL_VALIDITY_MS),
      entries,
      signingAlgorithm: EC_SIGN,
      signingKey: this.#issuer.key,
      extensions: [
        await x509.AuthorityKeyIdentifierExtension.create(this.intermediate, false),
        new x509.Extension("2.5.29.20", false, crlNumberDer(number)),
      ],
    });
    // openssl and Node expect the "X509 CRL" PEM label; the library writes "CRL".
    const pem = derToPem(crl.rawData, "X509 CRL");
    this.#crl = { pem, at: now, nextUpdate: now + CRL_VALIDITY_MS, dataVersion: version };
    return pem;
  }

  /** A serverAuth certificate for the CA's own HTTPS endpoint, named after the host in its URL. */
  async issueServerCertificate(keyPublic: CryptoKey | KeyObject): Promise<IssuedCertificate> {
    const now = this.#clock();
    const host = new URL(this.config.url).hostname.replace(/^\[|\]$/g, "");
    const dns = isIP(host) ? [] : [host];
    const ips = isIP(host) ? [host] : [];
    if (host === "localhost") ips.push("127.0.0.1", "::1");
    validateSans(dns, ips);
    const identity = makeSpiffeId(this.trustDomain, "mcpmesh/ca").uri;
    const ttl = DEFAULT_TTL_MS.server;
    const spki = keyPublic instanceof KeyObject ? keyPublic.export({ type: "spki", format: "der" }) : Buffer.from(await crypto.subtle.exportKey("spki", keyPublic));
    const cert = await signLeaf(this.#issuer, { spiffeId: identity, kind: "server", dns, ips, ttlMs: ttl, now, spki });
    const record = this.#record(cert, "server", identity, ttl, dns, ips, now, "server", null);
    this.#store.transaction(() => {
      this.#store.insertCert(record);
      this.#store.addEvent("cert.server", { identity, serial: record.serial, detail: { notAfter: record.notAfter } }, now);
    });
    return this.#issued(record);
  }

  events() {
    return this.#store.events();
  }

  /** Revocations recorded after `cursor` by any process (see CaStore.revocationsAfter); the live feed polls this. */
  revocationsAfter(cursor: number) {
    return this.#store.revocationsAfter(cursor);
  }

  #record(cert: SignedLeaf, kind: CertKind, identity: string, ttlMs: number, dns: string[], ips: string[], now: number, via: CertRecord["via"], parent: string | null): CertRecord {
    return {
      serial: cert.serial, identity, kind, notBefore: cert.notBefore, notAfter: cert.notAfter,
      ttlMs, dns, ips, pem: cert.pem, issuedAt: now, via, parentSerial: parent, revokedAt: null, reason: null,
    };
  }

  #issued(r: CertRecord): IssuedCertificate {
    return { serial: r.serial, identity: r.identity, kind: r.kind, notBefore: r.notBefore, notAfter: r.notAfter, chainPem: r.pem + this.intermediatePem, rootsPem: this.rootPem };
  }
}

/** The serial of a DER certificate, normalized; throws on anything that is not a Certificate's outer structure. */
function certificateSerial(der: Buffer): string {
  const [tbs] = children(readWhole(der, 0x30));
  const fields = tbs?.tag === 0x30 ? children(tbs) : [];
  const serial = fields[0]?.tag === 0xa0 ? fields[1] : fields[0];
  if (!serial || serial.tag !== 0x02 || serial.value.length === 0) throw new Error("no serialNumber");
  return normalizeSerial(serial.value.toString("hex"));
}

const CRL_REASONS: Record<string, x509.X509CrlReason | undefined> = {
  keyCompromise: x509.X509CrlReason.keyCompromise,
  affiliationChanged: x509.X509CrlReason.affiliationChanged,
  superseded: x509.X509CrlReason.superseded,
  cessationOfOperation: x509.X509CrlReason.cessationOfOperation,
  privilegeWithdrawn: x509.X509CrlReason.privilegeWithdrawn,
};

function crlNumberDer(n: number): ArrayBuffer {
  let hex = n.toString(16);
  if (hex.length % 2) hex = `0${hex}`;
  if (parseInt(hex.slice(0, 2), 16) & 0x80) hex = `00${hex}`;
  const body = Buffer.from(hex, "hex");
  const der = Buffer.concat([Buffer.from([0x02, body.length]), body]);
  return der.buffer.slice(der.byteOffset, der.byteOffset + der.length) as ArrayBuffer;
}


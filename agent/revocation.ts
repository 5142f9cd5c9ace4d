/**
 * Revoked serials, per issuer, from signed CRLs plus serials pushed live by the CA.
 *
 * A list is built whole from CRLs that have all been checked (parsed, signed by a CA certificate from the trust bundle,
 * already in force), so a bad CRL can never leave a half-updated list behind: the caller builds the next list and swaps
 * it in, or calls `replaceCrl`, which only touches state once the new CRL has passed every check.
 *
 * Signatures are verified with node:crypto over the exact tbsCertList bytes, which keeps loading synchronous and avoids
 * re-encoding anything before checking it.
 */
import { X509Certificate as NodeX509, verify as cryptoVerify, constants as cryptoConstants, type KeyObject } from "node:crypto";
import { MeshError } from "../lib/errors.ts";
import { normalizeSerial, pemToDer, splitPemCertificates } from "../lib/x509.ts";
import {
  distinguishedName,
  KeyUsageFlags,
  parseCertificate,
  parseCertificateList,
  readCrlEntryExtensions,
  readExtensions,
  serialHex,
  signatureAlgorithm,
  type asn,
  type ParsedExtension,
} from "../lib/x509-asn1.ts";

export class CrlError extends MeshError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("MCPMESH_BAD_CRL", message, options);
  }
}

export type CrlInput = string | Uint8Array;

export interface CrlLoadOptions {
  /** Milliseconds since the epoch; defaults to Date.now(). */
  now?: number;
  /**
   * How far in the future a CRL's thisUpdate may be and still load. A CRL pushed seconds after it was made must not be
   * refused because this host's clock is a little behind the CA's: refusing it would keep the older, shorter list.
   */
  maxClockSkewMs?: number;
}

export interface CrlInfo {
  /** Issuer distinguished name, in the same form as `checkPeerSvid(...).issuer`. */
  issuer: string;
  thisUpdate: number;
  nextUpdate: number;
  /** The cRLNumber extension as a decimal string, when present. */
  crlNumber?: string;
  revokedCount: number;
}

interface IssuerState extends CrlInfo {
  serials: ReadonlySet<string>;
  crlNumberValue?: bigint;
}

const DEFAULT_SKEW_MS = 60_000;
const OID_CRL_NUMBER = "2.5.29.20";
const OID_DELTA_CRL = "2.5.29.27";
const OID_AUTHORITY_KEY_ID = "2.5.29.35";
const OID_ISSUING_DP = "2.5.29.28";
const PEM_CRL_RE = /-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g;

interface Tlv {
  tag: number;
  start: number;
  contentStart: number;
  end: number;
}

/** Reads one DER TLV; enough of DER to find the exact signed bytes of a CRL. */
function readTlv(buf: Uint8Array, offset: number, limit: number): Tlv {
  if (offset + 2 > limit) throw new Error("truncated DER");
  const tag = buf[offset];
  let len = buf[offset + 1];
  let p = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new Error("unsupported DER length");
    if (p + n > limit) throw new Error("truncated DER");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p + i];
    p += n;
  }
  if (p + len > limit) throw new Error("truncated DER");
  return { tag, start: offset, contentStart: p, end: p + len };
}

interface CrlParts {
  tbs: Buffer;
  outerAlg: Buffer;
  innerAlg: Buffer;
  signature: Buffer;
}

/** Splits CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue } and checks its framing. */
function splitCrl(der: Buffer): CrlParts {
  const outer = readTlv(der, 0, der.length);
  if (outer.tag !== 0x30) throw new Error("not a DER SEQUENCE");
  if (outer.end !== der.length) throw new Error(`${der.length - outer.end} trailing bytes after the CRL`);
  const tbs = readTlv(der, outer.contentStart, outer.end);
  const alg = readTlv(der, tbs.end, outer.end);
  const sig = readTlv(der, alg.end, outer.end);
  if (tbs.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03 || sig.end !== outer.end) throw new Error("not a CertificateList");
  // Inside tbsCertList: optional version INTEGER, then the signature AlgorithmIdentifier.
  let inner = readTlv(der, tbs.contentStart, tbs.end);
  if (inner.tag === 0x02) inner = readTlv(der, inner.end, tbs.end);
  if (inner.tag !== 0x30) throw new Error("tbsCertList has no signature algorithm");
  if (sig.end - sig.contentStart < 1 || der[sig.contentStart] !== 0) throw new Error("signature BIT STRING has unused bits");
  return {
    tbs: der.subarray(tbs.start, tbs.end),
    outerAlg: der.subarray(alg.start, alg.end),
    innerAlg: der.subarray(inner.start, inner.end),
    signature: der.subarray(sig.contentStart + 1, sig.end),
  };
}

function toDer(input: CrlInput): Buffer {
  const text = typeof input === "string" ? input : looksLikePem(input) ? Buffer.from(input).toString("utf8") : null;
  if (text === null) return Buffer.from(input as Uint8Array);
  const blocks: string[] = text.match(PEM_CRL_RE) ?? [];
  if (blocks.length === 0) throw new CrlError("CRL is neither DER nor a PEM block labelled X509 CRL");
  if (blocks.length > 1) throw new CrlError(`CRL input holds ${blocks.length} CRLs; load one CRL per call`);
  return pemToDer(blocks[0]);
}

function looksLikePem(buf: Uint8Array): boolean {
  // DER starts with 0x30; PEM (possibly after whitespace or a text header) is printable ASCII.
  return buf.length > 0 && buf[0] !== 0x30 && Buffer.from(buf.subarray(0, 4096)).toString("latin1").includes("-----BEGIN");
}

function hashName(alg: { hash?: { name?: string } | string }): string {
  const h = typeof alg.hash === "string" ? alg.hash : alg.hash?.name;
  switch (h) {
    case "SHA-256":
      return "sha256";
    case "SHA-384":
      return "sha384";
    case "SHA-512":
      return "sha512";
    default:
      throw new CrlError(`CRL signature uses unsupported hash ${h ?? "(none)"}`);
  }
}

function verifySignature(crl: asn.CertificateList, parts: CrlParts, key: KeyObject): boolean {
  const alg = signatureAlgorithm(crl.signatureAlgorithm);
  const type = key.asymmetricKeyType;
  try {
    switch (alg.name) {
      case "ECDSA":
        return type === "ec" && cryptoVerify(hashName(alg), parts.tbs, key, parts.signature);
      case "RSASSA-PKCS1-v1_5":
        return type === "rsa" && cryptoVerify(hashName(alg), parts.tbs, { key, padding: cryptoConstants.RSA_PKCS1_PADDING }, parts.signature);
      case "RSA-PSS":
        return (
          (type === "rsa" || type === "rsa-pss") &&
          cryptoVerify(
            hashName(alg),
            parts.tbs,
            { key, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: alg.saltLength ?? 32 },
            parts.signature,
          )
        );
      case "Ed25519":
        return type === "ed25519" && cryptoVerify(null, parts.tbs, key, parts.signature);
      default:
        throw new CrlError(`CRL signature algorithm ${alg.name} is not supported`);
    }
  } catch (e) {
    if (e instanceof CrlError) throw e;
    return false;
  }
}

interface IssuerCandidate {
  subject: string;
  key: KeyObject;
  canSignCrl: boolean;
  why: string;
}

function loadIssuers(issuers: readonly string[]): IssuerCandidate[] {
  const out: IssuerCandidate[] = [];
  for (const pem of issuers.flatMap((p) => splitPemCertificates(p))) {
    let cert: asn.Certificate;
    let key: KeyObject;
    try {
      cert = parseCertificate(new Uint8Array(pemToDer(pem)));
      key = new NodeX509(pem).publicKey;
    } catch (e) {
      throw new CrlError("an issuer certificate given for CRL verification does not parse", { cause: e });
    }
    // As before the split from @peculiar/x509: a malformed extension here throws as it is, the first of a type counts.
    const extensions = readExtensions(cert.tbsCertificate.extensions);
    const basic = extensions.find((e) => e.basicConstraints)?.basicConstraints;
    const ku = extensions.find((e) => e.keyUsage !== undefined)?.keyUsage;
    let why = "";
    if (!basic?.ca) why = "it is not a CA certificate";
    else if (ku !== undefined && !(ku & KeyUsageFlags.cRLSign)) why = "its keyUsage lacks cRLSign";
    out.push({ subject: distinguishedName(cert.tbsCertificate.subject), key, canSignCrl: why === "", why });
  }
  if (out.length === 0) throw new CrlError("no issuer certificates were given to verify the CRL against");
  return out;
}

function parseAndVerify(input: CrlInput, issuers: readonly string[], opts: CrlLoadOptions): IssuerState {
  const now = opts.now ?? Date.now();
  const skew = opts.maxClockSkewMs ?? DEFAULT_SKEW_MS;
  const der = toDer(input);

  let crl: asn.CertificateList;
  let parts: CrlParts;
  try {
    parts = splitCrl(der);
    crl = parseCertificateList(new Uint8Array(der));
  } catch (e) {
    throw new CrlError(`CRL does not parse: ${(e as Error).message}`, { cause: e });
  }
  if (!parts.outerAlg.equals(parts.innerAlg)) {
    throw new CrlError("CRL signature algorithm differs between tbsCertList and CertificateList");
  }

  const issuer = distinguishedName(crl.tbsCertList.issuer);
  const candidates = loadIssuers(issuers).filter((c) => c.subject === issuer);
  if (candidates.length === 0) throw new CrlError(`CRL issuer "${issuer}" is not in the trust bundle`);
  const signer = candidates.find((c) => c.canSignCrl && verifySignature(crl, parts, c.key));
  if (!signer) {
    const unable = candidates.find((c) => !c.canSignCrl);
    if (unable && candidates.length === 1) throw new CrlError(`CRL issuer "${issuer}" may not sign CRLs: ${unable.why}`);
    throw new CrlError(`CRL signature does not verify with the key of "${issuer}"`);
  }

  let thisUpdate: number;
  let nextUpdate: Date | undefined;
  let extensions: ParsedExtension[];
  let entries: readonly asn.RevokedCertificate[];
  try {
    const tbs = crl.tbsCertList;
    const thisUpdateDate = tbs.thisUpdate.getTime();
    if (!thisUpdateDate) throw new Error("Cannot get 'thisUpdate' value");
    thisUpdate = thisUpdateDate.getTime();
    nextUpdate = tbs.nextUpdate?.getTime() || undefined;
    extensions = readExtensions(tbs.crlExtensions);
    entries = tbs.revokedCertificates ?? [];
  } catch (e) {
    throw new CrlError(`CRL contents do not parse: ${(e as Error).message}`, { cause: e });
  }
  if (thisUpdate > now + skew) {
    throw new CrlError(`CRL of "${issuer}" is not yet valid: thisUpdate ${new Date(thisUpdate).toISOString()} is after ${new Date(now).toISOString()}`);
  }
  // Without nextUpdate nobody can tell a current CRL from a replayed old one.
  if (!nextUpdate) throw new CrlError(`CRL of "${issuer}" has no nextUpdate`);
  if (nextUpdate.getTime() < thisUpdate) throw new CrlError(`CRL of "${issuer}" has nextUpdate before thisUpdate`);

  let crlNumberValue: bigint | undefined;
  for (const ext of extensions) {
    if (ext.type === OID_DELTA_CRL) throw new CrlError(`CRL of "${issuer}" is a delta CRL; only complete CRLs are accepted`);
    if (ext.type === OID_CRL_NUMBER) crlNumberValue = readCrlNumber(ext.value);
    else if (ext.critical && ext.type !== OID_AUTHORITY_KEY_ID && ext.type !== OID_ISSUING_DP) {
      throw new CrlError(`CRL of "${issuer}" has an unsupported critical extension ${ext.type}`);
    }
  }

  const serials = new Set<string>();
  for (const entry of entries) {
    // Critical entry extensions (certificateIssuer of an indirect CRL) would change whose serial this is.
    let entryExtensions: ReturnType<typeof readCrlEntryExtensions>;
    try {
      entryExtensions = readCrlEntryExtensions(entry.crlEntryExtensions);
    } catch (e) {
      throw new CrlError(`CRL of "${issuer}" has an entry with malformed extensions`, { cause: e });
    }
    const critical = entryExtensions.find((x) => x.critical);
    if (critical) throw new CrlError(`CRL of "${issuer}" has an entry with a critical extension ${critical.type}`);
    serials.add(normalizeSerial(serialHex(entry.userCertificate)));
  }

  return {
    issuer,
    thisUpdate,
    nextUpdate: nextUpdate.getTime(),
    crlNumber: crlNumberValue?.toString(),
    crlNumberValue,
    revokedCount: serials.size,
    serials,
  };
}

/** cRLNumber ::= INTEGER (non-negative); the extension value is its DER. */
function readCrlNumber(value: ArrayBuffer): bigint {
  const buf = Buffer.from(value);
  const tlv = readTlv(buf, 0, buf.length);
  if (tlv.tag !== 0x02 || tlv.end !== buf.length || tlv.end === tlv.contentStart) throw new CrlError("CRL has a malformed cRLNumber");
  const hex = buf.subarray(tlv.contentStart, tlv.end).toString("hex");
  if (buf[tlv.contentStart] & 0x80) throw new CrlError("CRL has a negative cRLNumber");
  return BigInt(`0x${hex}`);
}

function checkNotOlder(current: IssuerState | undefined, next: IssuerState): void {
  if (!current) return;
  // A replayed older CRL would silently un-revoke whatever was revoked since.
  if (next.thisUpdate < current.thisUpdate) {
    throw new CrlError(
      `CRL of "${next.issuer}" (thisUpdate ${new Date(next.thisUpdate).toISOString()}) is older than the one loaded ` +
        `(${new Date(current.thisUpdate).toISOString()})`,
    );
  }
  if (current.crlNumberValue !== undefined && next.crlNumberValue !== undefined && next.crlNumberValue < current.crlNumberValue) {
    throw new CrlError(`CRL of "${next.issuer}" has cRLNumber ${next.crlNumber}, lower than the loaded ${current.crlNumber}`);
  }
}

export class RevocationList {
  #byIssuer: Map<string, IssuerState>;
  /** Serials the CA pushed live; they outlive CRL replacements until a CRL lists them anyway. */
  #live: Set<string>;

  constructor() {
    this.#byIssuer = new Map();
    this.#live = new Set();
  }

  /** A list holding one verified CRL. Throws CrlError (MCPMESH_BAD_CRL) for anything it would not trust. */
  static fromCrl(crl: CrlInput, issuers: readonly string[], opts: CrlLoadOptions = {}): RevocationList {
    return RevocationList.fromCrls([crl], issuers, opts);
  }

  /** A list holding several verified CRLs (one per issuer; a later one for the same issuer must not be older). */
  static fromCrls(crls: readonly CrlInput[], issuers: readonly string[], opts: CrlLoadOptions = {}): RevocationList {
    const list = new RevocationList();
    for (const crl of crls) list.replaceCrl(crl, issuers, opts);
    return list;
  }

  /**
   * Loads a CRL in place of the one this list holds for the same issuer (or adds it). On any error the list is left
   * exactly as it was and the CrlError is thrown. A CRL older than the one held is refused.
   */
  replaceCrl(crl: CrlInput, issuers: readonly string[], opts: CrlLoadOptions = {}): CrlInfo {
    const next = parseAndVerify(crl, issuers, opts);
    checkNotOlder(this.#byIssuer.get(next.issuer), next);
    this.#byIssuer.set(next.issuer, next);
    for (const s of next.serials) this.#live.delete(s);
    return infoOf(next);
  }

  /** A copy of this list with `crl` loaded; this list is not changed. */
  withCrl(crl: CrlInput, issuers: readonly string[], opts: CrlLoadOptions = {}): RevocationList {
    const copy = this.clone();
    copy.replaceCrl(crl, issuers, opts);
    return copy;
  }

  clone(): RevocationList {
    const copy = new RevocationList();
    copy.#byIssuer = new Map(this.#byIssuer);
    copy.#live = new Set(this.#live);
    return copy;
  }

  /**
   * Whether the serial is revoked. With `issuerName` (the DN as `checkPeerSvid` reports it) only that issuer's CRL is
   * consulted, plus the live revocations, which carry no issuer.
   */
  isRevoked(serialHex: string, issuerName?: string): boolean {
    const serial = normalizeSerial(serialHex);
    if (this.#live.has(serial)) return true;
    if (issuerName !== undefined) return this.#byIssuer.get(issuerName)?.serials.has(serial) ?? false;
    for (const state of this.#byIssuer.values()) if (state.serials.has(serial)) return true;
    return false;
  }

  /** Records a revocation pushed live by the CA, ahead of the next CRL. */
  addSerial(serialHex: string): void {
    if (typeof serialHex !== "string" || !/^[0-9a-fA-F:]+$/.test(serialHex)) {
      throw new CrlError(`revoked serial ${JSON.stringify(String(serialHex))} is not hex`);
    }
    this.#live.add(normalizeSerial(serialHex));
  }

  /** Whether a CRL for this issuer is loaded. */
  covers(issuerName: string): boolean {
    return this.#byIssuer.has(issuerName);
  }

  /** True once any loaded CRL is past its nextUpdate: the CA has published news this list does not have. */
  isStale(now: number = Date.now()): boolean {
    for (const state of this.#byIssuer.values()) if (now > state.nextUpdate) return true;
    return false;
  }

  /** The earliest nextUpdate among the loaded CRLs, or undefined when none is loaded. */
  nextUpdate(): number | undefined {
    let min: number | undefined;
    for (const state of this.#byIssuer.values()) if (min === undefined || state.nextUpdate < min) min = state.nextUpdate;
    return min;
  }

  crls(): CrlInfo[] {
    return [...this.#byIssuer.values()].map(infoOf);
  }

  /** Number of distinct revoked serials, CRL and live together. */
  get size(): number {
    const all = new Set(this.#live);
    for (const state of this.#byIssuer.values()) for (const s of state.serials) all.add(s);
    return all.size;
  }
}

function infoOf(s: IssuerState): CrlInfo {
  const info: CrlInfo = { issuer: s.issuer, thisUpdate: s.thisUpdate, nextUpdate: s.nextUpdate, revokedCount: s.revokedCount };
  if (s.crlNumber !== undefined) info.crlNumber = s.crlNumber;
  return info;
}

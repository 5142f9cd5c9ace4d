import { randomFillSync, hash, createPublicKey, sign, verify, type KeyObject } from "node:crypto";
import { promisify } from "node:util";
import { isIP } from "node:net";
import { derToPem, normalizeSerial } from "../lib/x509.ts";
import { x509 } from "../lib/peculiar.ts";
import { bitString, children, DerError, octets, oid, oidString, readWhole, seq, time, tlv } from "./der.ts";
import { CsrRejectedError } from "./errors.ts";
import type { CertKind } from "./store.ts";

// The callback forms of sign and verify run on libuv's thread pool, off the thread that serves TLS and HTTP.
const signAsync = promisify(sign);
const verifyAsync = promisify(verify);

/** Clock skew allowance: leaves are valid from one minute before issuance. */
export const BACKDATE_MS = 60_000;
export { DEFAULT_TTL_MS, MAX_LEAF_TTL_MS, validateSans } from "./lifetimes.ts";

// randomBytes() costs ~20 µs a call under load, mostly per-call overhead; serials are drawn from a refilled pool of
// the same CSPRNG output instead, each 16-byte slice used once.
const SERIAL_POOL = Buffer.alloc(16 * 256);
let serialOffset = SERIAL_POOL.length;

/** 128 random bits; a leading zero byte keeps the DER INTEGER positive when the top bit is set. */
export function randomSerial(): string {
  if (serialOffset === SERIAL_POOL.length) {
    randomFillSync(SERIAL_POOL);
    serialOffset = 0;
  }
  const b = Buffer.from(SERIAL_POOL.subarray(serialOffset, (serialOffset += 16)));
  if (b[0] === 0) b[0] = 1; // keep the encoding exactly 16 (or 17) bytes long
  const hex = b.toString("hex");
  return b[0] & 0x80 ? `00${hex}` : hex;
}

export interface LeafRequest {
  spiffeId: string;
  kind: CertKind;
  dns: string[];
  ips: string[];
  ttlMs: number;
  now: number;
  /** The subject's public key as DER SubjectPublicKeyInfo (what acceptCsr returns). */
  spki: Buffer;
}

/** A signed leaf. Dates are whole seconds, as encoded. */
export interface SignedLeaf {
  der: Buffer;
  pem: string;
  /** Normalized (lower-case hex, no leading zeros), as the store keys it. */
  serial: string;
  notBefore: number;
  notAfter: number;
}

/**
 * Everything about the issuer the leaf template needs, computed once: its subject Name (copied byte for byte, so
 * name chaining cannot drift), its key identifier for the AKI, and the node:crypto signing key.
 */
export interface Issuer {
  cert: x509.X509Certificate;
  /** WebCrypto key, for what @peculiar/x509 still signs (the CRL). */
  key: CryptoKey;
  signer: KeyObject;
  nameDer: Buffer;
  akiExtension: Buffer;
}

const OID = {
  ecdsaSha256: "1.2.840.10045.4.3.2",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  subjectAltName: "2.5.29.17",
  subjectKeyId: "2.5.29.14",
  authorityKeyId: "2.5.29.35",
};

const EKU: Record<CertKind, string[]> = {
  client: [x509.ExtendedKeyUsage.clientAuth],
  agent: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
  server: [x509.ExtendedKeyUsage.serverAuth],
};

// The fixed parts of the profile, encoded once.
const CRITICAL = Buffer.from([0x01, 0x01, 0xff]);
const VERSION_3 = Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]);
const SIG_ALG = seq(oid(OID.ecdsaSha256));
const EMPTY_SUBJECT = seq();
const BASIC_CONSTRAINTS = seq(oid(OID.basicConstraints), CRITICAL, octets(seq())); // CA:false (the default, omitted)
const KEY_USAGE = seq(oid(OID.keyUsage), CRITICAL, octets(Buffer.from([0x03, 0x02, 0x07, 0x80]))); // digitalSignature
const SAN_OID = oid(OID.subjectAltName);
const SKI_OID = oid(OID.subjectKeyId);
const EKU_EXT: Record<CertKind, Buffer> = Object.fromEntries(
  Object.entries(EKU).map(([kind, oids]) => [kind, seq(oid(OID.extKeyUsage), octets(seq(...oids.map(oid))))]),
) as Record<CertKind, Buffer>;

/** The subjectPublicKey bits of a SubjectPublicKeyInfo (its BIT STRING without the unused-bits octet). */
function publicKeyBits(spki: Buffer): Buffer {
  const [, bits] = children(readWhole(spki, 0x30));
  if (!bits || bits.tag !== 0x03 || bits.value[0] !== 0) throw new DerError("SubjectPublicKeyInfo without a whole-byte BIT STRING");
  return bits.value.subarray(1);
}

/** RFC 5280 §4.2.1.2 method 1 (SHA-1 of the key bits), as @peculiar/x509 computes SKI and AKI. */
function keyId(spki: Buffer): Buffer {
  return hash("sha1", publicKeyBits(spki), "buffer");
}

export function makeIssuer(certPem: string, webCryptoKey: CryptoKey, signer: KeyObject): Issuer {
  const cert = new x509.X509Certificate(certPem);
  const der = Buffer.from(cert.rawData);
  const tbs = children(children(readWhole(der, 0x30))[0]);
  // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, ...
  const nameDer = Buffer.from(tbs[5].raw);
  const spki = Buffer.from(cert.publicKey.rawData);
  const akiExtension = seq(oid(OID.authorityKeyId), octets(seq(tlv(0x80, keyId(spki)))));
  return { cert, key: webCryptoKey, signer, nameDer, akiExtension };
}

function ipBytes(ip: string): Buffer {
  if (isIP(ip) === 4) return Buffer.from(ip.split(".").map(Number));
  // Expand "::" and an embedded dotted quad, then write eight 16-bit groups.
  let text = ip;
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (quad) {
    const b = quad[1].split(".").map(Number);
    text = text.slice(0, -quad[1].length) + `${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/**
 * The leaf profile: the identity is exactly one URI SAN and appears nowhere else (empty subject, so the SAN is
 * critical per RFC 5280); CA:false; digitalSignature only; EKU by kind. Built from the fixed template above and
 * signed with node:crypto (ECDSA P-256, SHA-256, DER signature); test/ca/der-template.test.ts checks the bytes
 * against @peculiar/x509's encoding of the same certificate.
 */
/** What signing a leaf needs of the issuer (all of it can cross to a worker thread). */
export type LeafSigner = Pick<Issuer, "signer" | "nameDer" | "akiExtension">;

/**
 * Where the signature work of `signLeaf` / `acceptCsr` runs. By default on libuv's threadpool, so the main thread
 * (TLS, HTTP, the store) stays free; `inline` on the calling thread, for a signing thread (ca/signing-worker.ts),
 * which is itself off the main thread: a second hop to the pool would only add cost (~15-20 µs of CPU and two
 * cross-thread wake-ups per operation).
 */
export interface CryptoPlacement {
  inline?: boolean;
}

export async function signLeaf(issuer: LeafSigner, req: LeafRequest, placement: CryptoPlacement = {}): Promise<SignedLeaf> {
  const serialHex = randomSerial();
  const notBefore = Math.floor((req.now - BACKDATE_MS) / 1000) * 1000;
  const notAfter = Math.floor((req.now + req.ttlMs) / 1000) * 1000;
  const names = [tlv(0x86, Buffer.from(req.spiffeId, "utf8"))];
  for (const d of req.dns) names.push(tlv(0x82, Buffer.from(d, "latin1")));
  for (const ip of req.ips) names.push(tlv(0x87, ipBytes(ip)));
  const tbs = seq(
    VERSION_3,
    tlv(0x02, Buffer.from(serialHex, "hex")),
    SIG_ALG,
    issuer.nameDer,
    seq(time(notBefore), time(notAfter)),
    EMPTY_SUBJECT,
    req.spki,
    tlv(0xa3, seq(
      BASIC_CONSTRAINTS,
      KEY_USAGE,
      EKU_EXT[req.kind],
      seq(SAN_OID, CRITICAL, octets(seq(...names))),
      seq(SKI_OID, octets(octets(keyId(req.spki)))),
      issuer.akiExtension,
    )),
  );
  const signature = placement.inline ? sign("sha256", tbs, { key: issuer.signer, dsaEncoding: "der" }) : await signAsync("sha256", tbs, { key: issuer.signer, dsaEncoding: "der" });
  const der = seq(tbs, SIG_ALG, bitString(signature));
  return { der, pem: derToPem(der), serial: normalizeSerial(serialHex), notBefore, notAfter };
}

/** Signature algorithms a CSR may use: OID → node:crypto digest (null for Ed25519) and whether parameters are NULL. */
interface CsrSigAlg {
  /** The key type (node:crypto's asymmetricKeyType) the algorithm belongs to. */
  key: "ec" | "rsa" | "ed25519";
  hash: string | null;
  nullParams: boolean;
}
const CSR_SIG_ALGS: Record<string, CsrSigAlg> = {
  "1.2.840.10045.4.3.2": { key: "ec", hash: "sha256", nullParams: false },
  "1.2.840.10045.4.3.3": { key: "ec", hash: "sha384", nullParams: false },
  "1.2.840.10045.4.3.4": { key: "ec", hash: "sha512", nullParams: false },
  "1.2.840.113549.1.1.11": { key: "rsa", hash: "sha256", nullParams: true },
  "1.2.840.113549.1.1.12": { key: "rsa", hash: "sha384", nullParams: true },
  "1.2.840.113549.1.1.13": { key: "rsa", hash: "sha512", nullParams: true },
  "1.3.101.112": { key: "ed25519", hash: null, nullParams: false },
};

const CSR_PEM = /^\s*-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END \1?CERTIFICATE REQUEST-----\s*$/;

interface ParsedCsr {
  info: Buffer;
  spki: Buffer;
  alg: CsrSigAlg;
  signature: Buffer;
}

/** PKCS#10 (RFC 2986), read strictly: every length exact, no trailing data, version 0, a known signature algorithm. */
function parseCsr(csrPem: string): ParsedCsr {
  const m = CSR_PEM.exec(csrPem);
  if (!m) throw new DerError("not a single PEM CERTIFICATE REQUEST block");
  const der = Buffer.from(m[2].replace(/[\r\n]/g, ""), "base64");
  const [info, algId, sig, ...extra] = children(readWhole(der, 0x30));
  if (!info || info.tag !== 0x30 || !algId || algId.tag !== 0x30 || !sig || sig.tag !== 0x03 || extra.length) throw new DerError("not a CertificationRequest");
  const [version, subject, spki, attributes, ...more] = children(info);
  if (!version || version.tag !== 0x02 || !version.value.equals(Buffer.from([0]))) throw new DerError("version must be 0");
  if (!subject || subject.tag !== 0x30 || !spki || spki.tag !== 0x30 || !attributes || attributes.tag !== 0xa0 || more.length) throw new DerError("not a CertificationRequestInfo");
  children(subject);
  children(attributes);
  const [algOid, params, ...rest] = children(algId);
  if (!algOid || algOid.tag !== 0x06 || rest.length) throw new DerError("bad AlgorithmIdentifier");
  const alg = CSR_SIG_ALGS[oidString(algOid.value)];
  if (!alg) throw new DerError("unsupported signature algorithm");
  if (alg.nullParams ? params !== undefined && !(params.tag === 0x05 && params.value.length === 0) : params !== undefined) throw new DerError("bad algorithm parameters");
  if (sig.value.length < 2 || sig.value[0] !== 0) throw new DerError("signature BIT STRING with unused bits");
  publicKeyBits(Buffer.from(spki.raw));
  return { info: Buffer.from(info.raw), spki: Buffer.from(spki.raw), alg, signature: Buffer.from(sig.value.subarray(1)) };
}

const EC_CURVES: Record<string, { crv: string; size: number }> = {
  "1.2.840.10045.3.1.7": { crv: "P-256", size: 32 },
  "1.3.132.0.34": { crv: "P-384", size: 48 },
};

/**
 * A KeyObject for an SPKI. OpenSSL 3's generic DER decoder costs ~0.6-0.9 ms per key here, more than the signature
 * check; an uncompressed P-256/P-384 point goes in as a JWK instead (~0.3 ms, still checked to be on the curve).
 * Every other key takes the generic path.
 */
function publicKeyObject(spki: Buffer): KeyObject {
  const [algId, bits] = children(readWhole(spki, 0x30));
  const [algOid, curveOid, ...rest] = children(algId);
  if (algOid?.tag === 0x06 && oidString(algOid.value) === "1.2.840.10045.2.1" && curveOid?.tag === 0x06 && rest.length === 0) {
    const curve = EC_CURVES[oidString(curveOid.value)];
    const point = bits.value.subarray(1);
    if (curve && point.length === 1 + 2 * curve.size && point[0] === 0x04) {
      const x = point.subarray(1, 1 + curve.size).toString("base64url");
      const y = point.subarray(1 + curve.size).toString("base64url");
      return createPublicKey({ key: { kty: "EC", crv: curve.crv, x, y }, format: "jwk" });
    }
  }
  return createPublicKey({ key: spki, format: "der", type: "spki" });
}

/**
 * Reads a CSR, checks its self-signature and key strength, and returns only its public key (DER SPKI): whatever
 * identity the CSR claims is ignored, the CA decides the names. The signature is checked by node:crypto over the
 * CertificationRequestInfo bytes exactly as received.
 */
export async function acceptCsr(csrPem: unknown, placement: CryptoPlacement = {}): Promise<Buffer> {
  if (typeof csrPem !== "string" || csrPem.length === 0) throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: missing (PEM-encoded PKCS#10 expected)");
  if (csrPem.length > 16_384) throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: too large");
  let csr: ParsedCsr;
  try {
    csr = parseCsr(csrPem);
  } catch {
    throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: not a valid PEM-encoded PKCS#10 certificate request");
  }
  let key: KeyObject;
  let details: { type: string | undefined; curve?: string; bits?: number };
  try {
    key = publicKeyObject(csr.spki);
    details = { type: key.asymmetricKeyType, curve: key.asymmetricKeyDetails?.namedCurve, bits: key.asymmetricKeyDetails?.modulusLength };
  } catch {
    throw new CsrRejectedError("MCPMESH_WEAK_KEY", "csr: the public key uses an unknown or unsupported algorithm");
  }
  if (details.type === "ec") {
    if (details.curve !== "prime256v1" && details.curve !== "secp384r1") {
      throw new CsrRejectedError("MCPMESH_WEAK_KEY", `csr: EC curve ${details.curve ?? "unknown"} is not accepted (use P-256 or P-384)`);
    }
  } else if (details.type === "rsa") {
    if ((details.bits ?? 0) < 2048) throw new CsrRejectedError("MCPMESH_WEAK_KEY", `csr: RSA key of ${details.bits} bits is too weak (minimum 2048)`);
  } else if (details.type !== "ed25519") {
    throw new CsrRejectedError("MCPMESH_WEAK_KEY", `csr: key type ${details.type ?? "unknown"} is not accepted (use EC P-256)`);
  }
  // The algorithm must fit the key: an RSA OID over an EC key (or the reverse) is refused, not guessed around.
  let valid = false;
  if (csr.alg.key === details.type) {
    try {
      const keyInput = details.type === "ec" ? { key, dsaEncoding: "der" as const } : key;
      valid = placement.inline ? verify(csr.alg.hash, csr.info, keyInput, csr.signature) : await verifyAsync(csr.alg.hash, csr.info, keyInput, csr.signature);
    } catch {
      valid = false;
    }
  }
  if (!valid) throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: the signature does not verify (the request was altered or not signed by its key)");
  return csr.spki;
}


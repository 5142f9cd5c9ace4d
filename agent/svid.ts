/**
 * The SVID half of the TLS gate. Node's TLS stack verifies the chain to the trust bundle; it does not know that a mesh
 * identity is exactly one SPIFFE URI SAN, and it happily accepts CA certificates, certificates meant for servers and
 * weak keys as client leaves. Everything the mesh requires beyond a valid chain is decided here, from the DER itself.
 */
import { X509Certificate as NodeX509, type KeyObject } from "node:crypto";
import { normalizeSerial } from "../lib/x509.ts";
import { distinguishedName, KeyUsageFlags, parseCertificate, readExtensions, serialHex, validityTime, type asn, type ParsedExtension } from "../lib/x509-asn1.ts";
import { parseSpiffeId } from "../lib/spiffe.ts";

export type SvidPurpose = "client" | "server";

export interface CheckPeerSvidOptions {
  /** Trust domains whose identities this gate accepts, e.g. ["example.org"]. */
  trustDomains: readonly string[];
  /** Which side the peer is: a client must carry EKU clientAuth, a server serverAuth. */
  purpose: SvidPurpose;
  /** Milliseconds since the epoch; defaults to Date.now(). */
  now?: number;
}

export interface SvidAccepted {
  ok: true;
  /** The SPIFFE ID, exactly as carried in the URI SAN. */
  id: string;
  trustDomain: string;
  /** Path of the SPIFFE ID without the leading slash. */
  path: string;
  /** Normalized (lower-case, no leading zeros) hex serial. */
  serial: string;
  notBefore: number;
  notAfter: number;
  /** Issuer distinguished name, for matching against CRLs and for logs. */
  issuer: string;
}

export interface SvidRejected {
  ok: false;
  reason: SvidRejectReason;
  detail: string;
}

export type SvidCheckResult = SvidAccepted | SvidRejected;

export type SvidRejectReason =
  | "malformed_certificate"
  | "duplicate_extension"
  | "expired"
  | "not_yet_valid"
  | "ca_certificate"
  | "bad_key_usage"
  | "missing_eku"
  | "wrong_eku"
  | "weak_key"
  | "unsupported_key"
  | "no_uri_san"
  | "multiple_uri_sans"
  | "bad_spiffe_id"
  | "foreign_trust_domain";

const OID_SAN = "2.5.29.17";
const OID_BASIC_CONSTRAINTS = "2.5.29.19";
const OID_KEY_USAGE = "2.5.29.15";
const OID_EKU = "2.5.29.37";
const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const EKU_NAMES: Record<string, string> = {
  [OID_SERVER_AUTH]: "serverAuth",
  [OID_CLIENT_AUTH]: "clientAuth",
  "2.5.29.37.0": "anyExtendedKeyUsage",
};

const MIN_RSA_BITS = 2048;
const ALLOWED_CURVES = new Set(["prime256v1", "P-256", "secp384r1", "P-384"]);

function reject(reason: SvidRejectReason, detail: string): SvidRejected {
  return { ok: false, reason, detail };
}

/** Renders an attacker-chosen string for a log line without letting it forge structure. */
function show(value: string): string {
  const s = JSON.stringify(value);
  return s.length > 200 ? `${s.slice(0, 200)}…"` : s;
}

function checkKey(key: KeyObject): SvidRejected | null {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  switch (type) {
    case "ec":
      if (details.namedCurve && ALLOWED_CURVES.has(details.namedCurve)) return null;
      return reject("unsupported_key", `EC key on curve ${details.namedCurve ?? "(unknown)"}; P-256 or P-384 required`);
    case "rsa":
    case "rsa-pss": {
      const bits = details.modulusLength ?? 0;
      if (bits >= MIN_RSA_BITS) return null;
      return reject("weak_key", `RSA key of ${bits} bits; at least ${MIN_RSA_BITS} required`);
    }
    case "ed25519":
      return null;
    default:
      return reject("unsupported_key", `key type ${type ?? "(unknown)"} is not accepted (EC P-256/P-384, RSA >= ${MIN_RSA_BITS}, Ed25519)`);
  }
}

/**
 * Decides whether a chain-verified peer leaf is an acceptable mesh identity. `leaf` is the DER of the peer's leaf
 * certificate (`tlsSocket.getPeerX509Certificate()?.raw`). The chain itself must already have been verified by TLS;
 * this function does not look at signatures.
 */
export function checkPeerSvid(leaf: Uint8Array, opts: CheckPeerSvidOptions): SvidCheckResult {
  const now = opts.now ?? Date.now();

  let cert: asn.Certificate;
  let publicKey: KeyObject;
  try {
    const der = new Uint8Array(leaf);
    cert = parseCertificate(der);
    // The same bytes through OpenSSL as well: what TLS accepted must parse in both, and Node gives key details.
    publicKey = new NodeX509(der).publicKey;
  } catch (e) {
    return reject("malformed_certificate", `certificate does not parse: ${(e as Error).message}`);
  }

  let extensions: ParsedExtension[];
  try {
    extensions = readExtensions(cert.tbsCertificate.extensions);
  } catch (e) {
    return reject("malformed_certificate", `extensions do not parse: ${(e as Error).message}`);
  }
  // A second SAN (or EKU, ...) extension could carry an identity that one parser sees and another does not.
  const seen = new Set<string>();
  for (const ext of extensions) {
    if (seen.has(ext.type)) return reject("duplicate_extension", `extension ${ext.type} appears more than once`);
    seen.add(ext.type);
  }

  const validity = cert.tbsCertificate.validity;
  const notBeforeDate = validityTime(validity.notBefore, "notBefore");
  const notAfterDate = validityTime(validity.notAfter, "notAfter");
  const notBefore = notBeforeDate.getTime();
  const notAfter = notAfterDate.getTime();
  if (now < notBefore) {
    return reject("not_yet_valid", `certificate is valid from ${notBeforeDate.toISOString()}, now is ${new Date(now).toISOString()}`);
  }
  if (now > notAfter) {
    return reject("expired", `certificate expired at ${notAfterDate.toISOString()}, now is ${new Date(now).toISOString()}`);
  }

  // Extensions are unique by now, so each lookup finds the only one of its type.
  const byType = (oid: string): ParsedExtension | undefined => extensions.find((e) => e.type === oid);
  const basic = byType(OID_BASIC_CONSTRAINTS)?.basicConstraints;
  const keyUsage = byType(OID_KEY_USAGE)?.keyUsage;
  const eku = byType(OID_EKU)?.extKeyUsage;
  const san = byType(OID_SAN)?.subjectAltNames;

  if (basic?.ca) return reject("ca_certificate", "basicConstraints CA:TRUE; a CA certificate is not an identity");

  if (keyUsage !== undefined) {
    const u = keyUsage;
    const F = KeyUsageFlags;
    if (u & (F.keyCertSign | F.cRLSign)) {
      const which = [u & F.keyCertSign ? "keyCertSign" : "", u & F.cRLSign ? "cRLSign" : ""].filter(Boolean).join(", ");
      return reject("bad_key_usage", `keyUsage contains ${which}, which only a CA may have`);
    }
    if (!(u & F.digitalSignature)) return reject("bad_key_usage", "keyUsage lacks digitalSignature, which TLS authentication needs");
  }

  if (!eku) return reject("missing_eku", "no extendedKeyUsage extension; the mesh requires an explicit clientAuth/serverAuth");
  const wanted = opts.purpose === "client" ? OID_CLIENT_AUTH : OID_SERVER_AUTH;
  const usages = eku;
  if (!usages.includes(wanted)) {
    // anyExtendedKeyUsage is deliberately not honoured: the mesh CA never issues it, so it signals a foreign profile.
    const label = opts.purpose === "client" ? "clientAuth" : "serverAuth";
    const has = usages.map((o) => EKU_NAMES[o] ?? o).join(", ");
    return reject("wrong_eku", `extendedKeyUsage lacks ${label} (has ${has || "nothing"})`);
  }

  const keyProblem = checkKey(publicKey);
  if (keyProblem) return keyProblem;

  // The identity comes from the DER SAN only; the subject CN is never consulted.
  const names = san ?? [];
  const uris = names.filter((n) => n.type === "url").map((n) => n.value);
  if (uris.length === 0) {
    const others = names.map((n) => `${n.type}:${n.value}`);
    return reject("no_uri_san", others.length ? `no URI SAN (only ${show(others.join(" "))})` : "no subjectAltName URI");
  }
  if (uris.length > 1) return reject("multiple_uri_sans", `${uris.length} URI SANs: ${uris.map(show).join(" ")}`);
  const uri = uris[0];
  const id = parseSpiffeId(uri);
  if (!id) return reject("bad_spiffe_id", `URI SAN ${show(uri)} is not a valid SPIFFE ID`);
  if (!opts.trustDomains.includes(id.trustDomain)) {
    return reject("foreign_trust_domain", `trust domain ${show(id.trustDomain)} is not one of ${opts.trustDomains.join(", ") || "(none)"}`);
  }

  return {
    ok: true,
    id: id.uri,
    trustDomain: id.trustDomain,
    path: id.path,
    serial: normalizeSerial(serialHex(cert.tbsCertificate.serialNumber)),
    notBefore,
    notAfter,
    issuer: distinguishedName(cert.tbsCertificate.issuer),
  };
}

/** Stable reason codes for the chain verdicts Node reports in `tlsSocket.authorizationError`. */
export type TlsAuthReason =
  | "untrusted_chain"
  | "self_signed"
  | "expired"
  | "not_yet_valid"
  | "bad_signature"
  | "malformed_certificate"
  | "invalid_ca"
  | "chain_too_long"
  | "wrong_eku"
  | "revoked"
  | "crl_unavailable"
  | "crl_expired"
  | "crl_not_yet_valid"
  | "tls_verify_failed";

const TLS_AUTH_REASONS: Record<string, TlsAuthReason> = {
  UNABLE_TO_GET_ISSUER_CERT: "untrusted_chain",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "untrusted_chain",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "untrusted_chain",
  CERT_UNTRUSTED: "untrusted_chain",
  CERT_REJECTED: "untrusted_chain",
  DEPTH_ZERO_SELF_SIGNED_CERT: "self_signed",
  SELF_SIGNED_CERT_IN_CHAIN: "self_signed",
  CERT_HAS_EXPIRED: "expired",
  CERT_NOT_YET_VALID: "not_yet_valid",
  CERT_SIGNATURE_FAILURE: "bad_signature",
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: "bad_signature",
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: "bad_signature",
  ERROR_IN_CERT_NOT_BEFORE_FIELD: "malformed_certificate",
  ERROR_IN_CERT_NOT_AFTER_FIELD: "malformed_certificate",
  INVALID_CA: "invalid_ca",
  CERT_CHAIN_TOO_LONG: "chain_too_long",
  PATH_LENGTH_EXCEEDED: "chain_too_long",
  // OpenSSL checks the leaf's EKU against the TLS role (sslclient on a server socket).
  INVALID_PURPOSE: "wrong_eku",
  CERT_REVOKED: "revoked",
  UNABLE_TO_GET_CRL: "crl_unavailable",
  UNABLE_TO_DECRYPT_CRL_SIGNATURE: "crl_unavailable",
  CRL_SIGNATURE_FAILURE: "crl_unavailable",
  ERROR_IN_CRL_LAST_UPDATE_FIELD: "crl_unavailable",
  ERROR_IN_CRL_NEXT_UPDATE_FIELD: "crl_unavailable",
  CRL_HAS_EXPIRED: "crl_expired",
  CRL_NOT_YET_VALID: "crl_not_yet_valid",
};

/**
 * Maps Node's `authorizationError` code to a stable reason code. A client that sends no certificate at all is also
 * reported as UNABLE_TO_GET_ISSUER_CERT, so the gate must test `getPeerX509Certificate()` for absence itself.
 * Codes Node does not name (it reports them as "UNSPECIFIED") and anything unknown become `tls_verify_failed`: the
 * chain was not verified, whatever the cause.
 */
export function describeTlsAuthError(code: string | Error | null | undefined): TlsAuthReason {
  const key = typeof code === "string" ? code : ((code as { code?: string } | null | undefined)?.code ?? "");
  return Object.hasOwn(TLS_AUTH_REASONS, key) ? TLS_AUTH_REASONS[key] : "tls_verify_failed";
}

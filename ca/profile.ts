import { randomBytes, createPublicKey } from "node:crypto";
import { isIP } from "node:net";
import { x509 } from "../lib/x509.ts";
import { CsrRejectedError } from "./errors.ts";
import { InvalidArgumentError } from "../lib/errors.ts";
import { EC_SIGN } from "./keys.ts";
import type { CertKind } from "./store.ts";

/** Clock skew allowance: leaves are valid from one minute before issuance. */
export const BACKDATE_MS = 60_000;
export const MAX_LEAF_TTL_MS = 24 * 3_600_000;
export const DEFAULT_TTL_MS: Record<CertKind, number> = { client: 3_600_000, agent: 24 * 3_600_000, server: 24 * 3_600_000 };

/** 128 random bits; a leading zero byte keeps the DER INTEGER positive when the top bit is set. */
export function randomSerial(): string {
  const b = randomBytes(16);
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
  publicKey: CryptoKey | x509.PublicKey;
}

export interface Issuer {
  cert: x509.X509Certificate;
  key: CryptoKey;
}

const EKU: Record<CertKind, string[]> = {
  client: [x509.ExtendedKeyUsage.clientAuth],
  agent: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
  server: [x509.ExtendedKeyUsage.serverAuth],
};

/**
 * The leaf profile: the identity is exactly one URI SAN and appears nowhere else (empty subject, so the SAN is
 * critical per RFC 5280); CA:false; digitalSignature only; EKU by kind.
 */
export async function signLeaf(issuer: Issuer, req: LeafRequest): Promise<x509.X509Certificate> {
  const names: x509.JsonGeneralName[] = [{ type: "url", value: req.spiffeId }];
  for (const d of req.dns) names.push({ type: "dns", value: d });
  for (const ip of req.ips) names.push({ type: "ip", value: ip });
  const publicKey = req.publicKey instanceof x509.PublicKey ? req.publicKey : await x509.PublicKey.create(req.publicKey);
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: "",
    issuer: issuer.cert.subject,
    notBefore: new Date(req.now - BACKDATE_MS),
    notAfter: new Date(req.now + req.ttlMs),
    signingAlgorithm: EC_SIGN,
    publicKey,
    signingKey: issuer.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(EKU[req.kind], false),
      new x509.SubjectAlternativeNameExtension(names, true),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.cert, false),
    ],
  });
}

/**
 * Reads a CSR, checks its self-signature and key strength, and returns only its public key: whatever identity the
 * CSR claims is ignored, the CA decides the names.
 */
export async function acceptCsr(csrPem: unknown): Promise<x509.PublicKey> {
  if (typeof csrPem !== "string" || csrPem.length === 0) throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: missing (PEM-encoded PKCS#10 expected)");
  if (csrPem.length > 16_384) throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: too large");
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch {
    throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: not a valid PEM-encoded PKCS#10 certificate request");
  }
  const spki = Buffer.from(csr.publicKey.rawData);
  let details: { type: string | undefined; curve?: string; bits?: number };
  try {
    const k = createPublicKey({ key: spki, format: "der", type: "spki" });
    details = { type: k.asymmetricKeyType, curve: k.asymmetricKeyDetails?.namedCurve, bits: k.asymmetricKeyDetails?.modulusLength };
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
  let valid: boolean;
  try {
    valid = await csr.verify();
  } catch {
    valid = false;
  }
  if (!valid) throw new CsrRejectedError("MCPMESH_BAD_CSR", "csr: the signature does not verify (the request was altered or not signed by its key)");
  return csr.publicKey;
}

export function validateSans(dns: string[], ips: string[]): void {
  for (const d of dns) {
    if (!/^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(d) || d.length > 253) {
      throw new InvalidArgumentError("dns", `"${d}" is not a valid DNS name`);
    }
  }
  for (const ip of ips) if (isIP(ip) === 0) throw new InvalidArgumentError("ip", `"${ip}" is not an IP address`);
}

/**
 * PEM/DER helpers that load no X.509 library: the agent imports this module, so it must stay free of @peculiar/x509
 * (lib/peculiar.ts) and of anything that pulls it in.
 */
import { createHash, X509Certificate as NodeX509 } from "node:crypto";

const PEM_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Splits a PEM bundle into its certificate blocks (anything else in the file is ignored). */
export function splitPemCertificates(pem: string): string[] {
  return pem.match(PEM_RE)?.map((s) => s.trim() + "\n") ?? [];
}

export function derToPem(der: ArrayBuffer | Uint8Array, label = "CERTIFICATE"): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString("base64");
  return `-----BEGIN ${label}-----\n${b64.replace(/.{1,64}/g, "$&\n")}-----END ${label}-----\n`;
}

export function pemToDer(pem: string): Buffer {
  const body = pem.replace(/-----(BEGIN|END) [^-]+-----/g, "").replace(/\s+/g, "");
  return Buffer.from(body, "base64");
}

/** SHA-256 fingerprint of a certificate's DER, lower-case hex without separators. */
export function fingerprint(certPemOrDer: string | Uint8Array): string {
  const der = typeof certPemOrDer === "string" ? pemToDer(certPemOrDer) : certPemOrDer;
  return createHash("sha256").update(der).digest("hex");
}

export { normalizeSerial } from "./serial.ts";

export function nodeCert(pem: string | Buffer): NodeX509 {
  return new NodeX509(pem);
}

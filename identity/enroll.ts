import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { MeshError, StateError } from "../lib/errors.ts";
import { derToPem, fingerprint, splitPemCertificates } from "../lib/x509.ts";
import { createEcdsaCsr } from "../lib/x509-asn1.ts";
import { decodeToken } from "../ca/token.ts";
import { caJson, caRequest } from "./ca-client.ts";
import { hasIdentity, saveIdentity, type IdentityMeta } from "./store.ts";

export interface IssuedResponse {
  identity: string;
  kind: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  certificate: string;
  roots: string;
}

export class RootMismatchError extends MeshError {
  constructor(url: string) {
    super("MCPMESH_ROOT_MISMATCH", `the CA at ${url} does not present the root certificate the token names (fingerprint mismatch); refusing to enroll`);
  }
}

/** A fresh P-256 key and a CSR signed by it; the CA takes only the public key from the CSR. */
export async function newKeyAndCsr(): Promise<{ key: KeyObject; keyPem: string; csrPem: string }> {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const csrPem = derToPem(createEcdsaCsr(privateKey, publicKey, "mcpmesh"), "CERTIFICATE REQUEST");
  return { key: privateKey, keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string, csrPem };
}

/**
 * Fetches the CA's roots and accepts them only if one matches the fingerprint carried by the token: the content is
 * authenticated by the fingerprint, so this first request needs no prior trust.
 */
export async function fetchPinnedRoots(caUrl: string, rootFingerprint: string): Promise<string> {
  const res = await caRequest({ baseUrl: caUrl, method: "GET", path: "/v1/roots", insecureSkipVerify: true });
  const roots = splitPemCertificates(res.body.toString("utf8"));
  const match = roots.find((pem) => fingerprint(pem) === rootFingerprint);
  if (res.status !== 200 || !match) throw new RootMismatchError(caUrl);
  return match;
}

export interface EnrollResult {
  dir: string;
  identity: string;
  serial: string;
  notAfter: string;
  caUrl: string;
}

/**
 * `mcpmesh enroll`: the key is generated here and never leaves; the token pins the CA. Writes key.pem (0600),
 * cert.pem, ca.pem and mcpmesh.json atomically. Refuses to replace an existing identity unless `force`.
 */
export async function enroll(token: string, dir: string, opts: { force?: boolean } = {}): Promise<EnrollResult> {
  const payload = decodeToken(token);
  if (!opts.force && hasIdentity(dir)) throw new StateError(`${dir} already holds an identity; use another --dir, or --force to replace it`);
  const roots = await fetchPinnedRoots(payload.url, payload.fingerprint);
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await caJson<IssuedResponse>({ baseUrl: payload.url, method: "POST", path: "/v1/enroll", body: { token, csr: csrPem }, ca: roots });
  const meta: IdentityMeta = { caUrl: payload.url, rootFingerprint: payload.fingerprint, identity: issued.identity, kind: issued.kind };
  saveIdentity(dir, { keyPem, certPem: issued.certificate, rootsPem: issued.roots, meta });
  return { dir, identity: issued.identity, serial: issued.serial, notAfter: issued.notAfter, caUrl: payload.url };
}

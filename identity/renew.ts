import { StateError } from "../lib/errors.ts";
import { fingerprint, splitPemCertificates } from "../lib/x509.ts";
import { caJson } from "./ca-client.ts";
import { newKeyAndCsr, type IssuedResponse } from "./enroll.ts";
import { loadIdentity, saveIdentity } from "./store.ts";

export interface RenewResult {
  identity: string;
  serial: string;
  previousSerial: string;
  notAfter: number;
}

/**
 * Renews an identity once: mTLS to the CA with the current certificate, a new key each time (so a leaked old key
 * dies with its certificate), files replaced atomically. The CA's new roots are accepted only if they still
 * contain the pinned root.
 */
export async function renewIdentity(dir: string, opts: { now?: number } = {}): Promise<RenewResult> {
  const current = loadIdentity(dir);
  const now = opts.now ?? Date.now();
  if (current.notAfter <= now) {
    throw new StateError(`the certificate in ${dir} expired at ${new Date(current.notAfter).toISOString()}; it cannot renew: enroll again with a new token`);
  }
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await caJson<IssuedResponse>({
    baseUrl: current.meta.caUrl, method: "POST", path: "/v1/renew", body: { csr: csrPem, identity: current.id },
    ca: current.rootsPem, cert: current.certPem, key: current.keyPem,
  });
  if (!splitPemCertificates(issued.roots).some((pem) => fingerprint(pem) === current.meta.rootFingerprint)) {
    throw new StateError("the CA's answer no longer contains the pinned root; keeping the current certificate");
  }
  saveIdentity(dir, { keyPem, certPem: issued.certificate, rootsPem: issued.roots, meta: current.meta });
  return { identity: issued.identity, serial: issued.serial, previousSerial: current.serial, notAfter: Date.parse(issued.notAfter) };
}

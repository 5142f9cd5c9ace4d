/**
 * @peculiar/x509 with its WebCrypto provider set. It pulls in reflect-metadata and tsyringe and costs the process about
 * 12 MB, so only the CA, the CLI's certificate tooling and tests import it; the agent reads certificates, CRLs and
 * writes CSRs with the @peculiar/asn1-* layer underneath it (lib/x509-asn1.ts) instead.
 */
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

// @peculiar/x509 works on WebCrypto; Node's implementation is complete for ECDSA P-256/P-384 and RSA.
x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };
export const crypto = webcrypto as unknown as Crypto;

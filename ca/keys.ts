import forge from "node-forge";
import { createPrivateKey, generateKeyPairSync, pbkdf2Sync, randomBytes, createCipheriv, type KeyObject } from "node:crypto";
import { MeshError } from "../lib/errors.ts";
import { crypto } from "../lib/peculiar.ts";

/**
 * CA private keys at rest: standard PKCS#8 EncryptedPrivateKeyInfo (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC), so
 * openssl and every PKCS#8 reader can open them with the passphrase. Node's own export is fixed at 2048 PBKDF2
 * iterations; we derive the key ourselves with 600 000 iterations (OWASP's figure for PBKDF2-SHA256) and let
 * node-forge write the ASN.1 envelope. Decryption goes through OpenSSL (createPrivateKey), which reads the
 * iteration count from the file.
 */
export const KDF_ITERATIONS = 600_000;

export const EC_SIGN = { name: "ECDSA", hash: "SHA-256" } as const;
const EC_ALG = { name: "ECDSA", namedCurve: "P-256" } as const;

export class WrongPassphraseError extends MeshError {
  constructor(what: string) {
    super("MCPMESH_WRONG_PASSPHRASE", `cannot decrypt ${what}: wrong passphrase or damaged key file`);
  }
}

export function generateP256(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync("ec", { namedCurve: "P-256" });
}

export function encryptPrivateKey(key: KeyObject, passphrase: string, iterations = KDF_ITERATIONS): string {
  const pkcs8 = key.export({ type: "pkcs8", format: "der" });
  const salt = randomBytes(16);
  const iv = randomBytes(16);
  const dk = pbkdf2Sync(Buffer.from(passphrase, "utf8"), salt, iterations, 32, "sha256");
  const cipher = createCipheriv("aes-256-cbc", dk, iv);
  const encrypted = Buffer.concat([cipher.update(pkcs8), cipher.final()]);
  dk.fill(0);

  const { asn1, pki } = forge;
  const U = asn1.Class.UNIVERSAL;
  const T = asn1.Type;
  const bin = (b: Buffer) => b.toString("binary");
  const oid = (o: string) => asn1.create(U, T.OID, false, asn1.oidToDer(o).getBytes());
  const integer = (n: number) => asn1.create(U, T.INTEGER, false, asn1.integerToDer(n).getBytes());
  const seq = (items: forge.asn1.Asn1[]) => asn1.create(U, T.SEQUENCE, true, items);
  const info = seq([
    seq([
      oid(pki.oids.pkcs5PBES2),
      seq([
        seq([oid(pki.oids.pkcs5PBKDF2), seq([asn1.create(U, T.OCTETSTRING, false, bin(salt)), integer(iterations), integer(32), seq([oid(pki.oids.hmacWithSHA256), asn1.create(U, T.NULL, false, "")])])]),
        seq([oid(pki.oids["aes256-CBC"]), asn1.create(U, T.OCTETSTRING, false, bin(iv))]),
      ]),
    ]),
    asn1.create(U, T.OCTETSTRING, false, bin(encrypted)),
  ]);
  // forge writes CRLF line ends; every other PEM file of the CA (and openssl) uses LF.
  return pki.encryptedPrivateKeyToPem(info).replace(/\r\n/g, "\n");
}

export function decryptPrivateKey(pem: string, passphrase: string, what: string): KeyObject {
  try {
    return createPrivateKey({ key: pem, format: "pem", passphrase });
  } catch {
    throw new WrongPassphraseError(what);
  }
}

/** Imports a Node KeyObject into WebCrypto (what @peculiar/x509 signs with). */
export async function toWebCryptoSigningKey(key: KeyObject): Promise<CryptoKey> {
  const der = key.export({ type: "pkcs8", format: "der" });
  return crypto.subtle.importKey("pkcs8", der, EC_ALG, false, ["sign"]);
}

export async function toWebCryptoPublicKey(key: KeyObject): Promise<CryptoKey> {
  const der = key.export({ type: "spki", format: "der" });
  return crypto.subtle.importKey("spki", der, EC_ALG, true, ["verify"]);
}

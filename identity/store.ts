import { readFileSync } from "node:fs";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { join } from "node:path";
import { StateError } from "../lib/errors.ts";
import { ensurePrivateDir, exists, writeFileAtomic, writePrivateFileAtomic } from "../lib/files.ts";
import { nodeCert, splitPemCertificates, normalizeSerial } from "../lib/x509.ts";

/**
 * An identity directory, as `mcpmesh enroll` writes it: key.pem (0600), cert.pem (leaf + intermediate), ca.pem
 * (roots) and mcpmesh.json (where the CA is, for renewal). Files are replaced atomically, key before certificate,
 * so a reader never sees a certificate without its key.
 */
export const IDENTITY_FILES = { key: "key.pem", cert: "cert.pem", roots: "ca.pem", meta: "mcpmesh.json" };

export interface IdentityMeta {
  caUrl: string;
  rootFingerprint: string;
  identity: string;
  kind: string;
}

export interface Identity {
  dir: string;
  keyPem: string;
  certPem: string;
  rootsPem: string;
  meta: IdentityMeta;
  id: string;
  serial: string;
  notBefore: number;
  notAfter: number;
}

/**
 * Loads an identity; the key and certificate are checked to belong together. A renewal swaps the two files one
 * after the other, so a reader may land between the renames: it simply reads again.
 */
export function loadIdentity(dir: string): Identity {
  for (let attempt = 0; ; attempt++) {
    const id = readIdentityOnce(dir);
    if (keyMatchesCert(id.keyPem, id.certPem)) return id;
    if (attempt >= 5) throw new StateError(`${join(dir, IDENTITY_FILES.key)} does not belong to ${join(dir, IDENTITY_FILES.cert)}`);
  }
}

function keyMatchesCert(keyPem: string, certPem: string): boolean {
  try {
    const pub = createPublicKey(createPrivateKey(keyPem)).export({ type: "spki", format: "der" });
    const certPub = nodeCert(splitPemCertificates(certPem)[0]).publicKey.export({ type: "spki", format: "der" });
    return Buffer.compare(pub, certPub) === 0;
  } catch {
    return false;
  }
}

function readIdentityOnce(dir: string): Identity {
  let keyPem: string, certPem: string, rootsPem: string, meta: IdentityMeta;
  try {
    keyPem = readFileSync(join(dir, IDENTITY_FILES.key), "utf8");
    certPem = readFileSync(join(dir, IDENTITY_FILES.cert), "utf8");
    rootsPem = readFileSync(join(dir, IDENTITY_FILES.roots), "utf8");
  } catch (e) {
    throw new StateError(`${dir} is not an enrolled identity directory (${(e as Error).message}); run \`mcpmesh enroll TOKEN --dir ${dir}\``, { cause: e });
  }
  try {
    meta = JSON.parse(readFileSync(join(dir, IDENTITY_FILES.meta), "utf8"));
  } catch (e) {
    throw new StateError(`${join(dir, IDENTITY_FILES.meta)} is missing or corrupt`, { cause: e });
  }
  const certs = splitPemCertificates(certPem);
  if (certs.length === 0) throw new StateError(`${join(dir, IDENTITY_FILES.cert)} holds no certificate`);
  let leaf;
  try {
    leaf = nodeCert(certs[0]);
  } catch (e) {
    throw new StateError(`${join(dir, IDENTITY_FILES.cert)} is corrupt`, { cause: e });
  }
  return {
    dir, keyPem, certPem, rootsPem, meta, id: meta.identity, serial: normalizeSerial(leaf.serialNumber),
    notBefore: Date.parse(leaf.validFrom), notAfter: Date.parse(leaf.validTo),
  };
}

export function hasIdentity(dir: string): boolean {
  return exists(join(dir, IDENTITY_FILES.key)) || exists(join(dir, IDENTITY_FILES.cert));
}

export function saveIdentity(dir: string, files: { keyPem: string; certPem: string; rootsPem: string; meta: IdentityMeta }): void {
  ensurePrivateDir(dir);
  writePrivateFileAtomic(join(dir, IDENTITY_FILES.key), files.keyPem);
  writeFileAtomic(join(dir, IDENTITY_FILES.cert), files.certPem, 0o644);
  writeFileAtomic(join(dir, IDENTITY_FILES.roots), files.rootsPem, 0o644);
  writeFileAtomic(join(dir, IDENTITY_FILES.meta), JSON.stringify(files.meta, null, 2) + "\n", 0o644);
}

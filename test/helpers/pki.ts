/**
 * A throwaway PKI driven by the openssl CLI, so tests can make certificates the mesh CA would never issue (two URI
 * SANs, CA:true leaves, RSA-1024, expired, ...). Good certificates for end-to-end tests should come from the real CA;
 * this exists for the bad ones, and for the CRLs that revoke them.
 *
 * Everything is synchronous and file-based: each CA is an `openssl ca` directory with its own index, so dates can be
 * set with -startdate/-enddate (openssl 3.0 has no `x509 -not_before`).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import { pemToDer } from "../../lib/x509.ts";

export type LeafKeyType = "ec256" | "ec384" | "rsa1024" | "rsa2048" | "ed25519";
export type CaName = "root" | "intermediate";

export interface LeafOptions {
  /** Each entry becomes its own URI GeneralName, taken literally (commas and spaces included). */
  uriSans?: string[];
  dnsSans?: string[];
  ipSans?: string[];
  /** Subject CN; defaults to the leaf name. `null` leaves the CN out (the subject keeps an O). */
  cn?: string | null;
  /** Extended key usages, e.g. ["clientAuth"]; `[]` omits the extension. Default ["clientAuth"]. */
  eku?: string[];
  /** keyUsage flags in openssl spelling; `[]` omits the extension. Default ["digitalSignature"] (critical). */
  keyUsage?: string[];
  /** basicConstraints CA:TRUE instead of the default critical CA:FALSE. */
  ca?: boolean;
  key?: LeafKeyType;
  /** Generate a key for this leaf alone instead of reusing the shared one of its type. */
  freshKey?: boolean;
  /** Validity in days from `notBefore` (default 1). Ignored when notAfter is given. */
  days?: number;
  /** Default: one minute ago, like the mesh CA's backdating. */
  notBefore?: Date;
  notAfter?: Date;
  /** Signed by its own key rather than by a CA. */
  selfSigned?: boolean;
  issuer?: CaName;
}

export interface TestLeaf {
  name: string;
  keyPath: string;
  certPath: string;
  /** Leaf followed by the intermediate (when the intermediate issued it): what a TLS client presents. */
  chainPath: string;
  keyPem: string;
  certPem: string;
  chainPem: string;
  der: Buffer;
  /** Upper-case hex, as Node prints it. */
  serial: string;
}

export interface CrlOptions {
  signer?: CaName;
  /** thisUpdate; default now. */
  lastUpdate?: Date;
  /** nextUpdate; wins over days/hours. */
  nextUpdate?: Date;
  days?: number;
  hours?: number;
}

export interface TestCrl {
  path: string;
  pem: string;
  der: Buffer;
}

export interface TestPki {
  dir: string;
  trustDomain: string;
  rootCertPath: string;
  rootKeyPath: string;
  intermediateCertPath: string;
  intermediateKeyPath: string;
  rootPem: string;
  intermediatePem: string;
  leaf(name: string, opts?: LeafOptions): TestLeaf;
  /** A CRL listing exactly the given certificates (paths to PEM files), signed by the intermediate by default. */
  crl(revokedCertPaths: string[], opts?: CrlOptions): TestCrl;
}

export interface CreateTestPkiOptions {
  trustDomain: string;
  /**
   * Distinguished-name prefix of the two CAs. Two PKIs made with the same prefix and trust domain have identical CA
   * names but different keys, which is how tests make a CRL that names our issuer but is signed by someone else.
   */
  caName?: string;
  /**
   * Sign leaves with an existing intermediate instead of generating one, e.g. the mesh CA's own (`<mesh>/ca/
   * intermediate.pem` and `.key` with its passphrase): certificates that chain to the real mesh roots but carry
   * profiles the mesh CA would never issue. The generated root is then unrelated to the intermediate.
   */
  intermediate?: { certPath: string; keyPath: string; passphrase?: string };
}

function openssl(args: string[]): string {
  try {
    return execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`openssl ${args.join(" ")} failed: ${err.stderr?.trim() || err.message}`, { cause: e });
  }
}

/** openssl config values treat these characters specially (comments, variables, quoting, escapes). */
function confValue(v: string): string {
  if (/[\r\n]/.test(v)) throw new Error(`openssl config value must be one line: ${JSON.stringify(v)}`);
  return v.replace(/[\\$#"']/g, (c) => `\\${c}`);
}

function opensslTime(d: Date): string {
  const iso = d.toISOString(); // 2025-01-02T03:04:05.678Z
  const digits = iso.slice(0, 19).replace(/[-T:]/g, "");
  return `${digits}Z`;
}

/** The two-digit form the index file uses (years before 2050). */
function indexTime(d: Date): string {
  return opensslTime(d).slice(2);
}

function genKey(path: string, type: LeafKeyType): void {
  const args = ["genpkey", "-out", path];
  switch (type) {
    case "ec256":
      args.push("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256");
      break;
    case "ec384":
      args.push("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384");
      break;
    case "rsa1024":
      args.push("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024");
      break;
    case "rsa2048":
      args.push("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048");
      break;
    case "ed25519":
      args.push("-algorithm", "ED25519");
      break;
  }
  openssl(args);
}

function reqConfig(subject: Array<[string, string]>): string {
  const dn = subject.map(([k, v]) => `${k} = ${confValue(v)}`).join("\n");
  return `[req]\nprompt = no\nutf8 = yes\nstring_mask = utf8only\ndistinguished_name = dn\n[dn]\n${dn}\n`;
}

interface CaDir {
  name: CaName;
  dir: string;
  certPath: string;
  keyPath: string;
}

function caConfig(ca: CaDir, database: string): string {
  return [
    "[ca]",
    "default_ca = CA_default",
    "[CA_default]",
    `database = ${confValue(database)}`,
    `new_certs_dir = ${confValue(join(ca.dir, "newcerts"))}`,
    `certificate = ${confValue(ca.certPath)}`,
    `private_key = ${confValue(ca.keyPath)}`,
    `crlnumber = ${confValue(join(ca.dir, "crlnumber"))}`,
    "rand_serial = yes",
    "default_md = sha256",
    "policy = policy_any",
    "preserve = yes",
    "unique_subject = no",
    "email_in_dn = no",
    "copy_extensions = none",
    "[policy_any]",
    "organizationName = optional",
    "commonName = optional",
    "",
  ].join("\n");
}

function initCaDir(ca: CaDir): string {
  mkdirSync(join(ca.dir, "newcerts"), { recursive: true });
  writeFileSync(join(ca.dir, "index.txt"), "");
  writeFileSync(join(ca.dir, "index.txt.attr"), "unique_subject = no\n");
  writeFileSync(join(ca.dir, "crlnumber"), "1000\n");
  const conf = join(ca.dir, "ca.cnf");
  writeFileSync(conf, caConfig(ca, join(ca.dir, "index.txt")));
  return conf;
}

export function createTestPki(dir: string, opts: CreateTestPkiOptions): TestPki {
  const { trustDomain } = opts;
  const caName = opts.caName ?? "mcpmesh test";
  mkdirSync(dir, { recursive: true });
  const keysDir = join(dir, "keys");
  const leavesDir = join(dir, "leaves");
  mkdirSync(keysDir, { recursive: true });
  mkdirSync(leavesDir, { recursive: true });

  const root: CaDir = { name: "root", dir: join(dir, "root"), certPath: join(dir, "root", "cert.pem"), keyPath: join(dir, "root", "key.pem") };
  const external = opts.intermediate;
  const inter: CaDir = {
    name: "intermediate",
    dir: join(dir, "intermediate"),
    certPath: external?.certPath ?? join(dir, "intermediate", "cert.pem"),
    keyPath: external?.keyPath ?? join(dir, "intermediate", "key.pem"),
  };
  /** `-passin` for commands that use the intermediate's key, when it is encrypted. */
  const passin = (c: CaName): string[] => (c === "intermediate" && external?.passphrase !== undefined ? ["-passin", `pass:${external.passphrase}`] : []);
  const rootConf = initCaDir(root);
  const interConf = initCaDir(inter);
  const confOf = (c: CaName) => (c === "root" ? rootConf : interConf);
  const caOf = (c: CaName) => (c === "root" ? root : inter);

  const now = Date.now();
  const caStart = new Date(now - 24 * 3600_000);
  const caEnd = new Date(now + 3650 * 24 * 3600_000);

  genKey(root.keyPath, "ec256");
  const rootReq = join(root.dir, "req.cnf");
  writeFileSync(rootReq, reqConfig([["O", trustDomain], ["CN", `${caName} root`]]));
  const rootCsr = join(root.dir, "req.csr");
  openssl(["req", "-new", "-config", rootReq, "-key", root.keyPath, "-out", rootCsr]);
  // Self-signing through `ca` (not `req -x509`) so the root gets the same explicit dates as everything else.
  const rootExt = join(root.dir, "ext.cnf");
  writeFileSync(rootExt, "[v3_root]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n");
  openssl([
    "ca", "-batch", "-notext", "-selfsign", "-config", rootConf, "-keyfile", root.keyPath, "-in", rootCsr, "-out", root.certPath,
    "-extfile", rootExt, "-extensions", "v3_root", "-startdate", opensslTime(caStart), "-enddate", opensslTime(caEnd),
  ]);

  if (!external) {
    genKey(inter.keyPath, "ec256");
    const interReq = join(inter.dir, "req.cnf");
    writeFileSync(interReq, reqConfig([["O", trustDomain], ["CN", `${caName} intermediate`]]));
    const interCsr = join(inter.dir, "req.csr");
    openssl(["req", "-new", "-config", interReq, "-key", inter.keyPath, "-out", interCsr]);
    const interExt = join(inter.dir, "ext.cnf");
    writeFileSync(
      interExt,
      "[v3_inter]\nbasicConstraints = critical, CA:TRUE, pathlen:0\nkeyUsage = critical, keyCertSign, cRLSign\n" +
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    );
    openssl([
      "ca", "-batch", "-notext", "-config", rootConf, "-in", interCsr, "-out", inter.certPath,
      "-extfile", interExt, "-extensions", "v3_inter", "-startdate", opensslTime(caStart), "-enddate", opensslTime(caEnd),
    ]);
  }

  const rootPem = readFileSync(root.certPath, "utf8");
  const intermediatePem = readFileSync(inter.certPath, "utf8");

  function sharedKey(type: LeafKeyType): string {
    const p = join(keysDir, `${type}.pem`);
    if (!existsSync(p)) genKey(p, type);
    return p;
  }

  const used = new Set<string>();
  function claimName(name: string): void {
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`leaf name must be a plain file name: ${name}`);
    if (used.has(name)) throw new Error(`leaf name used twice: ${name}`);
    used.add(name);
  }

  function leaf(name: string, o: LeafOptions = {}): TestLeaf {
    claimName(name);
    const base = join(leavesDir, name);
    const keyType = o.key ?? "ec256";
    let keyPath: string;
    if (o.freshKey) {
      keyPath = `${base}.key.pem`;
      genKey(keyPath, keyType);
    } else {
      keyPath = sharedKey(keyType);
    }

    const subject: Array<[string, string]> = [["O", trustDomain]];
    const cn = o.cn === undefined ? name : o.cn;
    if (cn !== null) subject.push(["CN", cn]);
    const reqPath = `${base}.req.cnf`;
    writeFileSync(reqPath, reqConfig(subject));
    const csrPath = `${base}.csr`;
    openssl(["req", "-new", "-config", reqPath, "-key", keyPath, "-out", csrPath]);

    const ext: string[] = ["[ext]"];
    ext.push(o.ca ? "basicConstraints = critical, CA:TRUE" : "basicConstraints = critical, CA:FALSE");
    const ku = o.keyUsage ?? ["digitalSignature"];
    if (ku.length > 0) ext.push(`keyUsage = critical, ${ku.join(", ")}`);
    const eku = o.eku ?? ["clientAuth"];
    if (eku.length > 0) ext.push(`extendedKeyUsage = ${eku.join(", ")}`);
    ext.push("subjectKeyIdentifier = hash");
    if (!o.selfSigned) ext.push("authorityKeyIdentifier = keyid");
    const alt: string[] = [];
    (o.uriSans ?? []).forEach((v, i) => alt.push(`URI.${i} = ${confValue(v)}`));
    (o.dnsSans ?? []).forEach((v, i) => alt.push(`DNS.${i} = ${confValue(v)}`));
    (o.ipSans ?? []).forEach((v, i) => alt.push(`IP.${i} = ${confValue(v)}`));
    if (alt.length > 0) ext.push("subjectAltName = @alt", "[alt]", ...alt);
    const extPath = `${base}.ext.cnf`;
    writeFileSync(extPath, ext.join("\n") + "\n");

    const notBefore = o.notBefore ?? new Date(Date.now() - 60_000);
    const notAfter = o.notAfter ?? new Date(notBefore.getTime() + (o.days ?? 1) * 24 * 3600_000);
    const issuer = o.issuer ?? "intermediate";
    const certPath = `${base}.cert.pem`;
    const args = [
      "ca", "-batch", "-notext", "-config", confOf(issuer), "-in", csrPath, "-out", certPath,
      "-extfile", extPath, "-extensions", "ext", "-startdate", opensslTime(notBefore), "-enddate", opensslTime(notAfter),
    ];
    if (!o.selfSigned) args.push(...passin(issuer));
    if (o.selfSigned) {
      args.push("-selfsign", "-keyfile", keyPath);
      // Ed25519 signs without a separate digest.
      if (keyType === "ed25519") args.push("-md", "default");
    }
    openssl(args);

    // Tests compare against this file byte for byte, so drop anything openssl might print before the PEM block.
    const certPem = readFileSync(certPath, "utf8").replace(/^[\s\S]*?(-----BEGIN CERTIFICATE-----)/, "$1");
    writeFileSync(certPath, certPem);
    const chainPem = o.selfSigned || issuer === "root" ? certPem : certPem + intermediatePem;
    const chainPath = `${base}.chain.pem`;
    writeFileSync(chainPath, chainPem);
    const der = pemToDer(certPem);
    return {
      name,
      keyPath,
      certPath,
      chainPath,
      keyPem: readFileSync(keyPath, "utf8"),
      certPem,
      chainPem,
      der,
      serial: new X509Certificate(der).serialNumber,
    };
  }

  let crlCount = 0;
  function crl(revokedCertPaths: string[], o: CrlOptions = {}): TestCrl {
    crlCount += 1;
    const signer = caOf(o.signer ?? "intermediate");
    const base = join(dir, `crl-${crlCount}`);
    // A private index per CRL makes each CRL list exactly the certificates asked for, whatever was revoked before.
    const revokedAt = new Date(Date.now() - 60_000);
    const lines = revokedCertPaths.map((p) => {
      const cert = new X509Certificate(readFileSync(p));
      let serial = cert.serialNumber.toUpperCase();
      if (serial.length % 2 === 1) serial = `0${serial}`;
      const expiry = new Date(cert.validTo);
      return `R\t${indexTime(expiry)}\t${indexTime(revokedAt)}\t${serial}\tunknown\t/CN=revoked\n`;
    });
    const index = `${base}.index.txt`;
    writeFileSync(index, lines.join(""));
    writeFileSync(`${index}.attr`, "unique_subject = no\n");
    const conf = `${base}.cnf`;
    writeFileSync(conf, caConfig(signer, index));
    const out = `${base}.pem`;
    const args = ["ca", "-batch", "-gencrl", "-config", conf, "-out", out, ...passin(o.signer ?? "intermediate")];
    if (o.lastUpdate) args.push("-crl_lastupdate", opensslTime(o.lastUpdate));
    if (o.nextUpdate) args.push("-crl_nextupdate", opensslTime(o.nextUpdate));
    else if (o.hours !== undefined) args.push("-crlhours", String(o.hours));
    else args.push("-crldays", String(o.days ?? 1));
    openssl(args);
    const pem = readFileSync(out, "utf8");
    return { path: out, pem, der: pemToDer(pem) };
  }

  return {
    dir,
    trustDomain,
    rootCertPath: root.certPath,
    rootKeyPath: root.keyPath,
    intermediateCertPath: inter.certPath,
    intermediateKeyPath: inter.keyPath,
    rootPem,
    intermediatePem,
    leaf,
    crl,
  };
}

/**
 * A throwaway mesh CA for integration tests: `mcpmesh ca init` on 127.0.0.1 with a free port, then `mcpmesh ca serve`
 * (both the real binary), plus helpers to make tokens, enroll identity directories over the real HTTPS API, read the
 * real SQLite database, and run openssl as an outside verifier. Agent tests reuse it for their certificates.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import Database from "better-sqlite3";
import { retainSqlite } from "../../ca/store.ts";
import { Authority, createToken, type CaConfig, type TokenOptions } from "../../ca/authority.ts";
import { decodeToken, hashTokenSecret } from "../../ca/token.ts";
import { enroll, type EnrollResult } from "../../identity/enroll.ts";
import { caRequest } from "../../identity/ca-client.ts";
import { splitPemCertificates } from "../../lib/x509.ts";
import { Cleanups, runCli, runCliOk, startCli, tmpdir, type CliOptions, type CliResult, type Defer, type RunningProcess } from "./cli.ts";

export const TEST_PASSPHRASE = "correct horse battery staple";
export const TRUST_DOMAIN = "example.org";

/** A free TCP port on 127.0.0.1: bind port 0, read it, close. (The CA URL is fixed at init, so it must be known.) */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

export interface TestCaOptions {
  trustDomain?: string;
  /** Identity paths allowed to revoke over the API (`ca init --admin`). */
  admins?: string[];
  passphrase?: string;
  /** Only `ca init`, no `ca serve` (for tests of the CLI against a stopped CA). */
  serve?: boolean;
  /**
   * How to create the CA: `cli` (default) runs `mcpmesh ca init`; `library` calls `Authority.init` in-process, the
   * same function, without one more CLI start (for suites whose subject is not init). `ca serve` is always the binary.
   */
  init?: "cli" | "library";
}

export interface EnrolledIdentity extends EnrollResult {
  token: string;
  keyPem: string;
  /** cert.pem as written: leaf followed by the intermediate. */
  certPem: string;
  leafPem: string;
  rootsPem: string;
}

export interface DbSnapshot {
  certs: { serial: string; identity: string; kind: string; revokedAt: number | null }[];
  tokens: { hash: string; identity: string; usedAt: number | null; usedSerial: string | null }[];
}

export interface TestCa {
  /** Parent temp dir: the CA lives in `${root}/ca`, identity dirs go under `${root}/ids`. */
  root: string;
  dir: string;
  url: string;
  port: number;
  trustDomain: string;
  passphrase: string;
  config: CaConfig;
  rootPem: string;
  intermediatePem: string;
  rootPath: string;
  intermediatePath: string;
  /** The `ca serve` process (undefined with `serve: false`). */
  server?: RunningProcess;
  /** `{ MCPMESH_CA_PASSPHRASE }` for CLI calls against this CA. */
  env: Record<string, string>;
  cli(args: string[], opts?: CliOptions): Promise<CliResult>;
  /** A token made in-process with the CLI's own library function (`createToken`), against the real DB. */
  token(identity: string, opts?: Omit<TokenOptions, "identity">): string;
  /** A fresh, not yet existing identity directory path under the fixture's root. */
  idDir(name?: string): string;
  /** Makes a token and enrolls with the library `enroll()` over HTTPS into a new identity directory. */
  enroll(identity: string, opts?: Omit<TokenOptions, "identity"> & { dir?: string }): Promise<EnrolledIdentity>;
  /** Tokens and certificates as the database holds them. */
  snapshot(): DbSnapshot;
  /** The database row of a token, or null. */
  tokenRow(token: string): DbSnapshot["tokens"][number] | null;
  stop(): Promise<void>;
}

let idCounter = 0;

/** Starts a CA with the real binary; everything is stopped and removed through `defer`. */
export async function startTestCa(defer: Defer, opts: TestCaOptions = {}): Promise<TestCa> {
  const trustDomain = opts.trustDomain ?? TRUST_DOMAIN;
  const passphrase = opts.passphrase ?? TEST_PASSPHRASE;
  const env = { MCPMESH_CA_PASSPHRASE: passphrase };
  const adminArgs = (opts.admins ?? []).flatMap((a) => ["--admin", a]);
  // The port is picked free and then bound by `ca serve`: another process may take it in between. Then the CA
  // (whose URL names the port) is made again in a fresh directory, up to three times.
  let made: { root: string; dir: string; url: string; port: number; server?: RunningProcess } | undefined;
  for (let attempt = 1; !made; attempt++) {
    const root = tmpdir(defer, "mcpmesh-ca-");
    const dir = join(root, "ca");
    const port = await freePort();
    const url = `https://127.0.0.1:${port}`;
    if (opts.init === "library") {
      (await Authority.init({ dir, trustDomain, url, passphrase, admins: opts.admins })).close();
    } else {
      await runCliOk(["ca", "init", "--dir", dir, "--trust-domain", trustDomain, "--url", url, ...adminArgs], { env });
    }
    if (opts.serve === false) {
      made = { root, dir, url, port };
      break;
    }
    try {
      // `listening` is an info line: make sure an inherited MCPMESH_LOG_LEVEL does not hide it.
      const server = await startCli(["ca", "serve", "--dir", dir], defer, { env: { ...env, MCPMESH_LOG_LEVEL: "info" } });
      if (server.url !== url) throw new Error(`ca serve listens on ${server.url}, expected ${url}`);
      made = { root, dir, url, port, server };
    } catch (e) {
      if (attempt >= 3 || !/EADDRINUSE/.test((e as Error).message)) throw e;
    }
  }
  const { root, dir, url, port, server } = made;
  const rootPath = join(dir, "root.pem");
  const intermediatePath = join(dir, "intermediate.pem");
  mkdirSync(join(root, "ids"), { recursive: true, mode: 0o700 });

  const withDb = <T>(fn: (db: Database.Database) => T): T => {
    const db = retainSqlite(new Database(join(dir, "ca.db"), { fileMustExist: true }));
    try {
      db.exec("PRAGMA busy_timeout = 5000");
      return fn(db);
    } finally {
      db.close();
    }
  };
  const tokenRow = (r: any) => ({ hash: r.hash as string, identity: r.identity as string, usedAt: r.used_at as number | null, usedSerial: r.used_serial as string | null });

  const ca: TestCa = {
    root, dir, url, port, trustDomain, passphrase, env, server, rootPath, intermediatePath,
    config: Authority.readConfig(dir),
    rootPem: readFileSync(rootPath, "utf8"),
    intermediatePem: readFileSync(intermediatePath, "utf8"),
    cli: (args, o = {}) => runCli(args, { ...o, env: { ...env, ...o.env } }),
    token(identity, o = {}) {
      const { config, store } = Authority.openStore(dir);
      try {
        return createToken(store, config, { ...o, identity }, Date.now()).token;
      } finally {
        store.close();
      }
    },
    idDir: (name) => join(root, "ids", name ?? `id-${++idCounter}`),
    async enroll(identity, o = {}) {
      const { dir: idDir, ...tokenOpts } = o;
      const token = ca.token(identity, tokenOpts);
      const target = idDir ?? ca.idDir();
      const result = await enroll(token, target);
      const certPem = readFileSync(join(target, "cert.pem"), "utf8");
      return {
        ...result, token, certPem,
        keyPem: readFileSync(join(target, "key.pem"), "utf8"),
        leafPem: splitPemCertificates(certPem)[0],
        rootsPem: readFileSync(join(target, "ca.pem"), "utf8"),
      };
    },
    snapshot: () =>
      withDb((db) => ({
        certs: (retainSqlite(db.prepare("SELECT serial, identity, kind, revoked_at FROM certs ORDER BY serial")).all() as any[]).map((r) => ({ serial: r.serial, identity: r.identity, kind: r.kind, revokedAt: r.revoked_at })),
        tokens: (retainSqlite(db.prepare("SELECT * FROM tokens ORDER BY hash")).all() as any[]).map(tokenRow),
      })),
    tokenRow(token) {
      const hash = hashTokenSecret(decodeToken(token).secret);
      return withDb((db) => {
        const r = retainSqlite(db.prepare("SELECT * FROM tokens WHERE hash = ?")).get(hash);
        return r ? tokenRow(r) : null;
      });
    },
    stop: async () => {
      await server?.stop();
    },
  };
  return ca;
}

/** For `before`/`after` fixtures: a CA and the cleanup stack that tears it down. */
export async function startSharedCa(opts: TestCaOptions = {}): Promise<{ ca: TestCa; cleanup: Cleanups }> {
  const cleanup = new Cleanups();
  try {
    return { ca: await startTestCa(cleanup.add, opts), cleanup };
  } catch (e) {
    await cleanup.run();
    throw e;
  }
}

/** A JSON request to a CA, optionally over mTLS with an identity's key and certificate chain. */
export async function caCall(ca: { url: string; rootPem: string }, path: string, body: unknown, client?: { keyPem: string; certPem: string }): Promise<{ status: number; json: any }> {
  const res = await caRequest({ baseUrl: ca.url, method: "POST", path, body, ca: ca.rootPem, key: client?.keyPem, cert: client?.certPem });
  return { status: res.status, json: JSON.parse(res.body.toString("utf8")) };
}

export async function caGet(ca: { url: string; rootPem: string }, path: string): Promise<{ status: number; body: Buffer; type: string }> {
  return caRequest({ baseUrl: ca.url, method: "GET", path, ca: ca.rootPem });
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs openssl (the outside verifier); never throws on a non-zero exit. */
export function openssl(args: string[], input?: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile("openssl", args, { encoding: "utf8", timeout: 60_000 }, (err, stdout, stderr) => {
      if (err && typeof (err as any).code !== "number") return reject(err);
      resolve({ code: err ? ((err as any).code as number) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** `openssl verify -CAfile roots -untrusted intermediate leaf` for a cert.pem as `mcpmesh enroll` writes it. */
export async function opensslVerifyChain(work: string, chainPem: string, rootsPem: string, purpose?: "sslclient" | "sslserver"): Promise<ExecResult> {
  const [leaf, ...rest] = splitPemCertificates(chainPem);
  const tag = createHash("sha256").update(chainPem).digest("hex").slice(0, 12);
  const files = { leaf: join(work, `${tag}-leaf.pem`), int: join(work, `${tag}-int.pem`), roots: join(work, `${tag}-roots.pem`) };
  writeFileSync(files.leaf, leaf);
  writeFileSync(files.int, rest.join(""));
  writeFileSync(files.roots, rootsPem);
  return openssl(["verify", ...(purpose ? ["-purpose", purpose] : []), "-CAfile", files.roots, "-untrusted", files.int, files.leaf]);
}

/** Every regular file in a directory with its mode and SHA-256, for "nothing changed" assertions. */
export function fileState(dir: string): Record<string, { mode: number; sha256: string }> {
  const out: Record<string, { mode: number; sha256: string }> = {};
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    const st = statSync(p);
    if (!st.isFile()) continue;
    out[name] = { mode: st.mode & 0o777, sha256: createHash("sha256").update(readFileSync(p)).digest("hex") };
  }
  return out;
}

/** `ca list --json` through the binary, parsed. */
export async function cliList(ca: TestCa): Promise<any[]> {
  const r = await ca.cli(["ca", "list", "--dir", ca.dir, "--json"]);
  if (r.code !== 0) throw new Error(`ca list failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as any[];
}

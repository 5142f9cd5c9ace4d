/**
 * `mcpmesh ca init` through the binary: the files it writes (modes, encrypted keys under a strong KDF, a P-256 root
 * and intermediate that openssl accepts), refusal to overwrite a CA, and the bad-flag table (each with its message
 * and no state change).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import Database from "better-sqlite3";
import { retainSqlite } from "../../ca/store.ts";
import { join } from "node:path";
import { Cleanups, inParallel, runCli, tmpdir } from "../helpers/cli.ts";
import { fileState, openssl, TEST_PASSPHRASE } from "../helpers/ca.ts";

const URL_ = "https://127.0.0.1:18443";

describe("ca init", () => {
  const cleanup = new Cleanups();
  let root: string;
  let dir: string;
  let initOut: { code: number | null; stdout: string; stderr: string };
  const passFile = () => join(root, "pass.txt");
  after(() => cleanup.run());
  before(async () => {
    root = tmpdir(cleanup.add);
    dir = join(root, "ca");
    writeFileSync(passFile(), `${TEST_PASSPHRASE}\n`, { mode: 0o600 });
    // The passphrase from a file (trailing newline stripped); the environment must not be needed.
    initOut = await runCli(["ca", "init", "--dir", dir, "--trust-domain", "example.org", "--url", URL_, "--passphrase-file", passFile(), "--admin", "ops/admin"], { env: { MCPMESH_CA_PASSPHRASE: undefined } });
  });

  test("creates the CA: dir 0700, keys and config 0600, certificates readable", () => {
    assert.equal(initOut.code, 0, initOut.stderr);
    assert.match(initOut.stdout, new RegExp(`^CA created in ${dir}\n  trust domain      example.org\n  url               ${URL_}\n  root fingerprint  sha256:[0-9a-f]{64}\n$`));
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    const files = fileState(dir);
    assert.deepEqual(Object.keys(files).sort(), ["ca.db", "ca.json", "intermediate.key", "intermediate.pem", "root.key", "root.pem"]);
    for (const f of ["root.key", "intermediate.key", "ca.json", "ca.db"]) assert.equal(files[f].mode, 0o600, f);
    for (const f of ["root.pem", "intermediate.pem"]) assert.equal(files[f].mode, 0o644, f);
  });

  test("ca.json records the trust domain, URL, root fingerprint and admins", async () => {
    const config = JSON.parse(readFileSync(join(dir, "ca.json"), "utf8"));
    assert.equal(config.trustDomain, "example.org");
    assert.equal(config.url, URL_);
    assert.deepEqual(config.admins, ["spiffe://example.org/ops/admin"]);
    const fp = await openssl(["x509", "-in", join(dir, "root.pem"), "-noout", "-fingerprint", "-sha256"]);
    assert.equal(fp.stdout.trim().split("=")[1].replace(/:/g, "").toLowerCase(), config.rootFingerprint);
    assert.match(initOut.stdout, new RegExp(`sha256:${config.rootFingerprint}`));
  });

  for (const key of ["root.key", "intermediate.key"]) {
    test(`${key} is PKCS#8 encrypted (PBES2, PBKDF2-HMAC-SHA256 >= 600000 iterations, AES-256-CBC); only the passphrase opens it`, async () => {
      const path = join(dir, key);
      assert.match(readFileSync(path, "utf8"), /^-----BEGIN ENCRYPTED PRIVATE KEY-----\n/);
      const asn = await openssl(["asn1parse", "-in", path]);
      assert.equal(asn.code, 0, asn.stderr);
      assert.match(asn.stdout, /:PBES2\n/);
      assert.match(asn.stdout, /:PBKDF2\n/);
      assert.match(asn.stdout, /:hmacWithSHA256\n/);
      assert.match(asn.stdout, /:aes-256-cbc\n/);
      // PBKDF2-params: salt OCTET STRING, then the iteration count INTEGER (hex), then the key length.
      const m = /:PBKDF2\n(?:.*\n)*?.*OCTET STRING.*\n.*INTEGER\s+:([0-9A-F]+)\n/.exec(asn.stdout);
      assert.ok(m, asn.stdout);
      assert.ok(parseInt(m[1], 16) >= 600_000, `iterations ${parseInt(m[1], 16)}`);

      const good = await openssl(["pkey", "-in", path, "-passin", `pass:${TEST_PASSPHRASE}`, "-noout", "-text"]);
      assert.equal(good.code, 0, good.stderr);
      assert.match(good.stdout, /ASN1 OID: prime256v1/);
      const wrong = await openssl(["pkey", "-in", path, "-passin", "pass:not the passphrase", "-noout"]);
      assert.notEqual(wrong.code, 0);
    });
  }

  test("root and intermediate: P-256 CAs; the intermediate verifies against the root", async () => {
    const v = await openssl(["verify", "-CAfile", join(dir, "root.pem"), join(dir, "intermediate.pem")]);
    assert.equal(v.code, 0, v.stderr);
    const rootText = (await openssl(["x509", "-in", join(dir, "root.pem"), "-noout", "-text"])).stdout;
    assert.match(rootText, /ASN1 OID: prime256v1/);
    assert.match(rootText, /CA:TRUE, pathlen:1/);
    assert.match(rootText, /Certificate Sign, CRL Sign/);
    const intText = (await openssl(["x509", "-in", join(dir, "intermediate.pem"), "-noout", "-text"])).stdout;
    assert.match(intText, /ASN1 OID: prime256v1/);
    assert.match(intText, /CA:TRUE, pathlen:0/);
    assert.match(intText, /Issuer: CN = mcpmesh root CA, O = mcpmesh, OU = example.org/);
  });

  test("init over an existing CA is refused and changes no byte", async () => {
    const before = fileState(dir);
    const r = await runCli(["ca", "init", "--dir", dir, "--trust-domain", "other.org", "--url", "https://127.0.0.1:1", "--passphrase-file", passFile()]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), `mcpmesh: a CA already exists in ${dir}; refusing to overwrite it (choose another --dir)`);
    assert.equal(r.stdout, "");
    assert.deepEqual(fileState(dir), before, "files unchanged byte for byte");
    assert.equal(statSync(dir).mode & 0o777, 0o700);
  });

  // (The library-level validations behind these flags are tabled in full, in-process, in profile.test.ts.)
  test("bad flags: each refused with its message, and nothing is written", async () => {
    const newDir = () => join(root, `bad-${Math.random().toString(36).slice(2)}`);
    const pass = { MCPMESH_CA_PASSPHRASE: TEST_PASSPHRASE };
    // `dir` is the directory the command would create (init) or the CA it acts on (everything else).
    const table: { name: string; args: (d: string) => string[]; env?: Record<string, string | undefined>; existing?: boolean; code?: number; stderr: string | RegExp }[] = [
      { name: "--trust-domain with a space", args: (d) => ["ca", "init", "--dir", d, "--trust-domain", "Bad Domain", "--url", URL_], stderr: `trust-domain: "Bad Domain" is not a valid trust domain (lower-case letters, digits, '.', '-', '_')` },
      { name: "--url over plain http", args: (d) => ["ca", "init", "--dir", d, "--trust-domain", "example.org", "--url", "http://127.0.0.1:8443"], stderr: `url: "http://127.0.0.1:8443" must use https` },
      { name: "no passphrase", args: (d) => ["ca", "init", "--dir", d, "--trust-domain", "example.org", "--url", URL_], env: { MCPMESH_CA_PASSPHRASE: undefined }, stderr: "passphrase: set MCPMESH_CA_PASSPHRASE or pass --passphrase-file FILE" },
      { name: "token --identity ../x", existing: true, args: () => ["ca", "token", "--dir", dir, "--identity", "../x"], stderr: `identity: "../x" has an invalid path segment ".." (letters, digits, '.', '-', '_'; no empty, '.' or '..')` },
      { name: "token --ttl banana", existing: true, args: () => ["ca", "token", "--dir", dir, "--identity", "a", "--ttl", "banana"], stderr: `ttl: "banana" is not a duration (examples: 90s, 15m, 1h, 1h30m)` },
      { name: "token --cert-ttl 25h", existing: true, args: () => ["ca", "token", "--dir", dir, "--identity", "a", "--cert-ttl", "25h"], stderr: "cert-ttl: must be between 1m and 24h (certificates are short-lived by design)" },
      { name: "revoke with neither --serial nor --identity", existing: true, args: () => ["ca", "revoke", "--dir", dir], stderr: "target: give exactly one of serial or identity" },
      { name: "serve with the wrong passphrase", existing: true, env: { MCPMESH_CA_PASSPHRASE: "not the passphrase" }, args: () => ["ca", "serve", "--dir", dir], stderr: "cannot decrypt the intermediate CA key: wrong passphrase or damaged key file" },
      { name: "serve on a directory without a CA", args: (d) => ["ca", "serve", "--dir", d], stderr: /^no CA in .* \(missing ca\.json\); run `mcpmesh ca init --dir .*` first$/ },
    ];
    const before = fileState(dir);
    const results = await inParallel(table, 3, async (c) => {
      const d = newDir();
      const r = await runCli(c.args(d), { env: { ...pass, ...c.env } });
      return { c, d, r };
    });
    for (const { c, d, r } of results) {
      assert.equal(r.code, c.code ?? 1, `${c.name}: exit ${r.code}\n${r.stderr}`);
      const msg = r.stderr.trim();
      if (typeof c.stderr === "string") assert.equal(msg, `mcpmesh: ${c.stderr}`, c.name);
      else assert.match(c.code === 2 ? msg : msg.replace(/^mcpmesh: /, ""), c.stderr, c.name);
      assert.equal(r.stdout, "", `${c.name}: nothing on stdout`);
      if (!c.existing) assert.equal(existsSync(d), false, `${c.name}: no directory created`);
    }
    assert.deepEqual(fileState(dir), before, "the existing CA is unchanged");
    // Nothing was issued, no token was made.
    const list = await runCli(["ca", "list", "--dir", dir, "--json"]);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(JSON.parse(list.stdout), []);
    const db = retainSqlite(new Database(join(dir, "ca.db"), { readonly: true, fileMustExist: true }));
    try {
      assert.equal((retainSqlite(db.prepare("SELECT count(*) AS n FROM tokens")).get() as { n: number }).n, 0);
    } finally {
      db.close();
    }
  });

  test("serve on an address already in use: a clear error, no stack trace", async (t) => {
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", r));
    t.after(() => new Promise<void>((r) => holder.close(() => r())));
    const port = (holder.address() as AddressInfo).port;
    const r = await runCli(["ca", "serve", "--dir", dir, "--listen", `127.0.0.1:${port}`, "--passphrase-file", passFile()]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), `mcpmesh: listen: cannot listen on 127.0.0.1:${port}: the address is already in use (EADDRINUSE)`);
  });
});

/**
 * docs/operations.md's backup and restore procedure, run as written (paths substituted): a snapshot of a CA's
 * database taken while `mcpmesh ca serve` runs and writes, restored into a fresh directory that `ca list` and
 * `ca serve` accept, with the certificates and revocations recorded before the backup, and nothing after.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { BIN, REPO_ROOT, runCliOk, startCli, tmpdir } from "./helpers/cli.ts";
import { freePort } from "./helpers/ports.ts";

const DOC = readFileSync(join(REPO_ROOT, "docs", "operations.md"), "utf8");
const env = { MCPMESH_CA_PASSPHRASE: "operations test passphrase" };

/** The ```sh block of docs/operations.md that starts with `first`. */
function block(first: string): string {
  const m = [...DOC.matchAll(/```sh\n([\s\S]*?)```/g)].map((x) => x[1]).find((b) => b.startsWith(first));
  assert.ok(m, `docs/operations.md has a sh block starting with ${first}`);
  return m;
}

function bash(script: string): string {
  const r = spawnSync("bash", ["-euo", "pipefail", "-c", script], { cwd: REPO_ROOT, encoding: "utf8", env: { ...process.env, ...env, NODE_OPTIONS: "" } });
  assert.equal(r.status, 0, `script failed:\n${script}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

const mcpmesh = `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)}`;

test("the documented CA backup, taken while ca serve runs, restores to a CA that lists and serves what was recorded", async (t) => {
  const root = tmpdir((fn) => t.after(fn));
  const caDir = join(root, "lib", "ca");
  execFileSync("mkdir", ["-p", join(root, "lib")]);
  const port = await freePort();
  await runCliOk(["ca", "init", "--dir", caDir, "--trust-domain", "example.org", "--url", `https://127.0.0.1:${port}`], { env });
  const serve = await startCli(["ca", "serve", "--dir", caDir], (fn) => t.after(fn), { env });
  t.after(() => serve.stop());

  // Before the backup: alice enrolled and revoked, bob enrolled.
  const enroll = async (path: string) => {
    const token = (await runCliOk(["ca", "token", "--dir", caDir, "--identity", path], { env })).stdout.trim();
    await runCliOk(["enroll", token, "--dir", join(root, `${path.replace("/", "-")}-id`)], { env });
  };
  await enroll("team/alice");
  await enroll("team/bob");
  await runCliOk(["ca", "revoke", "--dir", caDir, "--identity", "team/alice", "--reason", "keyCompromise"], { env });

  const backup = block("umask 077").replaceAll("/var/lib/mcpmesh/ca", caDir).replaceAll("/var/backups/mcpmesh", join(root, "backups"));
  const out = bash(`${backup}\necho "B=$B"`);
  assert.match(out, /backup ok/);
  const dir = /^B=(.+)$/m.exec(out)![1];

  // After the backup: carol enrolls. The restore must not know her.
  await enroll("team/carol");
  await serve.stop();

  for (const f of ["ca.db", "root.key", "intermediate.key", "ca.json"]) {
    assert.equal(statSync(join(dir, f)).mode & 0o077, 0, `${f} in the backup is private`);
  }
  const restore = block("mkdir -m 700").replaceAll("/var/lib/mcpmesh", join(root, "lib")).replaceAll("mcpmesh ca", `${mcpmesh} ca`);
  const lines = restore.trim().split("\n");
  assert.match(lines.at(-1)!, /ca serve --dir/);
  const listed = bash(`B=${JSON.stringify(dir)}\n${lines.slice(0, -1).join("\n")}`);
  const restored = join(root, "lib", "ca-restored");
  assert.equal(statSync(restored).mode & 0o777, 0o700);
  assert.match(listed, /revoked\s+\S+\s+spiffe:\/\/example\.org\/team\/alice/);
  assert.match(listed, /valid\s+\S+\s+spiffe:\/\/example\.org\/team\/bob/);
  assert.doesNotMatch(listed, /carol/);

  // The restored CA serves (the passphrase still opens its keys) and its CRL lists alice.
  const again = await startCli(["ca", "serve", "--dir", restored], (fn) => t.after(fn), { env });
  t.after(() => again.stop());
  assert.equal(again.url, `https://127.0.0.1:${port}`);
  const list = JSON.parse((await runCliOk(["ca", "list", "--dir", restored, "--json"], { env })).stdout) as { identity: string; status: string }[];
  assert.deepEqual(list.filter((c) => c.identity.includes("/team/")).map((c) => `${c.identity} ${c.status}`).sort(), ["spiffe://example.org/team/alice revoked", "spiffe://example.org/team/bob valid"]);
});

test("the sqlite3 alternative in docs/operations.md takes the same consistent snapshot", async (t) => {
  if (spawnSync("sqlite3", ["-version"]).status !== 0) {
    t.skip("sqlite3 is not installed");
    return;
  }
  const root = tmpdir((fn) => t.after(fn));
  const caDir = join(root, "ca");
  await runCliOk(["ca", "init", "--dir", caDir, "--trust-domain", "example.org", "--url", `https://127.0.0.1:${await freePort()}`], { env });
  await runCliOk(["ca", "token", "--dir", caDir, "--identity", "team/alice"], { env });
  const line = /#\s+or, with the sqlite3 shell: (sqlite3 .*)$/m.exec(block("umask 077"))?.[1];
  assert.ok(line);
  bash(`B=${JSON.stringify(root)}\n${line.replaceAll("/var/lib/mcpmesh/ca", caDir)}`);
  const check = spawnSync("sqlite3", [join(root, "ca.db"), "PRAGMA integrity_check; SELECT count(*) FROM tokens;"], { encoding: "utf8" });
  assert.equal(check.stdout.trim(), "ok\n1");
});

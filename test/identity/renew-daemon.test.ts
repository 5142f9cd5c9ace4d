/**
 * The real `mcpmesh renew --daemon --exec CMD`: renews at half-life (here overdue at once, then again about a minute
 * into a 1-minute certificate's 2-minute backdated life), runs CMD after each renewal with MCPMESH_IDENTITY_DIR set,
 * and exits cleanly on SIGTERM.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { readFileSync, existsSync } from "node:fs";
import { Authority } from "../../ca/authority.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { loadIdentity, saveIdentity } from "../../identity/store.ts";
import { createMesh, PASSPHRASE } from "../helpers/mesh.ts";
import { BIN } from "../helpers/cli.ts";

test("renew --daemon --exec renews repeatedly and runs the command after each renewal", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const ca = await mesh.startCa();
  after(() => ca.close());
  const past = await Authority.open({ dir: join(mesh.dir, "ca"), passphrase: PASSPHRASE, clock: () => Date.now() - 45_000 });
  const { token } = past.createToken({ identity: "team-a/daemon", certTtlMs: 60_000 });
  const { keyPem, csrPem } = await newKeyAndCsr();
  const issued = await past.enroll(token, csrPem);
  past.close();
  const dir = join(mesh.dir, "daemon-id");
  saveIdentity(dir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl: mesh.caUrl, rootFingerprint: mesh.authority.config.rootFingerprint, identity: issued.identity, kind: "client" } });

  const out = join(mesh.dir, "exec.log");
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, [BIN, "renew", "--dir", dir, "--daemon", "--exec", `echo "$MCPMESH_IDENTITY_DIR" >> '${out}'`], { env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  after(() => child.kill("SIGKILL"));

  const lines = () => (existsSync(out) ? readFileSync(out, "utf8").split("\n").filter(Boolean) : []);
  const deadline = Date.now() + 60_000;
  while (lines().length < 2) {
    if (Date.now() > deadline) throw new Error(`two renewals not seen within 60 s; stderr:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.deepEqual(lines().slice(0, 2), [dir, dir]);
  const now = loadIdentity(dir);
  assert.notEqual(now.serial, issued.serial);
  const renewals = stderr.split("\n").filter((l) => l.includes('"event":"renewed"')).map((l) => JSON.parse(l));
  assert.ok(renewals.length >= 2);
  assert.equal(renewals[0].previous, issued.serial);
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
});

/**
 * bin/mcpmesh.js runs the compiled tree (dist/) when it is at least as new as every source file, and the TypeScript
 * sources through tsx otherwise, so an edited checkout never runs stale code. Checked on a copy of the package (the
 * checkout's own files are never touched): a dist/ entry point that announces itself shows which branch ran.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./helpers/cli.ts";
import { createMesh } from "./helpers/mesh.ts";

function copyPackage(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "mcpmesh-launcher-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  assert.ok(existsSync(join(REPO_ROOT, "dist", "build-stamp.json")), "the checkout is built (npm test builds first: pretest)");
  for (const d of ["bin", "dist", "agent", "ca", "cli", "identity", "lib", "examples"]) cpSync(join(REPO_ROOT, d), join(dir, d), { recursive: true, preserveTimestamps: true });
  cpSync(join(REPO_ROOT, "package.json"), join(dir, "package.json"));
  symlinkSync(join(REPO_ROOT, "node_modules"), join(dir, "node_modules"));
  // A marker in the compiled entry point: it prints before the CLI runs.
  writeFileSync(join(dir, "dist", "cli", "main.js"), `process.stderr.write("compiled entry point\\n");\n` + execFileSync("cat", [join(REPO_ROOT, "dist", "cli", "main.js")], { encoding: "utf8" }));
  // Every file older than the stamp, as after a build.
  const old = new Date(Date.now() - 3_600_000);
  execFileSync("find", [dir, "-path", join(dir, "node_modules"), "-prune", "-o", "-exec", "touch", "-h", "-d", old.toISOString(), "{}", "+"]);
  utimesSync(join(dir, "dist", "build-stamp.json"), new Date(), new Date());
  return dir;
}

function run(dir: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [join(dir, "bin", "mcpmesh.js"), ...args], { encoding: "utf8", env: { ...process.env, ...env }, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("a fresh build runs from dist/; a source newer than the build, a missing stamp or MCPMESH_FROM_SOURCE=1 runs the sources", async (t) => {
  const dir = copyPackage(t);

  const compiled = run(dir, ["--version"]);
  assert.equal(compiled.code, 0, compiled.stderr);
  assert.equal(compiled.stdout.trim(), "0.1.0");
  assert.match(compiled.stderr, /compiled entry point/, "the fresh build ran");

  const forced = run(dir, ["--version"], { MCPMESH_FROM_SOURCE: "1" });
  assert.equal(forced.code, 0, forced.stderr);
  assert.equal(forced.stdout.trim(), "0.1.0");
  assert.doesNotMatch(forced.stderr, /compiled entry point/);

  // An edit to any source file after the build (deep in a folder too) makes the build stale.
  utimesSync(join(dir, "agent", "edge", "sse.ts"), new Date(Date.now() + 60_000), new Date(Date.now() + 60_000));
  const edited = run(dir, ["--version"]);
  assert.equal(edited.code, 0, edited.stderr);
  assert.doesNotMatch(edited.stderr, /compiled entry point/, "a stale build is not run");

  // A build that did not finish (tsc failed, so no stamp) is not run either.
  utimesSync(join(dir, "agent", "edge", "sse.ts"), new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
  assert.match(run(dir, ["--version"]).stderr, /compiled entry point/);
  rmSync(join(dir, "dist", "build-stamp.json"));
  const unstamped = run(dir, ["--version"]);
  assert.equal(unstamped.code, 0, unstamped.stderr);
  assert.doesNotMatch(unstamped.stderr, /compiled entry point/);
});

test("the compiled CLI finds the package's files: desktop-client snippets name bin/mcpmesh.js of the package", async (t) => {
  const dir = copyPackage(t);
  const mesh = await createMesh();
  t.after(() => mesh.close());
  const alice = await mesh.issue("team/alice");
  const r = run(dir, ["connect", "https://127.0.0.1:8443/mcp", "--identity", alice, "--print-config", "claude"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /compiled entry point/);
  const json = JSON.parse(r.stdout) as { mcpServers: Record<string, { command: string; args: string[] }> };
  assert.equal(json.mcpServers.mcpmesh.args[0], join(dir, "bin", "mcpmesh.js"));
  assert.equal(json.mcpServers.mcpmesh.command, process.execPath);
});

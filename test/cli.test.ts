import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";

const BIN = join(import.meta.dirname, "..", "bin", "mcpmesh.js");
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 120_000 });

test("the stable CLI surface is present", () => {
  const top = run("--help");
  assert.equal(top.status, 0);
  for (const cmd of ["ca", "enroll", "renew", "agent", "demo"]) assert.match(top.stdout, new RegExp(`\\b${cmd}\\b`));
  const ca = run("ca", "--help");
  for (const cmd of ["init", "serve", "token", "revoke", "list"]) assert.match(ca.stdout, new RegExp(`\\b${cmd}\\b`));
  const agent = run("agent", "--help");
  for (const cmd of ["run", "check"]) assert.match(agent.stdout, new RegExp(`\\b${cmd}\\b`));
});

test("usage errors exit 2 and name the problem", () => {
  const unknown = run("frobnicate");
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /unknown command 'frobnicate'/);
  const missing = run("ca", "init", "--dir", "/nonexistent-never-created");
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /required option '--trust-domain <td>' not specified/);
});

// `mcpmesh demo` is checked step by step in test/demo.test.ts (from the packed package).

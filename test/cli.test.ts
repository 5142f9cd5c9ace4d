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

test("the README's main job, `mcpmesh demo`, runs the whole mesh and shows each defence", () => {
  const demo = run("demo");
  assert.equal(demo.status, 0, demo.stderr);
  const out = demo.stdout;
  assert.match(out, /tools\/list shows her only: list-notes, read-note\n/);
  assert.match(out, /add-note \(a write tool\): REFUSED \(MCP error -32602: Unknown tool: add-note\)/);
  assert.match(out, /add-note title=plans: "added \\"plans\\""/);
  assert.match(out, /must match pattern/);
  assert.match(out, /delete-note: REFUSED/);
  assert.match(out, /notes on the server now: welcome, plans\n/);
  assert.match(out, /the agent's log says why: not_admitted/);
  assert.match(out, /alice renewed over mTLS/);
  assert.match(out, /alice reconnects: REFUSED/);
  assert.match(out, /the agent's log says why: revoked/);
  assert.match(out, /Done\./);
});

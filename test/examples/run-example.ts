import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";
import { REPO_ROOT } from "../helpers/cli.ts";

/**
 * Runs `node --import tsx examples/<name>/run.ts` as CI and a reader would, and checks it passed every check, exited
 * 0 and removed its working directory. Returns its output for example-specific assertions.
 */
export async function runExample(name: string, t: { after(fn: () => void): void }): Promise<string> {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, ["--import", "tsx", join("examples", name, "run.ts")], { cwd: REPO_ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  assert.equal(code, 0, out);
  assert.match(out, new RegExp(`example ${name}: all checks passed`));
  assert.doesNotMatch(out, /FAIL/);
  assert.doesNotMatch(out, /mcpmesh1\./, "enrollment tokens are never printed");
  const dir = /working directory (\S+)\)/.exec(out)?.[1];
  assert.ok(dir, out);
  assert.equal(existsSync(dir), false, "the example removed its working directory");
  return out;
}

/** True when the example printed a passed check whose text contains `what`. */
export function passed(out: string, what: string): boolean {
  return out.split("\n").some((l) => l.startsWith("  ok   ") && l.includes(what));
}

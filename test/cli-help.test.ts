/**
 * `mcpmesh --help` and every subcommand's help end with an example invocation of that very command; common mistakes
 * get an error that says how to fix them.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Command } from "commander";
import { buildProgram } from "../cli/main.ts";
import { runCli, tmpdir } from "./helpers/cli.ts";

function helpOf(cmd: Command): string {
  let out = "";
  cmd.configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (out += s) });
  cmd.outputHelp();
  return out;
}

function walk(cmd: Command, path: string[], visit: (c: Command, path: string[]) => void): void {
  visit(cmd, path);
  for (const sub of cmd.commands) if (sub.name() !== "help") walk(sub, [...path, sub.name()], visit);
}

test("every command's help ends with an example of that command", () => {
  const seen: string[] = [];
  walk(buildProgram(), [], (c, path) => {
    const help = helpOf(c);
    const name = ["mcpmesh", ...path].join(" ");
    seen.push(name);
    const block = /Examples?:\n((?: {2}.*\n?)+)$/.exec(help);
    assert.ok(block, `${name} --help has no Example block:\n${help}`);
    const lines = block[1].trim().split("\n").map((l) => l.trim());
    assert.ok(lines.some((l) => l.replace(/^[A-Z_]+=('[^']*'|\S+) /, "").startsWith(name)), `${name}: the example does not run ${name}:\n${block[1]}`);
  });
  for (const c of ["mcpmesh", "mcpmesh ca init", "mcpmesh ca serve", "mcpmesh ca token", "mcpmesh ca revoke", "mcpmesh ca list", "mcpmesh enroll", "mcpmesh renew", "mcpmesh agent run", "mcpmesh agent check", "mcpmesh agent status", "mcpmesh agent tools approve", "mcpmesh audit verify", "mcpmesh demo"]) {
    assert.ok(seen.includes(c), `${c} was visited`);
  }
});

test("common mistakes get an error that names the fix", async (t) => {
  const dir = tmpdir((fn) => t.after(fn));
  const cases: { args: string[]; env?: Record<string, string | undefined>; fix: RegExp }[] = [
    { args: ["ca", "init", "--dir", join(dir, "ca"), "--trust-domain", "example.org", "--url", "https://127.0.0.1:9443"], env: { MCPMESH_CA_PASSPHRASE: undefined }, fix: /set MCPMESH_CA_PASSPHRASE or pass --passphrase-file FILE/ },
    { args: ["ca", "token", "--dir", join(dir, "nothing-here"), "--identity", "team/a"], fix: /run `mcpmesh ca init --dir/ },
    { args: ["agent", "check", "--config", join(dir, "missing.yaml")], fix: /file not found/ },
    { args: ["agent", "check", "--config", join(dir, "a.yaml"), "--identity", "spiffe://example.org/a"], fix: /needs both --identity and --tool|file not found/ },
    { args: ["renew", "--dir", join(dir, "no-id")], fix: /run `mcpmesh enroll TOKEN --dir / },
    { args: ["enroll", "not-a-token", "--dir", join(dir, "x-id")], fix: /it should start with "mcpmesh1\."/ },
    { args: ["agent", "status"], fix: /pass --admin URL or --config FILE/ },
    { args: ["enroll"], fix: /required option '--dir <dir>' not specified[\s\S]*Usage: mcpmesh enroll/ },
    { args: ["agnet"], fix: /unknown command 'agnet'[\s\S]*\(Did you mean agent\?\)/ },
  ];
  for (const c of cases) {
    const r = await runCli(c.args, { env: c.env });
    assert.notEqual(r.code, 0, c.args.join(" "));
    assert.match(r.stderr, c.fix, `mcpmesh ${c.args.join(" ")}:\n${r.stderr}`);
  }
});

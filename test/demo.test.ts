/**
 * `mcpmesh demo`, checked twice: the library function's structured outcomes (each step's facts: tools listed, rule ids,
 * refusal reasons, error codes, zero failed calls under rotation), and the real command run from the npm package as
 * it would be installed (`npm pack`, unpacked, the checkout's node_modules linked in), so a file missing from the
 * package's "files" fails here. `--keep` leaves the mesh up until SIGINT, which stops it and removes its files.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { connect } from "node:net";
import { runDemo, DEMO_IDS, READER_RATE, type DemoStep } from "../cli/demo.ts";
import { renderStep } from "../cli/demo-cli.ts";
import { REPO_ROOT } from "./helpers/cli.ts";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const STEP_IDS = ["ca", "enroll", "agent", "reader-list", "reader-read", "reader-write-denied", "schema-rejected", "writer-write", "outsider-refused", "rate-limit", "revocation", "rotation", "audit"];

test("runDemo: every step behaves as the mesh promises, and says why", async () => {
  const seen: DemoStep[] = [];
  const r = await runDemo({ onStep: (s) => seen.push(s) });
  const failed = r.steps.find((s) => !s.ok);
  assert.equal(failed, undefined, JSON.stringify(failed));
  assert.equal(r.ok, true);
  assert.deepEqual(r.steps.map((s) => s.id), STEP_IDS);
  assert.deepEqual(seen, r.steps, "onStep reports every step, in order");
  const by = Object.fromEntries(r.steps.map((s) => [s.id, s]));
  assert.deepEqual(by["reader-list"].facts.tools, ["list-notes", "read-note"]);
  assert.equal(by["reader-read"].facts.rule, "readers-read");
  assert.equal(by["reader-write-denied"].facts.code, -32602);
  assert.equal(by["reader-write-denied"].facts.decision, "deny");
  assert.match(String(by["reader-write-denied"].facts.reason), /default deny/);
  assert.equal(by["schema-rejected"].facts.decision, "deny");
  assert.match(String(by["schema-rejected"].facts.reason), /arguments\.title: must match pattern/);
  assert.equal(by["writer-write"].facts.rule, "writers-read-write");
  assert.equal(by["writer-write"].facts.deleteRule, "nobody-deletes");
  assert.equal(by["outsider-refused"].facts.reason, "not_admitted");
  assert.equal(by["rate-limit"].facts.code, -32029);
  assert.ok((by["rate-limit"].facts.allowed as number) >= READER_RATE);
  assert.match(String(by["rate-limit"].facts.reason), /rate limit of rule readers-read/);
  assert.equal(by.revocation.facts.reason, "revoked");
  assert.ok((by.revocation.facts.connectionsClosed as number) >= 1);
  assert.equal(by.rotation.facts.failed, 0);
  assert.ok((by.rotation.facts.calls as number) >= 15);
  assert.notEqual(by.rotation.facts.agentBefore, by.rotation.facts.agentAfter);
  assert.equal(by.audit.facts.ok, true);
  for (const s of r.steps) {
    assert.ok(s.what.length > 0 && s.why.length > 0, `step ${s.id} says what happened and why`);
  }
  assert.equal(r.mesh, undefined);
  // Its temporary directory is gone: no mcpmesh-demo-* directory names the CA URL it served.
  const caPort = Number(new URL(String(by.ca.facts.caUrl)).port);
  const agentPort = Number(new URL(String(by.agent.facts.agentUrl)).port);
  assert.equal(await listening(caPort), false, "the CA was stopped");
  assert.equal(await listening(agentPort), false, "the agent was stopped");
});

test("runDemo fails the step whose promise the mesh breaks, stops there and cleans up", async () => {
  // Without the deny rule, the writer's delete goes through: the step that shows "deny wins" must fail.
  const r = await runDemo({ agentConfig: (c) => ({ ...c, rules: (c.rules as { id: string }[]).filter((x) => x.id !== "nobody-deletes") }) });
  assert.equal(r.ok, false);
  assert.equal(r.failed?.id, "writer-write");
  assert.match(r.failed!.error!, /delete-note was not denied by nobody-deletes/);
  assert.deepEqual(r.steps.map((s) => s.id), STEP_IDS.slice(0, STEP_IDS.indexOf("writer-write") + 1), "no step runs after the failed one");
  assert.ok(r.steps.slice(0, -1).every((s) => s.ok));
  const dir = /^working directory (\S+) /.exec(r.steps[0].what[0])?.[1];
  assert.ok(dir);
  assert.equal(existsSync(dir), false, "the demo's directory was removed");
  assert.equal(await listening(Number(new URL(String(r.steps[2].facts.agentUrl)).port)), false, "the agent was stopped");
});

test("steps render in colour for a terminal and plain otherwise", () => {
  const pass: DemoStep = { id: "reader-read", title: "The reader reads", ok: true, what: ["read-note → hello"], why: ["allowed by rule readers-read"], facts: {} };
  const fail: DemoStep = { ...pass, ok: false, error: "the read was not allowed" };
  assert.equal(renderStep(pass, 5, false), "✔ PASS [5] The reader reads\n    read-note → hello\n    why: allowed by rule readers-read");
  assert.equal(renderStep(fail, 5, false).split("\n").at(-1), "    expected otherwise: the read was not allowed");
  assert.equal(renderStep(fail, 5, false).split("\n")[0], "✘ FAIL [5] The reader reads");
  const tty = renderStep(pass, 5, true);
  assert.ok(tty.startsWith("\u001b[32m✔ PASS\u001b[0m \u001b[1m[5] The reader reads\u001b[0m"), JSON.stringify(tty));
  assert.ok(renderStep(fail, 5, true).startsWith("\u001b[31m✘ FAIL"));
});

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

/** `npm pack` of this checkout, unpacked into a temp dir with the checkout's node_modules linked in (once per file). */
let packed: string | undefined;
after(() => {
  if (packed) rmSync(dirname(packed), { recursive: true, force: true });
});
function installedPackage(): string {
  if (packed) return packed;
  const dir = mkdtempSync(join(tmpdir(), "mcpmesh-pack-"));
  packed = join(dir, "package");
  execFileSync("npm", ["pack", "--silent", "--pack-destination", dir], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  const tgz = readdirSync(dir).find((f) => f.endsWith(".tgz"));
  assert.ok(tgz, "npm pack wrote a tarball");
  execFileSync("tar", ["-xzf", join(dir, tgz), "-C", dir]);
  symlinkSync(join(REPO_ROOT, "node_modules"), join(packed, "node_modules"));
  assert.equal(existsSync(join(packed, "test")), false, "tests are not shipped");
  return packed;
}

function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  delete env.NODE_TEST_CONTEXT;
  return env;
}

test("`mcpmesh demo` from the packed package: narrates every step, plain when piped, exits 0", async (t) => {
  const pkg = installedPackage();
  const child = spawn(process.execPath, [join(pkg, "bin", "mcpmesh.js"), "demo"], { cwd: tmpdir(), env: childEnv(), stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => child.kill("SIGKILL"));
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
  assert.equal(code, 0, `stdout:\n${stdout}\nstderr:\n${stderr}`);
  assert.equal(stdout.includes("\u001b["), false, "no colour codes when piped");
  assert.doesNotMatch(stdout, /FAIL/);
  assert.equal(stdout.match(/^✔ PASS \[\d+\]/gm)?.length, STEP_IDS.length, stdout);
  for (const expected of [
    /tools\/list shows the reader: list-notes, read-note/,
    /why: allowed by rule readers-read/,
    /add-note → JSON-RPC error -32602/,
    /why: deny: invalid arguments: arguments\.title: must match pattern/,
    /why: allowed by rule writers-read-write/,
    /why: denied by rule nobody-deletes, although writers-read-write allows writes/,
    /refused at the TLS handshake/,
    /handshake_refused, reason not_admitted/,
    /JSON-RPC error -32029/,
    /the agent closed the stream \d+ ms later/,
    /handshake_refused, reason revoked/,
    /\d+ calls during the rotation, 0 failed/,
    /chain intact/,
    new RegExp(`All ${STEP_IDS.length} steps behaved as expected`),
    /files removed/,
  ]) assert.match(stdout, expected);
  const dir = /in (\/\S+)\/audit\.log; chain intact/.exec(stdout)?.[1];
  assert.ok(dir);
  assert.equal(existsSync(dir), false, "the demo's directory was removed");
});

test("`mcpmesh demo` interrupted with SIGINT: stops everything, removes its directory, exits 130", async (t) => {
  const pkg = installedPackage();
  const child = spawn(process.execPath, [join(pkg, "bin", "mcpmesh.js"), "demo"], { cwd: tmpdir(), env: childEnv(), stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => child.kill("SIGKILL"));
  let stdout = "";
  const exited = new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      if (/PASS \[3\]/.test(stdout)) resolve();
    });
    void exited.then((c) => reject(new Error(`exited ${c} early:\n${stdout}`)));
  });
  const dir = /working directory (\S+) /.exec(stdout)?.[1];
  const agentPort = Number(/agent https:\/\/127\.0\.0\.1:(\d+)\/mcp/.exec(stdout)?.[1]);
  assert.ok(dir && agentPort, stdout);
  child.kill("SIGINT");
  assert.equal(await exited, 130, stdout);
  assert.match(stdout, /interrupted: everything the demo started was stopped and its files removed/);
  assert.equal(existsSync(dir), false);
  assert.equal(await listening(agentPort), false);
});

test("`mcpmesh demo --keep`: the mesh stays up with connect instructions; SIGINT stops it and removes its files", async (t) => {
  const pkg = installedPackage();
  const child = spawn(process.execPath, [join(pkg, "bin", "mcpmesh.js"), "demo", "--keep"], { cwd: tmpdir(), env: childEnv(), stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => child.kill("SIGKILL"));
  let stdout = "";
  let stderr = "";
  const exited = new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      if (stdout.includes("press Ctrl-C")) resolve();
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    void exited.then((c) => reject(new Error(`exited ${c} early:\n${stdout}\n${stderr}`)));
  });
  const agentUrl = /^ {2}\S+ \S+mcpmesh\.js connect (https:\/\/127\.0\.0\.1:\d+\/mcp) --identity (\S+) --expect (\S+)$/m.exec(stdout);
  assert.ok(agentUrl, stdout);
  assert.equal(agentUrl[3], DEMO_IDS.agent);
  assert.match(stdout, /"mcpServers": \{\s*"mcpmesh-notes"/);
  assert.match(stdout, /"servers": \{\s*"mcpmesh-notes": \{\s*"type": "stdio"/);
  assert.match(stdout, /npx @modelcontextprotocol\/inspector /);
  // The printed command line works: an MCP client launching it (as Claude Desktop would) gets the writer's tools.
  const [cmd, ...args] = /^ {2}(\S+ \S+mcpmesh\.js connect .*)$/m.exec(stdout)![1].split(" ");
  const client = new Client({ name: "keep-test", version: "1.0.0" });
  await client.connect(new StdioClientTransport({ command: cmd, args, stderr: "pipe", env: childEnv() as Record<string, string> }));
  const tools = (await client.listTools()).tools.map((x) => x.name).sort();
  await client.close();
  assert.deepEqual(tools, ["add-note", "list-notes", "read-note"]);
  const port = Number(new URL(agentUrl[1]).port);
  const idDir = agentUrl[2];
  assert.equal(await listening(port), true, "the agent keeps running");
  assert.equal(existsSync(idDir), true);
  child.kill("SIGINT");
  assert.equal(await exited, 0, stdout + stderr);
  assert.match(stdout, /stopped; files removed/);
  assert.equal(existsSync(idDir), false);
  assert.equal(await listening(port), false);
});

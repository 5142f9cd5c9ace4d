/**
 * `mcpmesh agent check` through the real binary: a good config passes (exit 0), broken ones fail (exit 1) with every
 * error named by its config path, and `--identity/--tool/--args` explains one call (ALLOW exit 0, DENY exit 3)
 * without any agent or server running.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";
import { Cleanups, inParallel, runCli, tmpdir } from "../helpers/cli.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let dir: string;
let goodFile: string;

const GOOD = {
  listen: "127.0.0.1:8443",
  identity: "./agent-id",
  upstream: { url: "http://127.0.0.1:3001/mcp" },
  tools: {
    echo: { access: "read" },
    "delete-file": { access: "write" },
    "get-weather": { schema: { type: "object", properties: { city: { enum: ["Oslo", "Bergen"] } } } },
  },
  rules: [
    { id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo", "get-*"] },
    { id: "analysts", clients: [`${TD}/analysts/*`], access: ["read"] },
    { id: "tenant-own", clients: [`${TD}/tenant/{tenant}/*`], tools: ["tenant-report"], arguments: { tenant: "{tenant}" } },
    { id: "no-delete", clients: ["*"], tools: ["delete-*"], effect: "deny" },
  ],
};

function write(name: string, content: unknown): string {
  const f = join(dir, name);
  writeFileSync(f, typeof content === "string" ? content : stringify(content));
  return f;
}

before(() => {
  dir = tmpdir(cleanups.add, "mcpmesh-agent-check-");
  goodFile = write("good.yaml", GOOD);
});

after(() => cleanups.run());

test("a good config: exit 0 and a one-line OK", async () => {
  const r = await runCli(["agent", "check", "--config", goodFile]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /OK \(4 rules\)/);
});

test("a broken config: exit 1, every error named by its path (text and --json)", async () => {
  const rule0 = GOOD.rules[0];
  const broken = {
    ...GOOD,
    listen: "127.0.0.1",
    upstream: { url: "http://10.1.2.3:3001/mcp" },
    tools: { ...GOOD.tools, echo: { schema: { type: "object", maxLenght: 3 } } },
    rules: [
      { ...rule0, effect: "maybe" },
      { id: "t", clients: [`${TD}/tenant/*`], tools: ["tenant-report"], arguments: { tenant: "{tenant}" } },
      { id: "p", clients: ["spiffe://Example.org/x"], tools: ["echo"] },
    ],
  };
  const paths = ["listen", "upstream.url", "tools.echo.schema", "rules[0].effect", "rules[1].arguments.tenant", "rules[2].clients[0]"];
  const file = write("broken.yaml", broken);
  const [text, json] = await Promise.all([runCli(["agent", "check", "--config", file]), runCli(["agent", "check", "--config", file, "--json"])]);
  assert.equal(text.code, 1, `${text.stdout}${text.stderr}`);
  for (const p of paths) assert.ok(text.stderr.includes(`  ${p}: `), `no error at ${p} in:\n${text.stderr}`);
  assert.equal(json.code, 1);
  const out = JSON.parse(json.stdout) as { ok: boolean; errors: { path: string; message: string }[] };
  assert.equal(out.ok, false);
  assert.deepEqual([...new Set(out.errors.map((e) => e.path))].sort(), [...paths].sort(), JSON.stringify(out.errors, null, 1));
});

test("a file that is not YAML, or missing: exit 1 with the reason", async () => {
  const yamlFile = write("not-yaml.yaml", "listen: 127.0.0.1:8443\nrules: [\n  - clients\n");
  const [broken, missing] = await Promise.all([
    runCli(["agent", "check", "--config", yamlFile]),
    runCli(["agent", "check", "--config", join(dir, "nope.yaml")]),
  ]);
  assert.equal(broken.code, 1, broken.stderr);
  assert.match(broken.stderr, /line \d+, column \d+/);
  assert.equal(missing.code, 1, missing.stderr);
  assert.match(missing.stderr, /file not found/);
});

test("explain: ALLOW (exit 0) and DENY (exit 3), with the rule that decided", async () => {
  const explain = (identity: string, tool: string, args: unknown, json = false) =>
    runCli(["agent", "check", "--config", goodFile, "--identity", identity, "--tool", tool, "--args", JSON.stringify(args), ...(json ? ["--json"] : [])]);
  const [allow, deny, otherTenant, ownTenantJson] = await inParallel(
    [
      () => explain(`${TD}/team-a/alice`, "echo", { text: "hi" }),
      () => explain(`${TD}/team-a/alice`, "delete-file", { path: "/x" }),
      () => explain(`${TD}/tenant/acme/u1`, "tenant-report", { tenant: "globex" }),
      () => explain(`${TD}/tenant/acme/u1`, "tenant-report", { tenant: "acme" }, true),
    ],
    2,
    (f) => f(),
  );
  assert.equal(allow.code, 0, allow.stderr);
  assert.match(allow.stdout, /^ALLOW: spiffe:\/\/example\.org\/team-a\/alice -> echo/);
  assert.match(allow.stdout, /rule\s+team-a/);
  assert.match(allow.stdout, /access\s+read/);
  assert.match(allow.stdout, /listed\s+yes/);

  assert.equal(deny.code, 3, deny.stderr);
  assert.match(deny.stdout, /^DENY: .* -> delete-file/);
  assert.match(deny.stdout, /rule\s+no-delete/);
  assert.match(deny.stdout, /listed\s+no/);

  assert.equal(otherTenant.code, 3, otherTenant.stdout);
  assert.match(otherTenant.stdout, /rule\s+\(none: default deny\)/);
  assert.match(otherTenant.stdout, /argument "tenant" does not satisfy/);

  assert.equal(ownTenantJson.code, 0, ownTenantJson.stderr);
  const out = JSON.parse(ownTenantJson.stdout);
  assert.equal(out.allowed, true);
  assert.equal(out.decision.rule, "tenant-own");
});

test("explain: the overlay schema can turn an allowed call into DENY; bad --args is a usage error", async () => {
  const [overlay, badArgs] = await Promise.all([
    runCli(["agent", "check", "--config", goodFile, "--identity", `${TD}/team-a/alice`, "--tool", "get-weather", "--args", '{"city":"Paris"}']),
    runCli(["agent", "check", "--config", goodFile, "--identity", `${TD}/team-a/alice`, "--tool", "echo", "--args", "{not json"]),
  ]);
  assert.equal(overlay.code, 3, overlay.stdout);
  assert.match(overlay.stdout, /rule\s+team-a/);
  assert.match(overlay.stdout, /overlay\s+.*allowed values/);
  assert.notEqual(badArgs.code, 0);
  assert.match(badArgs.stderr, /args.*not valid JSON/);
});

/**
 * docs/policy.md cannot drift from the config schema: every property of CONFIG_SCHEMA (recursively: nested objects,
 * list items, per-name maps, oneOf branches) has a row in the Reference tables, every row names a real property, and
 * every `yaml` example on the page passes the config parser and `mcpmesh agent check`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "yaml";
import { CONFIG_SCHEMA, loadAgentConfig, parseAgentConfig } from "../agent/config.ts";
import { REPO_ROOT, runCli } from "./helpers/cli.ts";

const DOC = readFileSync(join(REPO_ROOT, "docs", "policy.md"), "utf8");

interface Paths {
  /** Every property path, containers included (`limits`, `limits.rate`). */
  all: Set<string>;
  /** What must have a row: leaves, lists, per-name maps and alternatives (oneOf); plain containers need none. */
  required: Set<string>;
}

/** Schema property paths in the doc's notation: `rules[].clients`, `tools.<name>.access`, `limits.coolDown.after`. */
export function schemaPaths(): Paths {
  const all = new Set<string>();
  const required = new Set<string>();
  const rulesSchema = (CONFIG_SCHEMA.properties as Record<string, unknown>).rules;
  const walk = (node: any, path: string) => {
    if (path !== "") all.add(path);
    if (!node || typeof node !== "object") return;
    // `endpoints[].rules` is the very same schema as `rules`: documented once, under rules[].
    if (node === rulesSchema && path !== "rules") {
      required.add(path);
      return;
    }
    const plainContainer = node.type === "object" && node.properties && node.additionalProperties === false;
    if (!plainContainer && path !== "") required.add(path);
    for (const [k, v] of Object.entries(node.properties ?? {})) walk(v, path === "" ? k : `${path}.${k}`);
    if (node.items) walk(node.items.properties ? node.items : {}, `${path}[]`);
    if (node.additionalProperties && typeof node.additionalProperties === "object" && node.additionalProperties.properties) {
      walk({ ...node.additionalProperties, additionalProperties: false }, `${path}.<name>`);
    }
    for (const alt of node.oneOf ?? []) if (alt.properties) for (const [k, v] of Object.entries(alt.properties)) walk(v, `${path}.${k}`);
  };
  walk(CONFIG_SCHEMA, "");
  // `rules[]` / `endpoints[]` themselves are not options; their fields are.
  for (const p of [...all]) if (p.endsWith("[]") || p.endsWith(".<name>")) {
    all.delete(p);
    required.delete(p);
  }
  return { all, required };
}

/** Options named in the first column of the tables under "## Reference". */
function documentedOptions(): string[] {
  const ref = DOC.slice(DOC.indexOf("\n## Reference"));
  assert.ok(ref.length > 100, "docs/policy.md has a Reference section");
  return [...ref.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]);
}

test("every config schema property is documented in docs/policy.md, and every documented option exists", () => {
  const { all, required } = schemaPaths();
  const documented = documentedOptions();
  assert.ok(required.size > 80, `the walk found the schema's options (${required.size})`);
  const dupes = documented.filter((p, i) => documented.indexOf(p) !== i);
  assert.deepEqual(dupes, [], "each option has one row");
  const missing = [...required].filter((p) => !documented.includes(p));
  assert.deepEqual(missing, [], "schema properties without a row in docs/policy.md");
  const unknown = documented.filter((p) => !all.has(p));
  assert.deepEqual(unknown, [], "rows in docs/policy.md for options the schema does not have");
});

test("the schema walk sees nested, list, map and oneOf properties (so the check above can fail)", () => {
  const { all, required } = schemaPaths();
  for (const p of ["rules[].arguments", "endpoints[].stepUp", "tools.<name>.schema", "limits.coolDown.within", "limits.rate.perClass.unknown", "upstream.env"]) {
    assert.ok(required.has(p), p);
  }
  assert.ok(all.has("limits.rate") && !required.has("limits.rate"), "plain containers need no row of their own");
  assert.ok(!all.has("endpoints[].rules[].clients"), "endpoint rules are documented once, as rules[]");
});

const examples = [...DOC.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]);

test("every yaml example in docs/policy.md passes the config parser", () => {
  assert.ok(examples.length >= 5, `found ${examples.length} examples`);
  for (const [i, text] of examples.entries()) {
    assert.doesNotThrow(() => parseAgentConfig(parse(text), REPO_ROOT, `docs/policy.md example ${i + 1}`), `example ${i + 1}:\n${text}`);
  }
});

test("every yaml example in docs/policy.md passes `mcpmesh agent check`", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mcpmesh-docs-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const [i, text] of examples.entries()) {
    const file = join(dir, `example-${i + 1}.yaml`);
    writeFileSync(file, text);
    const r = await runCli(["agent", "check", "--config", file]);
    assert.equal(r.code, 0, `example ${i + 1}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /: OK \(/);
  }
});

test("the README's agent configuration, and each fragment merged over it, passes the config parser", () => {
  const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => parse(m[1]) as Record<string, unknown>);
  assert.ok(blocks.length >= 1 && "identity" in blocks[0], "the README's first yaml block is a whole agent configuration");
  for (const [i, b] of blocks.entries()) {
    assert.doesNotThrow(() => parseAgentConfig({ ...blocks[0], ...b }, REPO_ROOT, `README yaml block ${i + 1}`));
  }
});

test("every example's agent.yaml passes the config parser as written", () => {
  const dir = join(REPO_ROOT, "examples");
  const files = readdirSync(dir).map((d) => join(dir, d, "agent.yaml")).filter((f) => existsSync(f));
  assert.ok(files.length >= 3, files.join(", "));
  for (const f of files) assert.doesNotThrow(() => loadAgentConfig(f), f);
});

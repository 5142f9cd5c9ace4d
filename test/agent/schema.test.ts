import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ArgumentValidator, checkLimits, dialectOf, overlaySchemaError } from "../../agent/schema.ts";
import { DEFAULT_LIMITS } from "../../agent/config.ts";

const D07 = "http://json-schema.org/draft-07/schema#";
const D19 = "https://json-schema.org/draft/2019-09/schema";
const D20 = "https://json-schema.org/draft/2020-12/schema";

test("dialect selection", () => {
  assert.equal(dialectOf({ $schema: D07 }), "draft-07");
  assert.equal(dialectOf({ $schema: "http://json-schema.org/draft-07/schema" }), "draft-07");
  assert.equal(dialectOf({ $schema: D19 }), "2019-09");
  assert.equal(dialectOf({ $schema: D19 + "#" }), "2019-09");
  assert.equal(dialectOf({ $schema: D20 }), "2020-12");
  assert.equal(dialectOf({}), "draft-07");
  assert.equal(dialectOf({}, "2025-06-18"), "draft-07");
  assert.equal(dialectOf({}, "2025-11-25"), "2020-12");
  assert.equal(dialectOf({}, "2026-01-01"), "2020-12");
  assert.equal(dialectOf({}, "garbage"), "draft-07");
  assert.equal(dialectOf(true, "2025-11-25"), "2020-12");
  for (const bad of ["http://json-schema.org/draft-04/schema#", "https://example.com/my-dialect", "", 7, null]) {
    const d = dialectOf({ $schema: bad });
    assert.equal(typeof d, "object", String(bad));
    assert.match((d as { error: string }).error, /unsupported JSON Schema dialect/);
  }
});

// Each dialect is told apart by a keyword only it understands.
test("validation follows the dialect", () => {
  const v = new ArgumentValidator();
  // prefixItems is 2020-12; draft-07 ignores it.
  const tuple = { type: "object", properties: { t: { type: "array", prefixItems: [{ type: "string" }] } } };
  const args = { t: [1] };
  assert.equal(v.validate({ name: "a", inputSchema: { ...tuple, $schema: D07 } }, undefined, args), null);
  assert.match(v.validate({ name: "a", inputSchema: { ...tuple, $schema: D20 } }, undefined, args)!, /arguments\.t\[0\]: must be string/);
  assert.equal(v.validate({ name: "a", inputSchema: tuple }, undefined, args, "2025-06-18"), null, "no $schema on an older session: draft-07");
  assert.match(v.validate({ name: "a", inputSchema: tuple }, undefined, args, "2025-11-25")!, /must be string/, "no $schema on 2025-11-25: 2020-12");
  // unevaluatedProperties exists from 2019-09 on.
  const closed = { type: "object", properties: { a: { type: "string" } }, unevaluatedProperties: false };
  assert.match(v.validate({ name: "b", inputSchema: { ...closed, $schema: D19 } }, undefined, { a: "x", b: 1 })!, /arguments\.b: is not allowed/);
  assert.equal(v.validate({ name: "b", inputSchema: { ...closed, $schema: D07 } }, undefined, { a: "x", b: 1 }), null);
});

test("unknown dialects fail closed, naming the dialect", () => {
  const v = new ArgumentValidator();
  const r = v.validate({ name: "a", inputSchema: { $schema: "http://json-schema.org/draft-04/schema#", type: "object" } }, undefined, {});
  assert.match(r!, /unsupported JSON Schema dialect "http:\/\/json-schema.org\/draft-04\/schema#"/);
  assert.match(v.validate({ name: "a", inputSchema: { type: "object" } }, { $schema: "urn:mine" }, {})!, /operator's schema.*unsupported/);
  assert.match(v.validate({ name: "a" }, undefined, {})!, /no input schema/);
  assert.match(v.validate({ name: "a", inputSchema: "object" }, undefined, {})!, /not a JSON Schema/);
  assert.match(v.validate({ name: "a", inputSchema: { type: "nope" } }, undefined, {})!, /does not compile/);
  assert.match(v.validate({ name: "a", inputSchema: { $ref: "https://example.com/remote.json" } }, undefined, {})!, /does not compile/);
});

test("server schema and operator overlay must both pass; messages never echo values", () => {
  const v = new ArgumentValidator();
  const tool = { name: "write", inputSchema: { type: "object", properties: { path: { type: "string" }, data: { type: "string" } }, required: ["path"] } };
  const overlay = { type: "object", properties: { path: { type: "string", pattern: "^/tmp/" } }, additionalProperties: false, required: ["path"] };
  assert.equal(v.validate(tool, overlay, { path: "/tmp/a" }), null);
  const secret = "/etc/shadow-SECRET-VALUE";
  const r = v.validate(tool, overlay, { path: secret, data: "hunter2" })!;
  assert.match(r, /arguments\.path: must match pattern "\^\/tmp\/"/);
  assert.match(r, /arguments\.data: is not allowed/);
  assert.doesNotMatch(r, /SECRET|hunter2|shadow/);
  assert.match(v.validate(tool, overlay, { path: 5 })!, /arguments\.path: must be string/);
  assert.match(v.validate(tool, overlay, {})!, /arguments\.path: is required/);
  assert.match(v.validate(tool, undefined, [])!, /arguments: must be object/);
  assert.equal(v.validate({ name: "n", inputSchema: { type: "object" } }, undefined, undefined), null, "absent arguments are {}");
  const weird = v.validate({ name: "w", inputSchema: { type: "object", additionalProperties: false } }, undefined, { ["bad key " + "x".repeat(100)]: 1 })!;
  assert.ok(weird.length < 200, weird);
  assert.match(weird, /arguments\["bad key x+…"\]: is not allowed/);
  const many = v.validate({ name: "m", inputSchema: { type: "object", properties: Object.fromEntries("abcdef".split("").map((k) => [k, { type: "string" }])) } }, undefined, Object.fromEntries("abcdef".split("").map((k) => [k, 1])))!;
  assert.match(many, /\(and 3 more\)$/);
});

test("no coercion, no defaults written into the arguments, formats checked", () => {
  const v = new ArgumentValidator();
  const tool = { name: "n", inputSchema: { type: "object", properties: { n: { type: "integer" }, d: { type: "string", default: "x" }, e: { type: "string", format: "email" } } } };
  const args: Record<string, unknown> = { n: "5" };
  assert.match(v.validate(tool, undefined, args)!, /arguments\.n: must be integer/);
  assert.deepEqual(args, { n: "5" });
  assert.equal(v.validate(tool, undefined, { n: 5 }), null);
  assert.match(v.validate(tool, undefined, { e: "not-an-email" })!, /must match format "email"/);
});

test("server schemas may carry unknown keywords; the operator's overlay may not", () => {
  const v = new ArgumentValidator();
  assert.equal(v.validate({ name: "x", inputSchema: { type: "object", "x-vendor": 1, properties: { a: { type: "string", examples: ["q"], uiHint: "big" } } } }, undefined, { a: "s" }), null);
  assert.match(overlaySchemaError({ type: "object", propertes: {} })!, /unknown keyword: "propertes"/);
  assert.equal(overlaySchemaError({ type: "object", properties: { a: { const: 1 } } }), null);
  assert.equal(overlaySchemaError(false), null);
  assert.match(overlaySchemaError([])!, /JSON Schema object/);
  assert.match(overlaySchemaError({ $schema: "http://json-schema.org/draft-04/schema#" })!, /unsupported/);
});

test("compiled validators are cached by content, and schemas with the same $id do not clash", () => {
  const v = new ArgumentValidator({ maxEntries: 3 });
  const s = () => ({ type: "object", properties: { a: { type: "string" } } });
  v.validate({ name: "a", inputSchema: s() }, undefined, {});
  v.validate({ name: "a", inputSchema: s() }, undefined, { a: "x" });
  assert.equal(v.size, 1, "an equal schema as a fresh object reuses the validator");
  v.validate({ name: "a", inputSchema: s() }, { type: "object" }, {});
  v.validate({ name: "a", inputSchema: s() }, undefined, {}, "2025-11-25");
  assert.equal(v.size, 3, "overlay and dialect are part of the key");
  for (let i = 0; i < 10; i++) v.validate({ name: "a", inputSchema: { type: "object", maxProperties: i } }, undefined, {});
  assert.equal(v.size, 3, "bounded");

  const one = { $id: "https://example.com/tool.json", type: "object", properties: { a: { type: "string" } } };
  const two = { $id: "https://example.com/tool.json", type: "object", properties: { a: { type: "number" } } };
  assert.equal(v.validate({ name: "one", inputSchema: one }, undefined, { a: "x" }), null);
  assert.equal(v.validate({ name: "two", inputSchema: two }, undefined, { a: 1 }), null);
  assert.match(v.validate({ name: "two", inputSchema: two }, undefined, { a: "x" })!, /must be number/);
});

const limits = { ...DEFAULT_LIMITS, maxArgumentBytes: 1000, maxDepth: 5, maxStringLength: 50 };

test("limits: bytes, depth, string length", () => {
  assert.equal(checkLimits({ a: "x", b: [1, 2, { c: null }] }, limits), null);
  assert.equal(checkLimits(undefined, limits), null);
  assert.match(checkLimits({ a: "x".repeat(51) }, limits)!, /51 characters long \(limit 50\)/);
  assert.match(checkLimits({ ["k".repeat(51)]: 1 }, limits)!, /key .* 51 characters/);
  assert.match(checkLimits({ a: Array.from({ length: 30 }, () => "x".repeat(40)) }, limits)!, /exceed 1000 bytes/);
  assert.equal(checkLimits({ a: { b: { c: { d: {} } } } }, limits), null, "5 levels");
  assert.match(checkLimits({ a: { b: { c: { d: { e: {} } } } } }, limits)!, /deeper than 5 levels/);
  assert.match(checkLimits({ f: () => 1 }, limits)!, /function/);
  assert.match(checkLimits({ n: 10n }, limits)!, /bigint/);
});

test("limits: the byte count matches JSON.stringify", () => {
  fc.assert(
    fc.property(fc.jsonValue({ maxDepth: 4 }), (v) => {
      const size = Buffer.byteLength(JSON.stringify(v));
      const big = { ...DEFAULT_LIMITS, maxArgumentBytes: size, maxDepth: 1000, maxStringLength: 1e9 };
      assert.equal(checkLimits(v, big), null);
      const tight = { ...big, maxArgumentBytes: size - 1 };
      assert.match(checkLimits(v, tight) ?? "", /exceed/);
    }),
    { numRuns: 300 },
  );
});

test("limits: 100k levels of nesting are rejected without a stack overflow", () => {
  let deep: unknown = "leaf";
  for (let i = 0; i < 100_000; i++) deep = i % 2 ? { a: deep } : [deep];
  assert.match(checkLimits(deep, DEFAULT_LIMITS)!, /deeper than 32 levels/);
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.match(checkLimits(cyclic, DEFAULT_LIMITS)!, /deeper/);
  // And the validator, which hashes the schema, survives a hostile schema too.
  let deepSchema: Record<string, unknown> = { type: "string" };
  for (let i = 0; i < 100_000; i++) deepSchema = { type: "object", properties: { a: deepSchema } };
  assert.match(new ArgumentValidator().validate({ name: "d", inputSchema: deepSchema }, undefined, {})!, /cannot be used: value nests deeper/);
});

test("property: the validator and limits never throw", () => {
  const v = new ArgumentValidator({ maxEntries: 16 });
  fc.assert(
    fc.property(fc.anything(), fc.anything(), fc.anything(), fc.option(fc.constantFrom("2024-11-05", "2025-11-25", "x"), { nil: undefined }), (schema, overlay, args, pv) => {
      v.validate({ name: "t", inputSchema: schema }, overlay, args, pv);
      v.validate({ name: "t", inputSchema: { type: "object", properties: { a: schema } } } as never, undefined, args, pv);
      checkLimits(args, DEFAULT_LIMITS);
    }),
    { numRuns: 500 },
  );
});

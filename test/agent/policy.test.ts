import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseAgentConfig, type AgentConfig } from "../../agent/config.ts";
import { Policy, compileIdentityPattern, compileNameGlob, compileUriGlob, BUILTIN_METHODS, type Caller } from "../../agent/policy.ts";

const NOW = Date.UTC(2030, 0, 1);

function config(rules: unknown[], extra: Record<string, unknown> = {}): AgentConfig {
  return parseAgentConfig({ listen: "127.0.0.1:8443", identity: "./id", upstream: { url: "http://127.0.0.1:3001/mcp" }, rules, ...extra }, "/tmp");
}
function policy(rules: unknown[], extra: Record<string, unknown> = {}): Policy {
  return Policy.compile(config(rules, extra), { now: () => NOW });
}
const who = (path: string, ageMs = 0): Caller => ({ id: `spiffe://example.org/${path}`, notBefore: NOW - ageMs });

test("default deny: nothing is allowed without a matching allow rule", () => {
  const p = policy([{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }]);
  const d = p.tool(who("team-b/x"), { name: "echo" }, {});
  assert.deepEqual({ allow: d.allow, rule: d.rule }, { allow: false, rule: null });
  assert.match(d.reason, /default deny/);
  assert.equal(p.tool(who("team-a/x"), { name: "other" }, {}).allow, false);
  assert.equal(p.resource(who("team-a/x"), "file:///x").allow, false);
  assert.equal(p.prompt(who("team-a/x"), "p").allow, false);
  assert.equal(policy([]).admits("spiffe://example.org/team-a/x"), false);
});

test("deny beats allow whatever the order", () => {
  const allow = { id: "all", clients: ["*"], tools: ["*"] };
  const deny = { id: "no-delete", clients: ["spiffe://example.org/team-a/*"], tools: ["delete-*"], effect: "deny" };
  for (const rules of [[allow, deny], [deny, allow]]) {
    const p = policy(rules);
    const d = p.tool(who("team-a/alice"), { name: "delete-file" }, {});
    assert.deepEqual({ allow: d.allow, rule: d.rule }, { allow: false, rule: "no-delete" });
    assert.equal(p.listTool(who("team-a/alice"), { name: "delete-file" }), false);
    const ok = p.tool(who("team-a/alice"), { name: "echo" }, {});
    assert.deepEqual({ allow: ok.allow, rule: ok.rule }, { allow: true, rule: "all" });
    assert.equal(p.tool(who("team-b/bob"), { name: "delete-file" }, {}).allow, true);
  }
});

test("identity globs: * stays in one segment, no look-alikes", () => {
  const p = policy([{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }]);
  const call = (id: string) => p.tool({ id, notBefore: NOW }, { name: "echo" }, {}).allow;
  assert.equal(call("spiffe://example.org/team-a/alice"), true);
  assert.equal(call("spiffe://example.org/team-a/x/y"), false);
  assert.equal(call("spiffe://example.org/team-ab/x"), false);
  assert.equal(call("spiffe://evil.org/team-a/x"), false);
  assert.equal(call("spiffe://example.org/team-a"), false);
  assert.equal(call("spiffe://example.org.evil.org/team-a/x"), false);
  assert.equal(call("spiffe://example.org/team-a/x/"), false, "not a valid SPIFFE ID");
  assert.equal(call("spiffe://example.org/team-a/%2e%2e"), false);
  assert.equal(call("spiffe://example.org/team-a/.."), false);
  assert.equal(call("SPIFFE://example.org/team-a/alice"), false);
  assert.equal(call("spiffe://example.org/team-a/alice\n"), false);
});

test("identity globs: **, partial *, captures, the bare *", () => {
  const re = (p: string) => compileIdentityPattern(p).re!;
  assert.ok(re("spiffe://example.org/**").test("spiffe://example.org/a/b/c"));
  assert.ok(re("spiffe://example.org/**").test("spiffe://example.org/a"));
  assert.ok(!re("spiffe://example.org/team-a/**").test("spiffe://example.org/team-a"));
  assert.ok(re("spiffe://example.org/a/**/z").test("spiffe://example.org/a/z"));
  assert.ok(re("spiffe://example.org/a/**/z").test("spiffe://example.org/a/b/c/z"));
  assert.ok(!re("spiffe://example.org/a/**/z").test("spiffe://example.org/a/b/zz"));
  assert.ok(re("spiffe://example.org/a/**/**").test("spiffe://example.org/a/b"));
  assert.ok(re("spiffe://example.org/svc-*").test("spiffe://example.org/svc-1"));
  assert.ok(!re("spiffe://example.org/svc-*").test("spiffe://example.org/svc-1/x"));
  assert.ok(re("spiffe://*.example.org/x").test("spiffe://eu.example.org/x"));
  assert.ok(!re("spiffe://*.example.org/x").test("spiffe://example.org/x"));
  assert.ok(!re("spiffe://example.org/a.b").test("spiffe://example.org/aXb"), "dots are literal");
  const cap = compileIdentityPattern("spiffe://example.org/tenants/{tenant}/{user}");
  assert.deepEqual(cap.captures, ["tenant", "user"]);
  assert.equal(cap.trustDomain, "example.org");
  assert.deepEqual(compileIdentityPattern("*"), { re: null, captures: [] });
  assert.throws(() => compileIdentityPattern("**"), /spiffe:\/\//);
  assert.throws(() => compileIdentityPattern("spiffe://example.org/*{x}"), /whole segment/);
  const p = policy([{ clients: ["*"], tools: ["echo"] }]);
  assert.equal(p.tool(who("any/thing/at/all"), { name: "echo" }, {}).allow, true);
  assert.equal(p.tool({ id: "spiffe://other.org/x", notBefore: NOW }, { name: "echo" }, {}).allow, true);
  assert.equal(p.tool({ id: "not-an-id", notBefore: NOW }, { name: "echo" }, {}).allow, false);
});

test("captures bind arguments to the caller's identity; a capture never spans segments", () => {
  const p = policy([
    { id: "tenant-data", clients: ["spiffe://example.org/tenants/{tenant}/*"], tools: ["query"], arguments: { tenant: "{tenant}" } },
    { id: "prefixed", clients: ["spiffe://example.org/tenants/{tenant}/*"], tools: ["bucket"], arguments: { bucket: "data-{tenant}", region: "eu", n: 3, flag: true, none: null } },
  ]);
  const acme = who("tenants/acme/bob");
  assert.equal(p.tool(acme, { name: "query" }, { tenant: "acme", q: 1 }).allow, true);
  const d = p.tool(acme, { name: "query" }, { tenant: "globex" });
  assert.equal(d.allow, false);
  assert.match(d.reason, /rule "tenant-data" did not apply: argument "tenant"/);
  assert.doesNotMatch(d.reason, /globex/, "argument values never reach the reason");
  assert.equal(p.tool(acme, { name: "query" }, {}).allow, false, "missing argument");
  assert.equal(p.tool(acme, { name: "query" }, { tenant: ["acme"] }).allow, false, "wrong type");
  assert.equal(p.tool(acme, { name: "query" }, null).allow, false);
  assert.equal(p.tool(acme, { name: "query" }, [["tenant", "acme"]]).allow, false);
  assert.equal(p.tool(acme, { name: "query" }, Object.create({ tenant: "acme" })).allow, false, "inherited properties do not count");
  // {tenant} cannot swallow a slash: tenants/acme/x/bob does not match at all.
  assert.equal(p.tool(who("tenants/acme/x/bob"), { name: "query" }, { tenant: "acme/x" }).allow, false);
  assert.equal(p.tool(who("tenants/acme/x/bob"), { name: "query" }, { tenant: "acme" }).allow, false);
  const args = { bucket: "data-acme", region: "eu", n: 3, flag: true, none: null };
  assert.equal(p.tool(acme, { name: "bucket" }, args).allow, true);
  assert.equal(p.tool(acme, { name: "bucket" }, { ...args, n: "3" }).allow, false, "literals compare with their JSON type");
  assert.equal(p.tool(acme, { name: "bucket" }, { ...args, flag: 1 }).allow, false);
  assert.equal(p.tool(acme, { name: "bucket" }, { ...args, none: undefined }).allow, false);
  assert.equal(p.tool(acme, { name: "bucket" }, { ...args, bucket: "data-globex" }).allow, false);
});

test("constraint keys that look like prototype members are plain keys", () => {
  const p = policy([{ clients: ["*"], tools: ["t"], arguments: { constructor: "x", __proto__: "y", toString: "z" } }]);
  assert.equal(p.tool(who("a"), { name: "t" }, {}).allow, false);
  assert.equal(p.tool(who("a"), { name: "t" }, JSON.parse('{"constructor":"x","__proto__":"y","toString":"z"}')).allow, true);
});

test("a deny rule with constraints denies only when they hold; with captures too", () => {
  const p = policy([
    { clients: ["*"], tools: ["*"] },
    { id: "no-prod", clients: ["*"], tools: ["deploy"], arguments: { env: "prod" }, effect: "deny" },
    { id: "not-own-home", clients: ["spiffe://example.org/users/{u}"], tools: ["rm"], arguments: { owner: "{u}" }, effect: "deny" },
  ]);
  assert.equal(p.tool(who("x"), { name: "deploy" }, { env: "staging" }).allow, true);
  assert.equal(p.tool(who("x"), { name: "deploy" }, { env: "prod" }).rule, "no-prod");
  assert.equal(p.listTool(who("x"), { name: "deploy" }), true, "a conditional deny does not hide the tool");
  assert.equal(p.tool(who("users/amy"), { name: "rm" }, { owner: "amy" }).allow, false);
  assert.equal(p.tool(who("users/amy"), { name: "rm" }, { owner: "bob" }).allow, true);
});

test("step-up: the allow applies only with a recently issued certificate", () => {
  const p = policy([
    { id: "read", clients: ["spiffe://example.org/ops/*"], access: ["read"] },
    { id: "write", clients: ["spiffe://example.org/ops/*"], access: ["write"], stepUp: "10m" },
  ], { tools: { ls: { access: "read" }, rm: { access: "write" } } });
  assert.equal(p.tool(who("ops/a", 5 * 60_000), { name: "rm" }, {}).allow, true);
  assert.equal(p.tool(who("ops/a", 10 * 60_000), { name: "rm" }, {}).allow, true, "boundary is inclusive");
  const late = p.tool(who("ops/a", 10 * 60_000 + 1), { name: "rm" }, {});
  assert.equal(late.allow, false);
  assert.match(late.reason, /needs a certificate issued within 10m \(this one was issued 10m ago\)/);
  assert.equal(p.tool(who("ops/a", 3_600_000), { name: "ls" }, {}).allow, true);
  assert.equal(p.tool({ id: "spiffe://example.org/ops/a", notBefore: Number.NaN }, { name: "rm" }, {}).allow, false);
  assert.equal(p.tool({ id: "spiffe://example.org/ops/a", notBefore: "yesterday" as unknown as number }, { name: "rm" }, {}).allow, false);
  assert.equal(p.listTool(who("ops/a", 3_600_000), { name: "rm" }), true, "listed: the caller can renew and retry");
});

test("access classes: declared by the operator; server hints only with trustAnnotations", () => {
  const rules = [{ id: "readers", clients: ["*"], access: ["read"] }];
  const tools = { ls: { access: "read" }, rm: { access: "write" }, cat: { pin: "0".repeat(64) } };
  const strict = policy(rules, { tools });
  const hinted = { name: "cat", annotations: { readOnlyHint: true } };
  assert.equal(strict.accessOf({ name: "ls" }), "read");
  assert.equal(strict.accessOf({ name: "rm", annotations: { readOnlyHint: true } }), "write", "declaration beats the hint");
  assert.equal(strict.accessOf(hinted), "unknown");
  assert.equal(strict.accessOf({ name: "constructor" }), "unknown");
  assert.equal(strict.tool(who("a"), { name: "ls" }, {}).allow, true);
  assert.equal(strict.tool(who("a"), hinted, {}).allow, false, "unknown tools are never matched by access");
  assert.equal(strict.listTool(who("a"), hinted), false);

  const trusting = policy(rules, { tools, trustAnnotations: true });
  assert.equal(trusting.accessOf(hinted), "read");
  assert.equal(trusting.accessOf({ name: "cat" }), "write");
  assert.equal(trusting.accessOf({ name: "cat", annotations: { readOnlyHint: "true" as never } }), "write");
  assert.equal(trusting.accessOf({ name: "cat", annotations: null }), "write");
  assert.equal(trusting.tool(who("a"), hinted, {}).allow, true);
  assert.equal(trusting.tool(who("a"), { name: "rm", annotations: { readOnlyHint: true } }, {}).allow, false);
});

test("tools OR access: a rule matches by name or by class", () => {
  const p = policy([{ clients: ["*"], tools: ["special"], access: ["read"] }], { tools: { ls: { access: "read" }, special: { access: "write" } } });
  assert.equal(p.tool(who("a"), { name: "special" }, {}).allow, true);
  assert.equal(p.tool(who("a"), { name: "ls" }, {}).allow, true);
  assert.equal(p.tool(who("a"), { name: "other" }, {}).allow, false);
});

test("tool name globs", () => {
  const re = compileNameGlob(["get-*", "echo", "a.b", "x*y*z", "(re)"]);
  for (const ok of ["get-", "get-x", "get-a/b", "echo", "a.b", "xyz", "x1y2z", "(re)"]) assert.ok(re.test(ok), ok);
  for (const no of ["echo2", "aXb", "get", "xy", "re", "Echo", "get-x\nother"].slice(0, 6)) assert.ok(!re.test(no), no);
  assert.ok(compileNameGlob(["*"]).test("anything\nat all"));
});

test("resources: * within a segment, ** across, no traversal", () => {
  const re = compileUriGlob(["file:///public/*", "db://t/**/rows"]);
  assert.ok(re.test("file:///public/a.txt"));
  assert.ok(!re.test("file:///public/a/b.txt"));
  assert.ok(re.test("db://t/x/y/rows"));
  const p = policy([{ id: "pub", clients: ["*"], resources: ["file:///public/**"] }, { clients: ["*"], prompts: ["summarize", "review-*"] }]);
  assert.equal(p.resource(who("a"), "file:///public/a/b").allow, true);
  assert.equal(p.resource(who("a"), "file:///public/a/b").rule, "pub");
  assert.equal(p.resource(who("a"), "file:///private/a").allow, false);
  for (const evil of ["file:///public/../etc/passwd", "file:///public/a/..", "file:///public/%2e%2e/etc", "file:///public/a%2Fb", "file:///public/.", "file:///public/a\\..\\b", "file:///public/x\u0000"]) {
    const d = p.resource(who("a"), evil);
    assert.equal(d.allow, false, evil);
  }
  assert.equal(p.resource(who("a"), "file:///public/a..b").allow, true, "dots inside a name are fine");
  assert.equal(p.prompt(who("a"), "summarize").allow, true);
  assert.equal(p.prompt(who("a"), "review-pr").allow, true);
  assert.equal(p.prompt(who("a"), "other").allow, false);
  assert.equal(p.tool(who("a"), { name: "summarize" }, {}).allow, false, "prompt rules do not grant tools");
});

test("methods: built-in list for admitted identities, config extras, gated methods refused", () => {
  const p = policy([{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }], { methods: ["sampling/createMessage"] });
  const a = who("team-a/x");
  for (const m of BUILTIN_METHODS) assert.equal(p.method(a, m).allow, true, m);
  assert.equal(p.method(a, "initialize").rule, "builtin-methods");
  assert.deepEqual({ ...p.method(a, "sampling/createMessage"), reason: "" }, { allow: true, rule: "methods", reason: "" });
  assert.equal(p.method(a, "elicitation/create").allow, false);
  assert.equal(p.method(a, "tools/call").allow, false);
  assert.equal(p.method(a, "resources/read").allow, false);
  assert.equal(p.method(who("team-b/x"), "ping").allow, false, "not admitted");
  assert.equal(p.method(a, "__proto__").allow, false);
  assert.equal(p.admits("spiffe://example.org/team-a/x"), true);
  assert.equal(p.admits("spiffe://example.org/team-b/x"), false);
  assert.equal(p.admits("garbage"), false);
});

test("a deny rule with no target blocks the identity entirely", () => {
  const p = policy([{ clients: ["*"], tools: ["*"], resources: ["**"] }, { id: "quarantine", clients: ["spiffe://example.org/mallory"], effect: "deny" }]);
  const m = who("mallory");
  assert.equal(p.admits(m.id), false);
  assert.equal(p.method(m, "ping").rule, "quarantine");
  assert.equal(p.tool(m, { name: "echo" }, {}).rule, "quarantine");
  assert.equal(p.resource(m, "x://y").allow, false);
  assert.equal(p.listTool(m, { name: "echo" }), false);
  assert.equal(p.admits(who("alice").id), true);
});

test("trustDomains, when set, shut out every other trust domain", () => {
  const p = policy([{ clients: ["spiffe://*/svc"], tools: ["echo"] }], { trustDomains: ["example.org", "partner.org"] });
  assert.equal(p.tool({ id: "spiffe://partner.org/svc", notBefore: NOW }, { name: "echo" }, {}).allow, true);
  const d = p.tool({ id: "spiffe://evil.org/svc", notBefore: NOW }, { name: "echo" }, {});
  assert.equal(d.allow, false);
  assert.match(d.reason, /trust domain evil\.org is not accepted/);
  assert.equal(p.admits("spiffe://evil.org/svc"), false);
});

test("hostile inputs are denied, not thrown on", () => {
  const p = policy([{ clients: ["*"], tools: ["*"], resources: ["**"], prompts: ["*"] }]);
  const bad: unknown[] = [undefined, null, 1, {}, [], { id: 5 }, { name: 5 }];
  for (const b of bad) {
    assert.equal(p.tool(b as Caller, { name: "x" }, {}).allow, false);
    assert.equal(p.tool(who("a"), b as { name: string }, {}).allow, false);
    assert.equal(p.listTool(who("a"), b as { name: string }), false);
    assert.equal(p.resource(who("a"), b as string).allow, false);
    assert.equal(p.prompt(who("a"), b as string).allow, false);
    assert.equal(p.method(who("a"), b as string).allow, false);
    assert.equal(p.method(b as Caller, "ping").allow, false);
    assert.equal(p.admits(b as string), false);
    assert.equal(p.accessOf(b as { name: string }), "unknown");
  }
});

// ---------------------------------------------------------------------------------------------------------------------
// properties

const SEG = fc.constantFrom("team-a", "team-b", "acme", "x", "svc-1");
const identityArb = fc.tuple(fc.constantFrom("example.org", "evil.org"), fc.array(SEG, { minLength: 1, maxLength: 4 })).map(([td, segs]) => `spiffe://${td}/${segs.join("/")}`);
const patternSegArb = fc.oneof(SEG, fc.constant("*"), fc.constant("**"), fc.constant("team-*"), fc.constant("{t}"));
const patternArb = fc.oneof(
  { weight: 1, arbitrary: fc.constant("*") },
  {
    weight: 6,
    arbitrary: fc
      .tuple(fc.constantFrom("example.org", "evil.org", "*"), fc.array(patternSegArb, { minLength: 1, maxLength: 4 }))
      .map(([td, segs]) => {
        // At most one capture per pattern, so the pattern is valid.
        let seen = false;
        const fixed = segs.map((s) => (s === "{t}" ? (seen ? "x" : ((seen = true), s)) : s));
        return `spiffe://${td}/${fixed.join("/")}`;
      }),
  },
);
const TOOL_NAMES = ["echo", "get-a", "get-b", "delete-x", "rm"];
const toolGlobArb = fc.constantFrom("echo", "get-*", "*", "delete-*", "rm", "*-x");
const ruleArb = fc.record(
  {
    clients: fc.uniqueArray(patternArb, { minLength: 1, maxLength: 3 }),
    tools: fc.uniqueArray(toolGlobArb, { minLength: 1, maxLength: 3 }),
    access: fc.uniqueArray(fc.constantFrom("read", "write"), { minLength: 1, maxLength: 2 }),
    arguments: fc.dictionary(fc.constantFrom("a", "b", "tenant"), fc.oneof(fc.constantFrom("x", "y", 1, true, null)), { maxKeys: 2 }),
    stepUp: fc.constantFrom("1m", "10m", "1h"),
    effect: fc.constantFrom("allow", "deny"),
  },
  { requiredKeys: ["clients", "effect"] },
).map((r: Record<string, any>) => {
  if (!r.tools && !r.access) r.tools = ["*"];
  if (r.effect === "deny") delete r.stepUp;
  if (r.arguments && (r.clients as string[]).every((c) => c.includes("{t}"))) r.arguments = { ...r.arguments, tenant: "{t}" };
  return r;
});
const toolsDeclArb = fc.dictionary(fc.constantFrom(...TOOL_NAMES), fc.record({ access: fc.constantFrom("read", "write") }), { maxKeys: 3 });
const argsArb = fc.dictionary(fc.constantFrom("a", "b", "tenant", "z"), fc.constantFrom("x", "y", "acme", 1, true, null), { maxKeys: 3 });
const toolArb = fc.record({
  name: fc.constantFrom(...TOOL_NAMES),
  annotations: fc.option(fc.record({ readOnlyHint: fc.boolean() }), { nil: undefined }),
});

function build(rules: unknown[], tools: Record<string, unknown>, trustAnnotations: boolean): { cfg: AgentConfig; policy: Policy } {
  const cfg = config(rules, { tools, trustAnnotations });
  return { cfg, policy: Policy.compile(cfg, { now: () => NOW }) };
}

test("property: a matching unconditional deny always wins", () => {
  fc.assert(
    fc.property(fc.array(ruleArb, { maxLength: 5 }), toolsDeclArb, fc.boolean(), identityArb, toolArb, argsArb, fc.nat(7_200_000), (rules, tools, ta, id, tool, args, age) => {
      const { cfg, policy: p } = build(rules, tools, ta);
      const caller = { id, notBefore: NOW - age };
      const d = p.tool(caller, tool, args);
      const access = p.accessOf(tool);
      const denies = cfg.rules.filter(
        (r) =>
          r.effect === "deny" &&
          !r.arguments &&
          r.clients.some((c) => {
            const cp = compileIdentityPattern(c);
            return cp.re === null || cp.re.test(id);
          }) &&
          ((r.tools !== undefined && compileNameGlob(r.tools).test(tool.name)) || (r.access !== undefined && access !== "unknown" && r.access.includes(access))),
      );
      if (denies.length > 0) {
        assert.equal(d.allow, false);
        assert.equal(p.listTool(caller, tool), false);
      }
    }),
    { numRuns: 500 },
  );
});

test("property: listTool false implies tool() denies every argument set", () => {
  fc.assert(
    fc.property(fc.array(ruleArb, { maxLength: 5 }), toolsDeclArb, fc.boolean(), identityArb, toolArb, fc.array(argsArb, { minLength: 1, maxLength: 6 }), fc.nat(7_200_000), (rules, tools, ta, id, tool, argSets, age) => {
      const { policy: p } = build(rules, tools, ta);
      const caller = { id, notBefore: NOW - age };
      if (p.listTool(caller, tool)) return;
      for (const args of argSets) assert.equal(p.tool(caller, tool, args).allow, false);
      // The tenant capture can only be satisfied by the captured segment; try those too.
      for (const seg of id.split("/")) assert.equal(p.tool(caller, tool, { tenant: seg, a: "x", b: "x", t: seg }).allow, false);
    }),
    { numRuns: 500 },
  );
});

test("property: an allowed call names the allow rule; admits() is implied by any allow", () => {
  fc.assert(
    fc.property(fc.array(ruleArb, { maxLength: 5 }), toolsDeclArb, identityArb, toolArb, argsArb, (rules, tools, id, tool, args) => {
      const { cfg, policy: p } = build(rules, tools, false);
      const d = p.tool({ id, notBefore: NOW }, tool, args);
      if (d.allow) {
        assert.ok(p.admits(id));
        assert.ok(p.listTool({ id, notBefore: NOW }, tool));
        assert.equal(cfg.rules.find((r) => r.id === d.rule)?.effect, "allow");
      }
    }),
    { numRuns: 300 },
  );
});

test("property: no input makes the policy throw", () => {
  const p = policy(
    [
      { clients: ["spiffe://example.org/{t}/**"], tools: ["*"], arguments: { t: "{t}" } },
      { clients: ["*"], resources: ["**"], prompts: ["*"], access: ["read"] },
      { clients: ["spiffe://*/x"], tools: ["a*"], effect: "deny", arguments: { a: 1 } },
    ],
    { trustAnnotations: true },
  );
  fc.assert(
    fc.property(fc.anything(), fc.anything(), fc.anything(), fc.oneof(fc.string(), identityArb, fc.anything()), fc.string(), (a, b, c, id, s) => {
      const caller = { id, notBefore: a } as Caller;
      p.tool(caller, b as { name: string }, c);
      p.tool(caller, { name: s, annotations: a as never }, c);
      p.listTool(caller, b as { name: string });
      p.resource(caller, b as string);
      p.resource(caller, s);
      p.prompt(caller, s);
      p.method(caller, s);
      p.prompt(caller, b as string);
      p.method(caller, b as string);
      p.admits(id as string);
      p.accessOf(b as { name: string });
      p.accessOf({ name: "x", annotations: a as never });
    }),
    { numRuns: 1000 },
  );
  fc.assert(
    fc.property(fc.string(), (s) => {
      for (const f of [compileIdentityPattern, (x: string) => compileNameGlob([x]), (x: string) => compileUriGlob([x])]) {
        try {
          f(s);
        } catch (e) {
          assert.equal((e as { code?: string }).code, "MCPMESH_INVALID_ARGUMENT");
        }
      }
    }),
    { numRuns: 1000 },
  );
});

/**
 * Config and pre-parse checks behind isolation and bad-input handling: wildcard listen addresses, endpoints (their
 * errors by path, defaults, per-endpoint policy), and the JSON pre-scan (depth, duplicate keys, __proto__).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, DEFAULT_LIMITS, isWildcardHost, parseAgentConfig } from "../../agent/config.ts";
import { Policy } from "../../agent/policy.ts";
import { scanJson } from "../../agent/json-scan.ts";

const TD = "spiffe://example.org";
const base = (over: Record<string, unknown> = {}) => ({ identity: "/id", upstream: { url: "http://127.0.0.1:3001/mcp" }, ...over });
const issues = (obj: unknown): { path: string; message: string }[] => {
  try {
    parseAgentConfig(obj, "/tmp");
  } catch (e) {
    if (e instanceof ConfigError) return e.errors;
    throw e;
  }
  return [];
};

test("wildcard listen addresses are refused, naming the path, unless listenAnyAddress", () => {
  for (const listen of ["0.0.0.0:8443", "[::]:8443", "[0:0:0:0:0:0:0:0]:8443", "0.00.0.0:1"]) {
    if (listen === "0.00.0.0:1") {
      assert.ok(issues(base({ listen, rules: [{ clients: ["*"], tools: ["echo"] }] })).some((x) => x.path === "listen" && /dotted quad/.test(x.message)));
      continue;
    }
    const e = issues(base({ listen, rules: [{ clients: ["*"], tools: ["echo"] }] }));
    const hit = e.find((x) => x.path === "listen");
    assert.ok(hit && /wildcard address/.test(hit.message) && /listenAnyAddress: true/.test(hit.message), `${listen}: ${JSON.stringify(e)}`);
  }
  const cfg = parseAgentConfig(base({ listen: "0.0.0.0:8443", listenAnyAddress: true, rules: [{ clients: ["*"], tools: ["echo"] }] }), "/tmp");
  assert.equal(cfg.listenAnyAddress, true);
  assert.deepEqual(cfg.listen, { host: "0.0.0.0", port: 8443 });
  for (const h of ["10.0.0.1", "127.0.0.1", "::1", "fe80::1", "example.com"]) assert.equal(isWildcardHost(h), false, h);
  for (const h of ["0.0.0.0", "::", "0::0", "::ffff:0.0.0.0"]) assert.equal(isWildcardHost(h), true, h);
  const e = issues(base({ endpoints: [{ listen: "0.0.0.0:1", rules: [{ clients: ["*"], tools: ["x"] }] }] }));
  assert.ok(e.some((x) => x.path === "endpoints[0].listen" && /wildcard/.test(x.message)), JSON.stringify(e));
});

test("the top-level listen + rules form is the endpoint `default` at /mcp", () => {
  const cfg = parseAgentConfig(base({ listen: "127.0.0.1:8443", rules: [{ clients: ["*"], tools: ["echo"] }] }), "/tmp");
  assert.equal(cfg.endpoints.length, 1);
  assert.deepEqual({ ...cfg.endpoints[0], rules: cfg.endpoints[0].rules.length }, { id: "default", listen: { host: "127.0.0.1", port: 8443 }, path: "/mcp", rules: 1 });
  assert.equal(cfg.limits.maxConnections, DEFAULT_LIMITS.maxConnections);
  assert.equal(cfg.limits.maxConnectionsPerIdentity, 64);
  assert.equal(cfg.limits.maxSessionsPerIdentity, 32);
  assert.equal(cfg.limits.maxMessageDepth, 64);
});

test("endpoints: own listen or the shared one, paths, clients, step-up; errors by path", () => {
  const cfg = parseAgentConfig(
    base({
      listen: "127.0.0.1:8443",
      rules: [{ clients: ["*"], access: ["read"] }],
      endpoints: [
        { id: "admin", listen: "10.0.0.5:9443", clients: [`${TD}/ops/*`], stepUp: "5m", rules: [{ clients: ["*"], tools: ["*"] }] },
        { id: "audit", path: "/audit/mcp", rules: [{ clients: [`${TD}/auditors/*`], tools: ["get-*"] }] },
      ],
    }),
    "/tmp",
  );
  assert.deepEqual(cfg.endpoints.map((e) => [e.id, `${e.listen.host}:${e.listen.port}`, e.path, e.stepUpMs, e.clients]), [
    ["default", "127.0.0.1:8443", "/mcp", undefined, undefined],
    ["admin", "10.0.0.5:9443", "/mcp", 300_000, [`${TD}/ops/*`]],
    ["audit", "127.0.0.1:8443", "/audit/mcp", undefined, undefined],
  ]);

  const bad = issues(
    base({
      endpoints: [
        { id: "a", listen: "127.0.0.1:1", path: "mcp", rules: [{ clients: ["*"], tools: ["x"], effect: "maybe" }] },
        { id: "a", listen: "127.0.0.1:1", rules: [{ clients: ["bad"], tools: ["x"] }], stepUp: "soon", clients: ["nope"] },
        { rules: [{ clients: ["*"], tools: ["x"] }] },
        { listen: "127.0.0.1:2", rules: [], bogus: 1 },
      ],
    }),
  );
  const paths = bad.map((b) => b.path);
  for (const p of ["endpoints[0].path", "endpoints[0].rules[0].effect", "endpoints[1].id", "endpoints[1].rules[0].clients[0]", "endpoints[1].stepUp", "endpoints[1].clients[0]", "endpoints[2].listen", "endpoints[3].bogus"]) {
    assert.ok(paths.includes(p), `${p} not in ${JSON.stringify(bad)}`);
  }
  assert.ok(bad.some((b) => b.path === "endpoints[1]" || /already used/.test(b.message)));
  assert.deepEqual(issues(base({})).map((b) => b.path).sort(), ["listen", "rules"]);
  assert.ok(issues(base({ rules: [{ clients: ["*"], tools: ["x"] }], endpoints: [{ listen: "127.0.0.1:1", rules: [] }] })).some((b) => b.path === "rules" && /top-level listen/.test(b.message)));
});

test("per-endpoint policy: narrower clients and the endpoint's step-up tighten every allow", () => {
  const cfg = parseAgentConfig(
    base({ endpoints: [{ id: "admin", listen: "127.0.0.1:1", clients: [`${TD}/ops/*`], stepUp: "5m", rules: [{ clients: ["*"], tools: ["*"] }, { clients: ["*"], tools: ["x"], stepUp: "1m" }] }] }),
    "/tmp",
  );
  const now = 10_000_000;
  const p = Policy.forEndpoint(cfg, cfg.endpoints[0], { now: () => now });
  assert.equal(p.admits(`${TD}/ops/olga`), true);
  assert.equal(p.admits(`${TD}/team-a/alice`), false, "outside the endpoint's clients");
  assert.equal(p.tool({ id: `${TD}/team-a/alice`, notBefore: now }, { name: "echo" }, {}).allow, false);
  assert.equal(p.tool({ id: `${TD}/ops/olga`, notBefore: now - 60_000 }, { name: "echo" }, {}).allow, true);
  assert.equal(p.tool({ id: `${TD}/ops/olga`, notBefore: now - 6 * 60_000 }, { name: "echo" }, {}).allow, false, "endpoint step-up 5m");
  assert.equal(p.tool({ id: `${TD}/ops/olga`, notBefore: now - 2 * 60_000 }, { name: "x" }, {}).allow, true, "x is also allowed by rule 0 (5m)");
  assert.equal(p.method({ id: `${TD}/team-a/alice`, notBefore: now }, "tools/list").allow, false);
});

test("JSON pre-scan: depth, duplicate keys (also through escapes), __proto__; everything else is left to JSON.parse", () => {
  assert.equal(scanJson('{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":[1,{"b":"}"}],"c":"\\"{"}}', 64), null);
  assert.match(scanJson("[".repeat(100_000) + "]".repeat(100_000), 64)!, /nesting deeper than 64/);
  assert.match(scanJson('{"a":'.repeat(65) + "1" + "}".repeat(65), 64)!, /nesting/);
  assert.equal(scanJson('{"a":'.repeat(63) + "1" + "}".repeat(63), 64), null);
  assert.match(scanJson('{"id":1,"id":2}', 64)!, /duplicate key "id"/);
  assert.match(scanJson('{"params":{"name":"a","n\\u0061me":"b"}}', 64)!, /duplicate key "name"/);
  assert.equal(scanJson('{"a":{"x":1},"b":{"x":1}}', 64), null, "same key in sibling objects is fine");
  assert.equal(scanJson('[{"x":1},{"x":1}]', 64), null);
  assert.match(scanJson('{"params":{"__proto__":{"admin":true}}}', 64)!, /__proto__/);
  assert.match(scanJson('{"\\u005f_proto__":1}', 64)!, /__proto__/);
  assert.equal(scanJson('{"constructor":{"prototype":1}}', 64), null, "constructor is an ordinary key");
  for (const junk of ["", "{", '{"a', '"\\', "}}}]]]", "{,,,}", "nul", '{"a":1,}']) assert.doesNotThrow(() => scanJson(junk, 64), junk);
});

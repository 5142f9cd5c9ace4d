import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadAgentConfig, parseAgentConfig, parseListenAddress, isLoopbackHost, parseRate, DEFAULT_LIMITS, DEFAULT_ALERTS } from "../../agent/config.ts";
import { checkConfigFile, explainCall } from "../../agent/explain.ts";

const dir = mkdtempSync(join(tmpdir(), "mcpmesh-config-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function base(): Record<string, any> {
  return {
    listen: "127.0.0.1:8443",
    identity: "./agent-id",
    upstream: { url: "http://127.0.0.1:3001/mcp" },
    rules: [
      { clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] },
      { clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
  };
}

function errorsOf(obj: unknown): { path: string; message: string }[] {
  try {
    parseAgentConfig(obj, dir);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    assert.equal(e.code, "MCPMESH_CONFIG");
    return e.errors;
  }
  assert.fail("config was accepted");
}

// Each case: a mutation of a valid config, the exact path the error must name, and a fragment of its message.
const BAD: { name: string; mutate: (c: Record<string, any>) => unknown; path: string; message: RegExp }[] = [
  { name: "root is a list", mutate: () => [], path: "", message: /mapping/ },
  { name: "listen missing", mutate: (c) => delete c.listen, path: "listen", message: /is required/ },
  { name: "listen without port", mutate: (c) => (c.listen = "127.0.0.1"), path: "listen", message: /needs a port/ },
  { name: "listen with empty port", mutate: (c) => (c.listen = "127.0.0.1:"), path: "listen", message: /port/ },
  { name: "listen v6 without port", mutate: (c) => (c.listen = "[::1]"), path: "listen", message: /needs a port/ },
  { name: "listen v6 without brackets", mutate: (c) => (c.listen = "::1:8443"), path: "listen", message: /brackets/ },
  { name: "listen port out of range", mutate: (c) => (c.listen = "127.0.0.1:99999"), path: "listen", message: /out of range/ },
  { name: "listen port not a number", mutate: (c) => (c.listen = "127.0.0.1:https"), path: "listen", message: /not a number/ },
  { name: "listen host invalid", mutate: (c) => (c.listen = "bad host!:80"), path: "listen", message: /not a valid host/ },
  { name: "listen as number", mutate: (c) => (c.listen = 8443), path: "listen", message: /must be a string/ },
  { name: "identity missing", mutate: (c) => delete c.identity, path: "identity", message: /is required/ },
  { name: "identity empty", mutate: (c) => (c.identity = ""), path: "identity", message: /must not be empty/ },
  { name: "ca over http", mutate: (c) => (c.ca = "http://127.0.0.1:9443"), path: "ca", message: /https/ },
  { name: "ca not a URL", mutate: (c) => (c.ca = "ca.example"), path: "ca", message: /not a URL/ },
  { name: "trust domain upper-case", mutate: (c) => (c.trustDomains = ["Example.org"]), path: "trustDomains[0]", message: /not a valid trust domain/ },
  { name: "trustDomains empty", mutate: (c) => (c.trustDomains = []), path: "trustDomains", message: /must not be empty/ },
  { name: "trustBundles not a list", mutate: (c) => (c.trustBundles = "./x.pem"), path: "trustBundles", message: /must be a list/ },
  { name: "tls version", mutate: (c) => (c.tls = { minVersion: "TLSv1.1" }), path: "tls.minVersion", message: /must be one of "TLSv1.3", "TLSv1.2"/ },
  { name: "upstream empty", mutate: (c) => (c.upstream = {}), path: "upstream", message: /^must have exactly one of url, sse, command$/ },
  {
    name: "upstream two kinds",
    mutate: (c) => (c.upstream = { url: "http://127.0.0.1:1/mcp", command: ["srv"] }),
    path: "upstream",
    message: /exactly one of url, sse, command \(found url and command\)/,
  },
  { name: "upstream missing", mutate: (c) => delete c.upstream, path: "upstream", message: /is required/ },
  { name: "upstream non-loopback", mutate: (c) => (c.upstream.url = "http://10.0.0.5:3001/mcp"), path: "upstream.url", message: /unsafeUpstream/ },
  { name: "upstream sse non-loopback", mutate: (c) => (c.upstream = { sse: "http://mcp.example.com/sse" }), path: "upstream.sse", message: /not loopback/ },
  { name: "upstream bad scheme", mutate: (c) => (c.upstream.url = "ftp://127.0.0.1/x"), path: "upstream.url", message: /http/ },
  { name: "upstream not a URL", mutate: (c) => (c.upstream.url = "127.0.0.1:3001"), path: "upstream.url", message: /http|URL/ },
  { name: "upstream credentials", mutate: (c) => (c.upstream.url = "http://u:p@127.0.0.1/mcp"), path: "upstream.url", message: /credentials/ },
  { name: "upstream timeout", mutate: (c) => (c.upstream.timeout = "soon"), path: "upstream.timeout", message: /not a duration/ },
  { name: "upstream timeout as number", mutate: (c) => (c.upstream.timeout = 60), path: "upstream.timeout", message: /must be a string/ },
  { name: "env without command", mutate: (c) => (c.upstream.env = { A: "1" }), path: "upstream.env", message: /only applies to upstream.command/ },
  { name: "cwd without command", mutate: (c) => (c.upstream.cwd = "/tmp"), path: "upstream.cwd", message: /only applies/ },
  { name: "env value not a string", mutate: (c) => (c.upstream = { command: ["srv"], env: { A: 1 } }), path: "upstream.env.A", message: /must be a string/ },
  { name: "command empty", mutate: (c) => (c.upstream = { command: [] }), path: "upstream.command", message: /must not be empty/ },
  { name: "command empty program", mutate: (c) => (c.upstream = { command: [""] }), path: "upstream.command[0]", message: /program/ },
  { name: "restart without command", mutate: (c) => (c.upstream.restart = { maxRestarts: 1 }), path: "upstream.restart", message: /only applies to upstream.command/ },
  { name: "inheritEnv without command", mutate: (c) => (c.upstream.inheritEnv = ["HTTPS_PROXY"]), path: "upstream.inheritEnv", message: /only applies to upstream.command/ },
  { name: "inheritEnv bad name", mutate: (c) => (c.upstream = { command: ["srv"], inheritEnv: ["OK", "A=B"] }), path: "upstream.inheritEnv[1]", message: /not an environment variable name/ },
  { name: "inheritEnv empty", mutate: (c) => (c.upstream = { command: ["srv"], inheritEnv: [] }), path: "upstream.inheritEnv", message: /must not be empty/ },
  { name: "inheritEnv not a list", mutate: (c) => (c.upstream = { command: ["srv"], inheritEnv: "PATH" }), path: "upstream.inheritEnv", message: /must be a list/ },
  { name: "restart initialDelay", mutate: (c) => (c.upstream = { command: ["srv"], restart: { initialDelay: "fast" } }), path: "upstream.restart.initialDelay", message: /not a duration/ },
  { name: "restart maxDelay too long", mutate: (c) => (c.upstream = { command: ["srv"], restart: { maxDelay: "2h" } }), path: "upstream.restart.maxDelay", message: /at most 1h/ },
  {
    name: "restart initialDelay over maxDelay",
    mutate: (c) => (c.upstream = { command: ["srv"], restart: { initialDelay: "1m", maxDelay: "10s" } }),
    path: "upstream.restart.initialDelay",
    message: /must not exceed upstream.restart.maxDelay \(10s\)/,
  },
  { name: "restart maxRestarts negative", mutate: (c) => (c.upstream = { command: ["srv"], restart: { maxRestarts: -1 } }), path: "upstream.restart.maxRestarts", message: /must be at least 0/ },
  { name: "restart maxRestarts fractional", mutate: (c) => (c.upstream = { command: ["srv"], restart: { maxRestarts: 1.5 } }), path: "upstream.restart.maxRestarts", message: /integer/ },
  { name: "restart stableAfter too short", mutate: (c) => (c.upstream = { command: ["srv"], restart: { stableAfter: "10ms" } }), path: "upstream.restart.stableAfter", message: /at least 100ms/ },
  { name: "restart field typo", mutate: (c) => (c.upstream = { command: ["srv"], restart: { maxRestart: 3 } }), path: "upstream.restart.maxRestart", message: /did you mean "maxRestarts"/ },
  {
    name: "upstream field typo",
    mutate: (c) => (c.upstream.unsafeUpstrem = true),
    path: "upstream.unsafeUpstrem",
    message: /unknown field \(did you mean "unsafeUpstream"\?\)/,
  },
  { name: "tool access", mutate: (c) => (c.tools = { echo: { access: "admin" } }), path: "tools.echo.access", message: /"read", "write"/ },
  { name: "tool pin", mutate: (c) => (c.tools = { echo: { pin: "abc" } }), path: "tools.echo.pin", message: /sha256/ },
  { name: "tool field typo", mutate: (c) => (c.tools = { "delete.file": { acess: "write" } }), path: 'tools["delete.file"].acess', message: /did you mean "access"/ },
  { name: "tool declaration not a mapping", mutate: (c) => (c.tools = { echo: "read" }), path: "tools.echo", message: /must be a mapping/ },
  {
    name: "overlay schema keyword typo",
    mutate: (c) => (c.tools = { echo: { schema: { type: "object", propertes: {} } } }),
    path: "tools.echo.schema",
    message: /propertes/,
  },
  {
    name: "overlay schema unknown dialect",
    mutate: (c) => (c.tools = { echo: { schema: { $schema: "http://json-schema.org/draft-04/schema#" } } }),
    path: "tools.echo.schema",
    message: /unsupported JSON Schema dialect/,
  },
  { name: "overlay schema wrong type", mutate: (c) => (c.tools = { echo: { schema: "object" } }), path: "tools.echo.schema", message: /mapping or a boolean/ },
  { name: "trustAnnotations not boolean", mutate: (c) => (c.trustAnnotations = "yes"), path: "trustAnnotations", message: /boolean/ },
  { name: "rules missing", mutate: (c) => delete c.rules, path: "rules", message: /is required/ },
  { name: "rules not a list", mutate: (c) => (c.rules = {}), path: "rules", message: /must be a list/ },
  { name: "effect", mutate: (c) => (c.rules[1].effect = "permit"), path: "rules[1].effect", message: /^must be one of "allow", "deny"$/ },
  { name: "clients empty", mutate: (c) => (c.rules[0].clients = []), path: "rules[0].clients", message: /must not be empty/ },
  { name: "clients missing", mutate: (c) => delete c.rules[0].clients, path: "rules[0].clients", message: /is required/ },
  { name: "clients duplicate", mutate: (c) => (c.rules[0].clients = ["*", "*"]), path: "rules[0].clients", message: /duplicates/ },
  { name: "client not spiffe", mutate: (c) => (c.rules[0].clients = ["example.org/team-a"]), path: "rules[0].clients[0]", message: /spiffe:\/\// },
  { name: "client upper-case TD", mutate: (c) => (c.rules[0].clients = ["spiffe://Example.org/x"]), path: "rules[0].clients[0]", message: /trust domain/ },
  { name: "client partial capture", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/team-{x}"]), path: "rules[0].clients[0]", message: /whole segment/ },
  { name: "client partial **", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/a**"]), path: "rules[0].clients[0]", message: /whole path segment/ },
  { name: "client without path", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org"]), path: "rules[0].clients[0]", message: /no path/ },
  { name: "client empty segment", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/a//b"]), path: "rules[0].clients[0]", message: /empty path segment/ },
  { name: "client trailing slash", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/a/"]), path: "rules[0].clients[0]", message: /empty path segment/ },
  { name: "client dot-dot", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/a/.."]), path: "rules[0].clients[0]", message: /not a valid path segment/ },
  { name: "client bad char", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/a b"]), path: "rules[0].clients[0]", message: /may only contain/ },
  { name: "client capture twice", mutate: (c) => (c.rules[0].clients = ["spiffe://example.org/{t}/{t}"]), path: "rules[0].clients[0]", message: /twice/ },
  { name: "client ** as trust domain", mutate: (c) => (c.rules[0].clients = ["spiffe://**/x"]), path: "rules[0].clients[0]", message: /trust domain/ },
  {
    name: "client outside trustDomains",
    mutate: (c) => (c.trustDomains = ["example.org"], c.rules[0].clients = ["spiffe://other.org/x"]),
    path: "rules[0].clients[0]",
    message: /not in trustDomains/,
  },
  { name: "tool glob with capture", mutate: (c) => (c.rules[0].tools = ["get-{x}"]), path: "rules[0].tools[0]", message: /captures/ },
  { name: "tool glob empty", mutate: (c) => (c.rules[0].tools = [""]), path: "rules[0].tools[0]", message: /must not be empty/ },
  { name: "resource glob with capture", mutate: (c) => (c.rules[0] = { clients: ["*"], resources: ["file:///{t}/*"] }), path: "rules[0].resources[0]", message: /captures/ },
  { name: "prompt glob not a string", mutate: (c) => (c.rules[0] = { clients: ["*"], prompts: [3] }), path: "rules[0].prompts[0]", message: /must be a string/ },
  { name: "access class", mutate: (c) => (c.rules[0].access = ["admin"]), path: "rules[0].access[0]", message: /"read", "write"/ },
  {
    name: "capture not defined",
    mutate: (c) => (c.rules[0].arguments = { tenant: "{tenant}" }),
    path: "rules[0].arguments.tenant",
    message: /\{tenant\} is not captured by every clients pattern \(rules\[0\]\.clients\[0\] has no \{tenant\}\)/,
  },
  {
    name: "capture missing from one pattern",
    mutate: (c) => ((c.rules[0].clients = ["spiffe://example.org/{tenant}/*", "spiffe://example.org/admin"]), (c.rules[0].arguments = { tenant: "t-{tenant}" })),
    path: "rules[0].arguments.tenant",
    message: /clients\[1\] has no \{tenant\}/,
  },
  {
    name: "capture with bare *",
    mutate: (c) => ((c.rules[0].clients = ["*"]), (c.rules[0].arguments = { tenant: "{tenant}" })),
    path: "rules[0].arguments.tenant",
    message: /not captured/,
  },
  {
    name: "arguments with resources",
    mutate: (c) => (c.rules[0] = { clients: ["*"], tools: ["x"], resources: ["a"], arguments: { a: 1 } }),
    path: "rules[0].arguments",
    message: /tool calls only/,
  },
  {
    name: "arguments without tools",
    mutate: (c) => (c.rules[0] = { clients: ["*"], prompts: ["p"], arguments: { a: 1 } }),
    path: "rules[0].arguments",
    message: /needs tools or access/,
  },
  { name: "argument value object", mutate: (c) => (c.rules[0].arguments = { x: { y: 1 } }), path: "rules[0].arguments.x", message: /string, a number, a boolean \(true or false\) or null/ },
  { name: "stepUp not a duration", mutate: (c) => (c.rules[0].stepUp = "10 minutes"), path: "rules[0].stepUp", message: /not a duration/ },
  { name: "stepUp as number", mutate: (c) => (c.rules[0].stepUp = 600), path: "rules[0].stepUp", message: /must be a string/ },
  { name: "stepUp on deny", mutate: (c) => (c.rules[1].stepUp = "10m"), path: "rules[1].stepUp", message: /only applies to allow rules/ },
  { name: "allow rule without target", mutate: (c) => delete c.rules[0].tools, path: "rules[0]", message: /must name what it allows/ },
  { name: "duplicate id", mutate: (c) => ((c.rules[0].id = "r"), (c.rules[1].id = "r")), path: "rules[1].id", message: /already used by rules\[0\]/ },
  { name: "id empty", mutate: (c) => (c.rules[0].id = ""), path: "rules[0].id", message: /must not be empty/ },
  { name: "rule field typo", mutate: (c) => (c.rules[1].efect = "deny"), path: "rules[1].efect", message: /did you mean "effect"/ },
  { name: "rule not a mapping", mutate: (c) => (c.rules[1] = "deny all"), path: "rules[1]", message: /must be a mapping/ },
  { name: "methods gated", mutate: (c) => (c.methods = ["tools/call"]), path: "methods[0]", message: /authorized per call/ },
  { name: "methods not a list", mutate: (c) => (c.methods = "sampling/createMessage"), path: "methods", message: /must be a list/ },
  { name: "limits zero", mutate: (c) => (c.limits = { maxDepth: 0 }), path: "limits.maxDepth", message: /at least 1/ },
  { name: "limits fraction", mutate: (c) => (c.limits = { maxDepth: 1.5 }), path: "limits.maxDepth", message: /must be an integer/ },
  { name: "limits typo", mutate: (c) => (c.limits = { maxBodyByte: 10 }), path: "limits.maxBodyByte", message: /did you mean "maxBodyBytes"/ },
  {
    name: "limits inconsistent",
    mutate: (c) => (c.limits = { maxBodyBytes: 1000, maxArgumentBytes: 2000 }),
    path: "limits.maxArgumentBytes",
    message: /larger than limits.maxBodyBytes/,
  },
  { name: "pinning mode", mutate: (c) => (c.pinning = { mode: "yolo" }), path: "pinning.mode", message: /"tofu", "strict"/ },
  { name: "audit typo", mutate: (c) => (c.audit = { fille: "x" }), path: "audit.fille", message: /did you mean "file"/ },
  { name: "bad rate", mutate: (c) => (c.limits = { rate: { perIdentity: "lots" } }), path: "limits.rate.perIdentity", message: /not a rate/ },
  { name: "bad class rate", mutate: (c) => (c.limits = { rate: { perClass: { write: "0/m" } } }), path: "limits.rate.perClass.write", message: /at least 1/ },
  { name: "unknown class", mutate: (c) => (c.limits = { rate: { perClass: { exec: "1/m" } } }), path: "limits.rate.perClass.exec", message: /not allowed|unknown/ },
  { name: "negative concurrency", mutate: (c) => (c.limits = { concurrency: -1 }), path: "limits.concurrency", message: /.+/ },
  // limits.idleTimeout: a duration from 1s to 1h; never off.
  { name: "idle timeout off", mutate: (c) => (c.limits = { idleTimeout: "off" }), path: "limits.idleTimeout", message: /cannot be off.*up to 1h/ },
  { name: "idle timeout not a duration", mutate: (c) => (c.limits = { idleTimeout: "soon" }), path: "limits.idleTimeout", message: /not a duration/ },
  { name: "idle timeout unitless", mutate: (c) => (c.limits = { idleTimeout: "30" }), path: "limits.idleTimeout", message: /not a duration/ },
  { name: "idle timeout a number", mutate: (c) => (c.limits = { idleTimeout: 30 }), path: "limits.idleTimeout", message: /string/ },
  { name: "idle timeout zero", mutate: (c) => (c.limits = { idleTimeout: "0s" }), path: "limits.idleTimeout", message: /not a duration/ },
  { name: "idle timeout negative", mutate: (c) => (c.limits = { idleTimeout: "-5s" }), path: "limits.idleTimeout", message: /not a duration/ },
  { name: "idle timeout too short", mutate: (c) => (c.limits = { idleTimeout: "500ms" }), path: "limits.idleTimeout", message: /500ms is out of range: use a duration from 1s to 1h/ },
  { name: "idle timeout too long", mutate: (c) => (c.limits = { idleTimeout: "2h" }), path: "limits.idleTimeout", message: /2h is out of range.*default 10s/ },
  { name: "idle timeout typo", mutate: (c) => (c.limits = { idleTimout: "1m" }), path: "limits.idleTimout", message: /idleTimeout/ },
  { name: "bad cool-down window", mutate: (c) => (c.limits = { coolDown: { after: 3, within: "soon" } }), path: "limits.coolDown.within", message: /not a duration/ },
  { name: "rule rate on a deny", mutate: (c) => (c.rules[1].rate = "1/m"), path: "rules[1].rate", message: /only applies to allow rules/ },
  { name: "rule rate malformed", mutate: (c) => (c.rules[0].rate = "3 per second"), path: "rules[0].rate", message: /not a rate/ },
  { name: "admin not loopback", mutate: (c) => (c.admin = { listen: "0.0.0.0:9100" }), path: "admin.listen", message: /not loopback/ },
  { name: "admin without port", mutate: (c) => (c.admin = { listen: "127.0.0.1" }), path: "admin.listen", message: /needs a port/ },
  { name: "alerts webhook not a URL", mutate: (c) => (c.alerts = { webhook: "nope" }), path: "alerts.webhook", message: /not a URL/ },
  { name: "alerts window", mutate: (c) => (c.alerts = { window: "1 minute" }), path: "alerts.window", message: /not a duration/ },
  { name: "alerts typo", mutate: (c) => (c.alerts = { spikefactor: 3 }), path: "alerts.spikefactor", message: /spikeFactor/ },
  { name: "audit rotation without file", mutate: (c) => (c.audit = { maxBytes: 4096 }), path: "audit.maxBytes", message: /needs audit.file/ },
  { name: "top-level typo", mutate: (c) => ((c.rule = c.rules), delete c.rules), path: "rule", message: /did you mean "rules"/ },
  { name: "unknown top-level", mutate: (c) => (c.rateLimit = 5), path: "rateLimit", message: /unknown field/ },
];

test("bad configs: each names the exact path", async (t) => {
  for (const c of BAD) {
    await t.test(c.name, () => {
      const cfg = base();
      const replaced = c.mutate(cfg);
      const input = Array.isArray(replaced) && c.path === "" ? replaced : cfg;
      const errors = errorsOf(input);
      const hit = errors.find((e) => e.path === c.path);
      assert.ok(hit, `no error at ${JSON.stringify(c.path)}; got ${JSON.stringify(errors)}`);
      assert.match(hit.message, c.message);
    });
  }
});

test("a bad config loses nothing: every independent error is reported at once", () => {
  const cfg = base();
  cfg.listen = "127.0.0.1";
  cfg.ca = "http://x";
  cfg.upstream = { url: "http://10.1.1.1/mcp", timeout: "later" };
  cfg.tools = { echo: { access: "admin", pin: "x" } };
  cfg.rules[0].effect = "permit";
  cfg.rules[0].arguments = { tenant: "{tenant}" };
  cfg.rules[1].stepUp = "10m";
  cfg.limits = { maxDepth: 0 };
  cfg.extra = true;
  const paths = errorsOf(cfg).map((e) => e.path);
  for (const p of [
    "listen",
    "ca",
    "upstream.url",
    "upstream.timeout",
    "tools.echo.access",
    "tools.echo.pin",
    "rules[0].effect",
    "rules[0].arguments.tenant",
    "rules[1].stepUp",
    "limits.maxDepth",
    "extra",
  ]) {
    assert.ok(paths.includes(p), `missing ${p} in ${JSON.stringify(paths)}`);
  }
  assert.equal(new Set(paths.map((p, i) => `${p}${i}`)).size, paths.length);
});

test("ConfigError message lists every problem with its path", () => {
  try {
    parseAgentConfig({ ...base(), listen: "x", rules: [{ clients: ["*"], tools: ["a"], effect: "nope" }] }, dir, "agent.yaml");
    assert.fail("accepted");
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    assert.match(e.message, /invalid agent config agent\.yaml \(2 errors\)/);
    assert.match(e.message, /\n {2}listen: /);
    assert.match(e.message, /\n {2}rules\[0\]\.effect: must be one of/);
  }
});

test("defaults are applied and paths resolved against the config directory", () => {
  const file = join(dir, "agent.yaml");
  writeFileSync(
    file,
    `listen: "[::1]:8443"
identity: ./agent-id
trustBundles: [./other-td.pem, /abs/root.pem]
upstream:
  command: [node, server.js]
  cwd: ./srv
  env: { DEBUG: "1" }
tools:
  echo: { access: read }
  constructor: { access: write }
rules:
  - clients: ["spiffe://example.org/{tenant}/*"]
    tools: [echo]
    arguments: { tenant: "{tenant}", dry: true }
    stepUp: 10m
  - clients: ["*"]
    tools: [delete-*]
    effect: deny
    id: no-deletes
pinning: { file: ./state/pins.json }
audit: { file: audit.log }
`,
  );
  const cfg = loadAgentConfig(file);
  assert.deepEqual(cfg.listen, { host: "::1", port: 8443 });
  assert.equal(cfg.identity, join(dir, "agent-id"));
  assert.deepEqual(cfg.trustBundles, [join(dir, "other-td.pem"), "/abs/root.pem"]);
  assert.equal(cfg.trustDomains, undefined);
  assert.equal(cfg.ca, undefined);
  assert.deepEqual(cfg.tls, { minVersion: "TLSv1.3" });
  assert.deepEqual(cfg.upstream.command, ["node", "server.js"]);
  assert.equal(cfg.upstream.cwd, join(dir, "srv"));
  assert.equal(cfg.upstream.env?.DEBUG, "1");
  assert.equal(cfg.upstream.unsafeUpstream, false);
  assert.equal(cfg.upstream.timeoutMs, 60_000);
  assert.deepEqual(cfg.upstream.restart, { initialDelayMs: 100, maxDelayMs: 30_000, maxRestarts: 5, stableAfterMs: 10_000 });
  assert.equal(cfg.upstream.inheritEnv, undefined);
  assert.equal(cfg.tools.echo.access, "read");
  assert.equal(cfg.tools["constructor" as string].access, "write");
  assert.equal(cfg.tools.toString, undefined, "tools has no prototype");
  assert.equal(cfg.trustAnnotations, false);
  assert.equal(cfg.rules[0].id, "rules[0]");
  assert.equal(cfg.rules[0].effect, "allow");
  assert.equal(cfg.rules[0].stepUpMs, 600_000);
  assert.deepEqual({ ...cfg.rules[0].arguments }, { tenant: "{tenant}", dry: true });
  assert.equal(cfg.rules[1].id, "no-deletes");
  assert.deepEqual(cfg.methods, []);
  assert.deepEqual(cfg.limits, DEFAULT_LIMITS);
  assert.deepEqual(cfg.pinning, { file: join(dir, "state", "pins.json"), mode: "tofu" });
  assert.deepEqual(cfg.audit, { file: join(dir, "audit.log"), maxBytes: 100 * 1_048_576, keep: 10, chain: true });
  assert.equal(cfg.admin, undefined);
  assert.deepEqual(cfg.alerts, DEFAULT_ALERTS);
  assert.equal(cfg.file, file);
  assert.equal(cfg.baseDir, dir);
});

test("JSON files load too, and the pin file defaults next to the config", () => {
  const sub = mkdtempSync(join(dir, "json-"));
  const file = join(sub, "agent.json");
  writeFileSync(
    file,
    JSON.stringify({
      listen: "0.0.0.0:0",
      listenAnyAddress: true,
      identity: "/etc/mcpmesh/id",
      ca: "https://127.0.0.1:9443",
      trustDomains: ["example.org"],
      tls: { minVersion: "TLSv1.2" },
      upstream: { sse: "http://localhost:3001/sse", timeout: "1h30m" },
      tools: { x: { pin: "AB".repeat(32) } },
      trustAnnotations: true,
      rules: [{ clients: ["spiffe://example.org/**"], access: ["read"] }],
      methods: ["sampling/createMessage"],
      limits: { maxDepth: 8 },
      pinning: { mode: "strict" },
    }),
  );
  const cfg = loadAgentConfig(file);
  assert.deepEqual(cfg.listen, { host: "0.0.0.0", port: 0 });
  assert.equal(cfg.identity, "/etc/mcpmesh/id");
  assert.equal(cfg.ca, "https://127.0.0.1:9443");
  assert.deepEqual(cfg.trustDomains, ["example.org"]);
  assert.equal(cfg.tls.minVersion, "TLSv1.2");
  assert.equal(cfg.upstream.sse, "http://localhost:3001/sse");
  assert.equal(cfg.upstream.timeoutMs, 5_400_000);
  assert.equal(cfg.tools.x.pin, "ab".repeat(32), "pins are normalized to lower case");
  assert.equal(cfg.trustAnnotations, true);
  assert.deepEqual(cfg.methods, ["sampling/createMessage"]);
  assert.equal(cfg.limits.maxDepth, 8);
  assert.equal(cfg.limits.maxBodyBytes, DEFAULT_LIMITS.maxBodyBytes);
  assert.deepEqual(cfg.pinning, { file: join(sub, "pins.json"), mode: "strict" });
});

test("unsafeUpstream lets a non-loopback upstream through", () => {
  const cfg = parseAgentConfig({ ...base(), upstream: { url: "https://mcp.internal:443/mcp", unsafeUpstream: true } }, dir);
  assert.equal(cfg.upstream.url, "https://mcp.internal:443/mcp");
  assert.equal(cfg.upstream.unsafeUpstream, true);
});

test("YAML problems are reported with their position, and the file is left as it was", () => {
  const file = join(dir, "dup.yaml");
  const text = "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\nidentity: x\n";
  writeFileSync(file, text);
  assert.throws(
    () => loadAgentConfig(file),
    (e: unknown) => e instanceof ConfigError && e.errors.length === 1 && e.errors[0].path === "" && /line 2/.test(e.errors[0].message) && /unique/i.test(e.errors[0].message),
  );
  assert.equal(readFileSync(file, "utf8"), text);

  const broken = join(dir, "broken.yaml");
  writeFileSync(broken, "rules: [\n");
  assert.throws(() => loadAgentConfig(broken), (e: unknown) => e instanceof ConfigError && /line \d+/.test(e.errors[0].message));

  assert.throws(() => loadAgentConfig(join(dir, "nope.yaml")), (e: unknown) => e instanceof ConfigError && /file not found/.test(e.message));
  assert.throws(() => loadAgentConfig(dir), (e: unknown) => e instanceof ConfigError && /directory/.test(e.message));

  const empty = join(dir, "empty.yaml");
  writeFileSync(empty, "");
  assert.throws(() => loadAgentConfig(empty), (e: unknown) => e instanceof ConfigError && e.errors[0].path === "");
});

test("parseListenAddress and isLoopbackHost", () => {
  assert.deepEqual(parseListenAddress("localhost:1"), { host: "localhost", port: 1 });
  assert.deepEqual(parseListenAddress("[::]:443"), { host: "::", port: 443 });
  assert.equal(typeof parseListenAddress("[fe80::1"), "string");
  assert.equal(typeof parseListenAddress("[nothex]:1"), "string");
  assert.equal(typeof parseListenAddress(":8443"), "string");
  for (const h of ["localhost", "127.0.0.1", "127.8.9.10", "[::1]", "::1", "a.localhost", "[::ffff:127.0.0.1]"]) assert.ok(isLoopbackHost(h), h);
  for (const h of ["10.0.0.1", "0.0.0.0", "example.com", "[::]", "128.0.0.1", "localhost.example.com", "[::ffff:10.0.0.1]"]) {
    assert.ok(!isLoopbackHost(h), h);
  }
});

test("checkConfigFile returns errors as data; explainCall explains a decision", () => {
  const bad = join(dir, "bad-check.yaml");
  writeFileSync(bad, "listen: nope\nidentity: x\nupstream: { url: 'http://127.0.0.1:1/' }\nrules: []\n");
  const r = checkConfigFile(bad);
  assert.equal(r.ok, false);
  assert.deepEqual(r.errors.map((e) => e.path), ["listen"]);

  const good = join(dir, "good-check.yaml");
  writeFileSync(
    good,
    `listen: 127.0.0.1:8443
identity: ./id
upstream: { url: "http://127.0.0.1:3001/mcp" }
tools:
  write-file:
    access: write
    schema: { type: object, properties: { path: { type: string, pattern: "^/tmp/" } }, required: [path] }
rules:
  - { id: tenants, clients: ["spiffe://example.org/{tenant}/*"], access: [write], arguments: { tenant: "{tenant}" }, stepUp: 10m }
`,
  );
  const ok = checkConfigFile(good);
  assert.equal(ok.ok, true, JSON.stringify(ok.errors));
  const cfg = ok.config!;
  const now = Date.UTC(2030, 0, 1);
  const yes = explainCall(cfg, "spiffe://example.org/acme/bob", "write-file", { tenant: "acme", path: "/tmp/x" }, now);
  assert.equal(yes.decision.allow, true);
  assert.equal(yes.decision.rule, "tenants");
  assert.equal(yes.access, "write");
  assert.equal(yes.listed, true);
  assert.equal(yes.limits, null);
  assert.deepEqual(yes.overlay, { ok: true, error: null });
  assert.ok(yes.notes.some((n) => /freshly issued/.test(n)));

  const wrongTenant = explainCall(cfg, "spiffe://example.org/acme/bob", "write-file", { tenant: "other", path: "/etc/passwd" }, now);
  assert.equal(wrongTenant.decision.allow, false);
  assert.equal(wrongTenant.decision.rule, null);
  assert.match(wrongTenant.decision.reason, /argument "tenant"/);
  assert.equal(wrongTenant.overlay?.ok, false);
  assert.match(wrongTenant.overlay!.error!, /^arguments\.path: must match pattern/);
  assert.doesNotMatch(wrongTenant.overlay!.error!, /passwd/);

  const stale = explainCall(cfg, "spiffe://example.org/acme/bob", "write-file", { tenant: "acme", path: "/tmp/x" }, now, now - 3_600_000);
  assert.equal(stale.decision.allow, false);
  assert.match(stale.decision.reason, /issued within 10m \(this one was issued 1h ago\)/);
});

test("limits, admin, alerts and audit rotation parse with their units", () => {
  const cfg = parseAgentConfig({
    listen: "127.0.0.1:8443", identity: "id", upstream: { url: "http://127.0.0.1:3001/mcp" },
    rules: [{ id: "r", clients: ["*"], tools: ["echo"], rate: "3/s" }],
    limits: { rate: { perIdentity: "off", perTool: "100/m", perClass: { write: "10/5m" } }, concurrency: 2, coolDown: { after: 5, within: "1m", for: "5m" } },
    admin: { listen: "127.0.0.1:9100" },
    alerts: { webhook: "http://127.0.0.1:9999/hook", window: "10s", maxCallsPerMinute: 60, firstUseAfter: 0 },
    audit: { file: "a.log", maxBytes: 4096, keep: 3 },
  }, dir);
  assert.equal(cfg.limits.rate.perIdentity, null);
  assert.deepEqual(cfg.limits.rate.perTool, { limit: 100, periodMs: 60_000, text: "100/m" });
  assert.deepEqual(cfg.limits.rate.perClass.write, { limit: 10, periodMs: 300_000, text: "10/5m" });
  assert.equal(cfg.limits.concurrency, 2);
  assert.deepEqual(cfg.limits.coolDown, { after: 5, withinMs: 60_000, forMs: 300_000 });
  assert.deepEqual(cfg.rules[0].rate, { limit: 3, periodMs: 1000, text: "3/s" });
  assert.deepEqual(cfg.admin, { listen: { host: "127.0.0.1", port: 9100 } });
  assert.equal(cfg.alerts.windowMs, 10_000);
  assert.equal(cfg.alerts.maxCalls, 10, "maxCallsPerMinute is scaled to the window");
  assert.equal(cfg.alerts.firstUseAfter, 0);
  assert.deepEqual(cfg.audit, { file: join(dir, "a.log"), maxBytes: 4096, keep: 3, chain: true });
  assert.equal(parseAgentConfig({ listen: "127.0.0.1:1", identity: "i", upstream: { url: "http://127.0.0.1:1/mcp" }, rules: [], limits: { coolDown: "off" } }, dir).limits.coolDown, null);
  assert.equal(cfg.limits.idleTimeoutMs, 10_000, "idleTimeout defaults to 10s");
  for (const [text, ms] of [["1s", 1000], ["90s", 90_000], ["1h", 3_600_000], ["1m30s", 90_000]] as const) {
    assert.equal(parseAgentConfig({ listen: "127.0.0.1:1", identity: "i", upstream: { url: "http://127.0.0.1:1/mcp" }, rules: [], limits: { idleTimeout: text } }, dir).limits.idleTimeoutMs, ms, text);
  }
  assert.deepEqual(parseRate("1/250ms"), { limit: 1, periodMs: 250, text: "1/250ms" });
  assert.match(String(parseRate("5/x")), /not a rate/);
});

test("revocation and reload: defaults, values, and errors named by path", () => {
  const d = parseAgentConfig({ ...base(), ca: "https://127.0.0.1:9443" }, dir);
  assert.deepEqual(d.revocation, { pollIntervalMs: 30_000, onStale: "fail-closed", feed: true });
  assert.deepEqual(d.reload, { watch: true, debounceMs: 250 });
  const c = parseAgentConfig({ ...base(), ca: "https://127.0.0.1:9443", revocation: { pollInterval: "10s", onStale: "serve-with-alert", feed: false }, reload: { watch: false, debounce: "1s" } }, dir);
  assert.deepEqual(c.revocation, { pollIntervalMs: 10_000, onStale: "serve-with-alert", feed: false });
  assert.deepEqual(c.reload, { watch: false, debounceMs: 1000 });
  assert.deepEqual(errorsOf({ ...base(), revocation: { pollInterval: "10s" } }), [{ path: "revocation", message: "applies only with ca: (the CA publishes the CRL and the live feed)" }]);
  assert.deepEqual(errorsOf({ ...base(), ca: "https://127.0.0.1:9443", revocation: { pollInterval: "500ms", onStale: "shrug", polInterval: "1s" } }), [
    { path: "revocation.polInterval", message: 'unknown field (did you mean "pollInterval"?)' },
    { path: "revocation.onStale", message: 'must be one of "fail-closed", "serve-with-alert"' },
    { path: "revocation.pollInterval", message: "must be at least 1s" },
  ]);
  assert.deepEqual(errorsOf({ ...base(), reload: { debounce: "soon" } }), [{ path: "reload.debounce", message: '"soon" is not a duration (examples: 90s, 15m, 1h, 1h30m)' }]);
});

test("upstream.restart and upstream.inheritEnv for a stdio upstream", () => {
  const cfg = parseAgentConfig(
    { ...base(), upstream: { command: ["srv"], inheritEnv: ["HTTPS_PROXY", "NODE_EXTRA_CA_CERTS"], restart: { initialDelay: "250ms", maxDelay: "1m", maxRestarts: 0, stableAfter: "30s" } } },
    dir,
  );
  assert.deepEqual(cfg.upstream.inheritEnv, ["HTTPS_PROXY", "NODE_EXTRA_CA_CERTS"]);
  assert.deepEqual(cfg.upstream.restart, { initialDelayMs: 250, maxDelayMs: 60_000, maxRestarts: 0, stableAfterMs: 30_000 });
});

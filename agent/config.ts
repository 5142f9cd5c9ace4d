import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { isIP } from "node:net";
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import { parseDocument } from "yaml";
import { MeshError, isMeshError } from "../lib/errors.ts";
import { formatDuration, parseDuration } from "../lib/duration.ts";
import { validateTrustDomain } from "../lib/spiffe.ts";
import { compileIdentityPattern, compileNameGlob, compileUriGlob, GATED_METHODS, type CompiledIdentityPattern } from "./policy.ts";
import { overlaySchemaError } from "./schema.ts";

/** Operator-declared access class of a tool. The server's own hints are not trusted unless `trustAnnotations` says so. */
export type AccessClass = "read" | "write";

/** Where the agent serves mTLS. Written `host:port` in the config; IPv6 hosts in brackets (`[::1]:8443`). */
export interface ListenAddress {
  host: string;
  /** 0 asks the OS for a free port (tests). */
  port: number;
}

/** What the operator says about one tool (keyed by the exact tool name under `tools:`). */
export interface ToolDeclaration {
  /** The tool's access class, used by rules' `access:` lists. Undeclared tools are "unknown" (see `trustAnnotations`). */
  access?: AccessClass;
  /**
   * A JSON Schema applied to `tools/call` arguments in addition to the server's own input schema (both must pass).
   * Dialect from its `$schema`; without one, 2020-12. Unknown keywords are rejected, so typos surface at load time.
   */
  schema?: Record<string, unknown> | boolean;
  /** sha256 hex of the tool's canonical definition (see pinning.ts `toolHash`). Always wins over stored pins. */
  pin?: string;
}

/** A value under a rule's `arguments:`: a literal the argument must equal, or a string with `{capture}` references. */
export type ArgumentConstraint = string | number | boolean | null;

/**
 * One policy rule. A rule applies to a caller whose SPIFFE ID matches one of `clients`, and to a target that it names:
 * a tool matching `tools` (name globs) OR whose access class is in `access`; a resource URI matching `resources`; a
 * prompt matching `prompts`. Default deny; any applicable deny beats every allow, whatever the order.
 *
 * A deny rule naming no target at all blocks the matching identities entirely (every method, the connection itself),
 * which is the quick way to shut out a compromised identity while its revocation propagates.
 */
export interface RuleConfig {
  /** Name used in audit logs and decisions. Default `rules[i]`. Unique. */
  id: string;
  /** Identity patterns: `*` within a segment, `**` across segments, `{name}` captures one segment; `*` alone = anyone. */
  clients: string[];
  /** Tool name globs (`*` = any run of characters). */
  tools?: string[];
  /** Access classes; a tool whose class is listed matches even if its name is not in `tools`. */
  access?: AccessClass[];
  /** Resource URI globs for resources/read|subscribe|unsubscribe (`*` within a path segment, `**` across). */
  resources?: string[];
  /** Prompt name globs for prompts/get. */
  prompts?: string[];
  /**
   * Constraints on top-level `tools/call` arguments. A string may contain `{capture}` references to captures that every
   * `clients` pattern defines; the argument must then be a string equal to the substituted text. Other values must be
   * equal (same JSON type). For allow rules a failed constraint means the rule does not apply; a deny rule with
   * constraints denies only when they all hold.
   */
  arguments?: Record<string, ArgumentConstraint>;
  /** Allow rules only: the client certificate must have been issued (notBefore) at most this long ago. Config: `10m`. */
  stepUpMs?: number;
  /**
   * Allow rules only: the rate limit per identity × tool for the calls this rule allows, replacing
   * `limits.rate.perTool` for them. Config: `rate: "10/m"`.
   */
  rate?: RateSpec;
  /** Default "allow". */
  effect: "allow" | "deny";
}

/** The MCP server behind the agent: exactly one of `url` (Streamable HTTP), `sse` (legacy HTTP+SSE), `command` (stdio). */
export interface UpstreamConfig {
  url?: string;
  sse?: string;
  /** `[program, ...args]`; the agent supervises the child. */
  command?: string[];
  /**
   * Environment for `command`. The child never inherits the agent's environment: it gets PATH, HOME, LANG, LC_ALL,
   * LC_CTYPE, TZ and TMPDIR from the agent (where set), the names listed in `inheritEnv`, then these (which win).
   */
  env?: Record<string, string>;
  /** More variable names passed from the agent's environment to `command` (e.g. NODE_EXTRA_CA_CERTS, HTTPS_PROXY). */
  inheritEnv?: string[];
  /** Supervision of `command`: restart with backoff after a crash, give up after repeated rapid crashes. */
  restart: RestartConfig;
  /** Working directory for `command`, resolved against the config file's directory. */
  cwd?: string;
  /**
   * A unix socket to reach `url`/`sse` through (the URL then only gives the HTTP path and Host header). Resolved
   * against the config file's directory.
   */
  socket?: string;
  /** Allow `url`/`sse` hosts that are not loopback. Default false: the server should not be reachable around the agent. */
  unsafeUpstream: boolean;
  /** Per-request timeout towards the upstream. Config: `timeout: 60s` (default). */
  timeoutMs: number;
}

/**
 * How the agent restarts a crashed stdio upstream. The n-th consecutive restart waits min(maxDelay,
 * initialDelay·2^(n-1)), less up to 50% random jitter; a child that stays up `stableAfterMs` resets n. A crash after
 * `maxRestarts` consecutive restarts makes the channel give up and close; 0 means never restart.
 * Config: `restart: { initialDelay: 100ms, maxDelay: 30s, maxRestarts: 5, stableAfter: 10s }` (the defaults).
 */
export interface RestartConfig {
  initialDelayMs: number;
  maxDelayMs: number;
  maxRestarts: number;
  stableAfterMs: number;
}

export const DEFAULT_RESTART: RestartConfig = { initialDelayMs: 100, maxDelayMs: 30_000, maxRestarts: 5, stableAfterMs: 10_000 };

/** A token bucket: `limit` calls per `periodMs`, refilled continuously; a burst of up to `limit`. Config `"100/m"`. */
export interface RateSpec {
  limit: number;
  periodMs: number;
  /** As written in the config, for messages. */
  text: string;
}

/** Token-bucket rate limits on tools/call. null (config `off`) = unlimited. */
export interface RateLimitsConfig {
  /** Every tools/call of one identity. Default 6000/m (a burst of 6000, 100/s sustained): never bites normal use. */
  perIdentity: RateSpec | null;
  /** One identity × one tool. Default off. A rule's `rate:` replaces it for the calls that rule allows. */
  perTool: RateSpec | null;
  /** One identity × one access class (read, write, unknown). Default none. */
  perClass: Partial<Record<"read" | "write" | "unknown", RateSpec>>;
}

/** Repeated rate-limit violations put an identity in a cool-down: every request refused with HTTP 429. */
export interface CoolDownConfig {
  /** Violations ... Default 50. */
  after: number;
  /** ... within this window ... Default 1m. */
  withinMs: number;
  /** ... refuse the identity for this long. Default 1m. */
  forMs: number;
}

/** Hard bounds on client input and on what one client may hold, checked before anything is parsed further or forwarded. */
export interface LimitsConfig {
  rate: RateLimitsConfig;
  /** In-flight tools/call per identity; 0 = unlimited. Default 64. */
  concurrency: number;
  /** null (config `off`) = never. */
  coolDown: CoolDownConfig | null;
  /** Largest HTTP/WebSocket message body. Default 1 MiB. */
  maxBodyBytes: number;
  /** Deepest nesting of a whole JSON-RPC message, checked by a scan before JSON.parse. Default 64. */
  maxMessageDepth: number;
  /** Open connections in total, across all listeners, including handshakes in progress. Default 1024. */
  maxConnections: number;
  /** Authenticated connections per client identity. Default 64. */
  maxConnectionsPerIdentity: number;
  /**
   * How long a downstream connection may sit without a complete request: one that never sends a byte after its TLS
   * handshake, one idle between keep-alive requests, one whose request headers do not finish. Never cuts a response in
   * progress (an SSE stream). Config `idleTimeout: 10s` (default), 1s to 1h.
   */
  idleTimeoutMs: number;
  /** MCP sessions per client identity (per endpoint). Default 32. */
  maxSessionsPerIdentity: number;
  /** Largest serialized `tools/call` arguments object. Default 256 KiB. */
  maxArgumentBytes: number;
  /** Deepest nesting of objects/arrays in arguments. Default 32. */
  maxDepth: number;
  /** Longest string (value or key) in arguments, in UTF-16 code units. Default 65536. */
  maxStringLength: number;
}

/** Tool pinning (rug-pull defence). */
export interface PinningConfig {
  /** Where pins are kept. Default `pins.json` next to the config file. */
  file: string;
  /** `tofu` (default): pin each tool on first sight. `strict`: only `tools.X.pin` hashes count; unpinned tools are hidden. */
  mode: "tofu" | "strict";
}

/** Decision audit log: hash-chained JSON lines (see audit.ts). */
export interface AuditConfig {
  /** JSON lines appended to this file; absent = stdout. */
  file?: string;
  /** Rotate the file once it would grow beyond this many bytes (file only). Default 100 MiB. */
  maxBytes: number;
  /** Rotated files kept (`FILE.1` newest ... `FILE.<keep>`). Default 10. */
  keep: number;
  /** Hash-chain the records (`prev`, `hash`). Default true; false only for benchmarks. */
  chain: boolean;
}

/** The admin listener: Prometheus `/metrics`, JSON `/status`, `/healthz`. Plain HTTP, loopback only. */
export interface AdminConfig {
  listen: ListenAddress;
}

/** Anomaly alerts: `alert`-level log events, optionally POSTed to a webhook. Counts are per `windowMs`. */
export interface AlertsConfig {
  /** http(s) URL to POST each alert to as JSON. */
  webhook?: string;
  /** Alerts waiting for the webhook; beyond this they are dropped (and counted). Default 1000. */
  queue: number;
  /** Delivery attempts per alert (exponential backoff from `retryMs`). Default 5, 500ms. */
  attempts: number;
  retryMs: number;
  /** The counting window of every threshold below. Default 1m. */
  windowMs: number;
  /** Spike: calls of one identity to one tool in a window > `spikeFactor` × its EWMA baseline and ≥ `spikeMinCalls`. */
  spikeFactor: number;
  spikeMinCalls: number;
  /** EWMA smoothing per window (0..1]. Default 0.3. */
  ewmaAlpha: number;
  /** Authorization/validation failures of one identity per window. Default 20. */
  failures: number;
  /** Failed handshakes from one remote address per window. Default 20. */
  handshakeFailures: number;
  /** Write calls of one identity per window. Default 100. */
  writeBurst: number;
  /** Calls of one identity per window that no rule anticipated; a rate-limit refusal always counts as such. Default none. */
  maxCalls?: number;
  /** First use of a tool by an identity, once the identity has made this many calls (its learning period). Default 100; 0 = off. */
  firstUseAfter: number;
}

/** Revocation checking when `ca:` is set: the live feed plus the signed CRL, polled. */
export interface RevocationConfig {
  /** How often the CRL is fetched; the agent also fetches before the held CRL's nextUpdate. Config: `30s` (default). */
  pollIntervalMs: number;
  /**
   * What to do once no current CRL is held (the CA unreachable past the last CRL's nextUpdate, or never reached):
   * `fail-closed` (default) refuses every new handshake; `serve-with-alert` keeps admitting on the last list and logs
   * an `alert` line.
   */
  onStale: "fail-closed" | "serve-with-alert";
  /** Subscribe to the CA's live revocation feed (wss /v1/watch). Default true. */
  feed: boolean;
}

/** Live reload. SIGHUP always reloads. */
export interface ReloadConfig {
  /** Also reload when the config file, the identity directory or a trust bundle file changes. Default true. */
  watch: boolean;
  /** Changes closer together than this are one reload. Config: `250ms` (default). */
  debounceMs: number;
}

export interface TlsConfig {
  /** Default TLSv1.3; TLSv1.2 is an explicit opt-in for old clients. */
  minVersion: "TLSv1.2" | "TLSv1.3";
}

/**
 * One door into the agent: an mTLS listener address and HTTP path with its own rules. Several endpoints may share a
 * listener (different paths) or use different addresses (e.g. a read-only door on one interface and a stricter admin
 * door on another). The top-level `listen` + `rules` form is the endpoint `default` at `/mcp`.
 */
export interface EndpointConfig {
  /** Unique name, used in logs and audit lines. */
  id: string;
  listen: ListenAddress;
  /** HTTP path of the Streamable HTTP edge. Default `/mcp`. */
  path: string;
  /** Optional narrower identity set: only these patterns may connect to or use this endpoint, whatever the rules say. */
  clients?: string[];
  /** Every allow rule of this endpoint also needs a certificate issued within this long (step-up). */
  stepUpMs?: number;
  rules: RuleConfig[];
}

/** The validated agent configuration, with defaults applied, durations in ms and file paths absolute. */
export interface AgentConfig {
  /** The first endpoint's listen address (the top-level `listen`, or `endpoints[0].listen`). */
  listen: ListenAddress;
  /** Allow wildcard listen addresses (0.0.0.0, ::). Default false: the agent must sit on a chosen interface. */
  listenAnyAddress: boolean;
  /** Every endpoint, the top-level form first (id `default`). Never empty in a valid config. */
  endpoints: EndpointConfig[];
  /** Identity directory (key.pem, cert.pem, ca.pem) written by `mcpmesh enroll`. Absolute. */
  identity: string;
  /** The mesh CA's https URL, for renewal and the revocation feed. Optional. */
  ca?: string;
  /** Extra trust roots (PEM files), e.g. for federated trust domains. Absolute paths. Default []. */
  trustBundles: string[];
  /** Accepted client trust domains. Absent = the agent's own, filled in by the agent before compiling the policy. */
  trustDomains?: string[];
  tls: TlsConfig;
  revocation: RevocationConfig;
  reload: ReloadConfig;
  upstream: UpstreamConfig;
  /** Per exact tool name. A null-prototype record, so names like `constructor` are safe to look up. Default {}. */
  tools: Record<string, ToolDeclaration>;
  /** Use the server's `annotations.readOnlyHint` for undeclared tools (read if true, write otherwise). Default false. */
  trustAnnotations: boolean;
  /** The top-level rules (the `default` endpoint's); [] when only `endpoints` are configured. */
  rules: RuleConfig[];
  /** JSON-RPC methods allowed for every admitted identity beyond the built-in safe list. Default []. */
  methods: string[];
  limits: LimitsConfig;
  pinning: PinningConfig;
  audit: AuditConfig;
  /** Absent = no admin listener and no metrics. */
  admin?: AdminConfig;
  alerts: AlertsConfig;
  /** Directory relative paths were resolved against. */
  baseDir: string;
  /** The file the config came from, when loaded from one. */
  file?: string;
}

export interface ConfigIssue {
  /** Config path in config syntax: `rules[1].effect`, `upstream`, or "" for the document as a whole. */
  path: string;
  message: string;
}

/** A config file or object is invalid. Carries every problem found, not just the first. */
export class ConfigError extends MeshError {
  readonly errors: ConfigIssue[];
  constructor(errors: ConfigIssue[], source?: string) {
    const head = source ? `invalid agent config ${source}` : "invalid agent config";
    const lines = errors.map((e) => `  ${e.path === "" ? "(config)" : e.path}: ${e.message}`);
    super("MCPMESH_CONFIG", `${head} (${errors.length} error${errors.length === 1 ? "" : "s"}):\n${lines.join("\n")}`);
    this.errors = errors;
  }
}

/**
 * Bounds of `limits.idleTimeout`. Below 1 s the server's once-a-second connection sweep cannot keep it; there is no
 * `off`: a connection that is never closed is a slot an idle (or stalled) client keeps forever.
 */
export const MIN_IDLE_TIMEOUT_MS = 1000;
export const MAX_IDLE_TIMEOUT_MS = 3_600_000;

export const DEFAULT_LIMITS: Readonly<LimitsConfig> = Object.freeze({
  maxBodyBytes: 1_048_576,
  maxMessageDepth: 64,
  maxConnections: 1024,
  maxConnectionsPerIdentity: 64,
  idleTimeoutMs: 10_000,
  maxSessionsPerIdentity: 32,
  maxArgumentBytes: 262_144,
  maxDepth: 32,
  maxStringLength: 65_536,
  rate: Object.freeze({ perIdentity: Object.freeze({ limit: 6000, periodMs: 60_000, text: "6000/m" }), perTool: null, perClass: Object.freeze({}) }),
  concurrency: 64,
  coolDown: Object.freeze({ after: 50, withinMs: 60_000, forMs: 60_000 }),
}) as Readonly<LimitsConfig>;
export const DEFAULT_AUDIT = Object.freeze({ maxBytes: 100 * 1_048_576, keep: 10, chain: true });
export const DEFAULT_ALERTS: Readonly<AlertsConfig> = Object.freeze({
  queue: 1000,
  attempts: 5,
  retryMs: 500,
  windowMs: 60_000,
  spikeFactor: 5,
  spikeMinCalls: 30,
  ewmaAlpha: 0.3,
  failures: 20,
  handshakeFailures: 20,
  writeBurst: 100,
  firstUseAfter: 100,
});

/** Parses `N/period`: `100/m`, `3/s`, `10/5m`, `1/250ms`. */
export function parseRate(text: string): RateSpec | string {
  const m = /^\s*(\d+)\s*\/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(text);
  if (!m) return `"${text}" is not a rate (examples: 100/m, 3/s, 10/5m; or off)`;
  const limit = Number(m[1]);
  const periodMs = (m[2] === "" ? 1 : Number(m[2])) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[3] as "s"];
  if (limit < 1) return "the number of calls must be at least 1 (write off to disable)";
  if (!(periodMs >= 1)) return "the period must be at least 1ms";
  return { limit, periodMs, text: text.trim() };
}
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 60_000;
export const DEFAULT_PIN_FILE = "pins.json";
export const DEFAULT_REVOCATION: Readonly<RevocationConfig> = Object.freeze({ pollIntervalMs: 30_000, onStale: "fail-closed", feed: true });
export const DEFAULT_RELOAD: Readonly<ReloadConfig> = Object.freeze({ watch: true, debounceMs: 250 });
export const DEFAULT_ENDPOINT_PATH = "/mcp";

const stringList = (minItems = 1) => ({
  type: "array",
  minItems,
  uniqueItems: true,
  items: { type: "string", minLength: 1 },
});
const accessEnum = { type: "string", enum: ["read", "write"] };
const RULES_SCHEMA = {
  type: "array",
  items: {
    type: "object",
    additionalProperties: false,
    required: ["clients"],
    properties: {
      id: { type: "string", minLength: 1 },
      clients: stringList(1),
      tools: stringList(1),
      access: { type: "array", minItems: 1, uniqueItems: true, items: accessEnum },
      resources: stringList(1),
      prompts: stringList(1),
      arguments: {
        type: "object",
        propertyNames: { minLength: 1 },
        additionalProperties: { type: ["string", "number", "boolean", "null"] },
      },
      stepUp: { type: "string", minLength: 1 },
      rate: { type: "string", minLength: 1 },
      effect: { type: "string", enum: ["allow", "deny"] },
    },
  },
};

// The JSON schema catches shape errors (types, unknown fields, enums); everything that needs parsing or cross-field
// knowledge is in semanticChecks. `x-hint` is our own annotation: the message shown when a `pattern` fails.
// Exported for docs/policy.md's test: every property here is documented there, and nothing else is.
export const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["identity", "upstream"],
  properties: {
    listen: { type: "string", minLength: 1 },
    listenAnyAddress: { type: "boolean" },
    identity: { type: "string", minLength: 1 },
    ca: { type: "string", minLength: 1 },
    trustBundles: stringList(0),
    trustDomains: stringList(1),
    tls: {
      type: "object",
      additionalProperties: false,
      properties: { minVersion: { type: "string", enum: ["TLSv1.3", "TLSv1.2"] } },
    },
    revocation: {
      type: "object",
      additionalProperties: false,
      properties: {
        pollInterval: { type: "string", minLength: 1 },
        onStale: { type: "string", enum: ["fail-closed", "serve-with-alert"] },
        feed: { type: "boolean" },
      },
    },
    reload: {
      type: "object",
      additionalProperties: false,
      properties: {
        watch: { type: "boolean" },
        debounce: { type: "string", minLength: 1 },
      },
    },
    upstream: {
      type: "object",
      additionalProperties: false,
      properties: {
        url: { type: "string", minLength: 1 },
        sse: { type: "string", minLength: 1 },
        command: { type: "array", minItems: 1, items: { type: "string" } },
        env: { type: "object", additionalProperties: { type: "string" } },
        inheritEnv: stringList(1),
        restart: {
          type: "object",
          additionalProperties: false,
          properties: {
            initialDelay: { type: "string", minLength: 1 },
            maxDelay: { type: "string", minLength: 1 },
            maxRestarts: { type: "integer", minimum: 0, maximum: 1000 },
            stableAfter: { type: "string", minLength: 1 },
          },
        },
        cwd: { type: "string", minLength: 1 },
        socket: { type: "string", minLength: 1 },
        unsafeUpstream: { type: "boolean" },
        timeout: { type: "string", minLength: 1 },
      },
    },
    tools: {
      type: "object",
      propertyNames: { minLength: 1 },
      additionalProperties: {
        type: "object",
        additionalProperties: false,
        properties: {
          access: accessEnum,
          schema: { type: ["object", "boolean"] },
          pin: { type: "string", pattern: "^[0-9a-fA-F]{64}$", "x-hint": "must be a sha256 hex digest (64 hex characters)" },
        },
      },
    },
    trustAnnotations: { type: "boolean" },
    rules: RULES_SCHEMA,
    endpoints: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        additionalProperties: false,
        required: ["rules"],
        properties: {
          id: { type: "string", minLength: 1 },
          listen: { type: "string", minLength: 1 },
          path: { type: "string", minLength: 1 },
          clients: stringList(1),
          stepUp: { type: "string", minLength: 1 },
          rules: RULES_SCHEMA,
        },
      },
    },
    methods: stringList(0),
    limits: {
      type: "object",
      additionalProperties: false,
      properties: {
        maxBodyBytes: { type: "integer", minimum: 1 },
        maxMessageDepth: { type: "integer", minimum: 4, maximum: 1024 },
        maxConnections: { type: "integer", minimum: 1 },
        maxConnectionsPerIdentity: { type: "integer", minimum: 1 },
        idleTimeout: { type: "string", minLength: 1 },
        maxSessionsPerIdentity: { type: "integer", minimum: 1 },
        maxArgumentBytes: { type: "integer", minimum: 1 },
        maxDepth: { type: "integer", minimum: 1, maximum: 1024 },
        maxStringLength: { type: "integer", minimum: 1 },
        rate: {
          type: "object",
          additionalProperties: false,
          properties: {
            perIdentity: { type: "string", minLength: 1 },
            perTool: { type: "string", minLength: 1 },
            perClass: {
              type: "object",
              additionalProperties: false,
              properties: { read: { type: "string", minLength: 1 }, write: { type: "string", minLength: 1 }, unknown: { type: "string", minLength: 1 } },
            },
          },
        },
        concurrency: { type: "integer", minimum: 0 },
        coolDown: {
          oneOf: [
            { type: "string", const: "off" },
            {
              type: "object",
              additionalProperties: false,
              required: ["after"],
              properties: { after: { type: "integer", minimum: 1 }, within: { type: "string", minLength: 1 }, for: { type: "string", minLength: 1 } },
            },
          ],
        },
      },
    },
    pinning: {
      type: "object",
      additionalProperties: false,
      properties: {
        file: { type: "string", minLength: 1 },
        mode: { type: "string", enum: ["tofu", "strict"] },
      },
    },
    audit: {
      type: "object",
      additionalProperties: false,
      properties: {
        file: { type: "string", minLength: 1 },
        maxBytes: { type: "integer", minimum: 1024 },
        keep: { type: "integer", minimum: 1, maximum: 1000 },
        chain: { type: "boolean" },
      },
    },
    admin: {
      type: "object",
      additionalProperties: false,
      required: ["listen"],
      properties: { listen: { type: "string", minLength: 1 } },
    },
    alerts: {
      type: "object",
      additionalProperties: false,
      properties: {
        webhook: { type: "string", minLength: 1 },
        queue: { type: "integer", minimum: 1 },
        attempts: { type: "integer", minimum: 1, maximum: 20 },
        retry: { type: "string", minLength: 1 },
        window: { type: "string", minLength: 1 },
        spikeFactor: { type: "number", exclusiveMinimum: 1 },
        spikeMinCalls: { type: "integer", minimum: 1 },
        ewmaAlpha: { type: "number", exclusiveMinimum: 0, maximum: 1 },
        failures: { type: "integer", minimum: 1 },
        handshakeFailures: { type: "integer", minimum: 1 },
        writeBurst: { type: "integer", minimum: 1 },
        maxCalls: { type: "integer", minimum: 1 },
        maxCallsPerMinute: { type: "integer", minimum: 1 },
        firstUseAfter: { type: "integer", minimum: 0 },
      },
    },
  },
} as const;

let validateConfigShape: ValidateFunction | undefined;
function shapeValidator(): ValidateFunction {
  if (!validateConfigShape) {
    const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true, logger: false });
    ajv.addKeyword({ keyword: "x-hint", schemaType: "string" });
    validateConfigShape = ajv.compile(CONFIG_SCHEMA);
  }
  return validateConfigShape;
}

/** Reads and validates an agent config file (YAML or JSON; JSON is parsed as YAML 1.2, which also rejects duplicate keys). */
export function loadAgentConfig(file: string): AgentConfig {
  const path = resolve(file);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "file not found" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "is a directory" : "cannot be read";
    throw new ConfigError([{ path: "", message: `${path}: ${why}` }], path);
  }
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true, strict: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((err) => {
        const pos = err.linePos?.[0];
        const where = pos ? `line ${pos.line}, column ${pos.col}: ` : "";
        return { path: "", message: `${where}${firstLine(err.message).replace(/ at line \d+, column \d+:?$/, "")}` };
      }),
      path,
    );
  }
  const obj: unknown = doc.toJS({ maxAliasCount: 100 });
  return parseAgentConfig(obj, dirname(path), path);
}

function firstLine(s: string): string {
  const i = s.indexOf("\n");
  return i < 0 ? s : s.slice(0, i);
}

/**
 * Validates a config object (already parsed) and returns it normalized. Throws one ConfigError listing every problem.
 * `baseDir` anchors relative paths; `source` only names the origin in the error message.
 */
export function parseAgentConfig(obj: unknown, baseDir: string, source?: string): AgentConfig {
  const errors: ConfigIssue[] = [];
  const seen = new Set<string>();
  const add = (path: string, message: string) => {
    const key = `${path}\u0000${message}`;
    if (!seen.has(key)) {
      seen.add(key);
      errors.push({ path, message });
    }
  };

  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new ConfigError([{ path: "", message: "must be a mapping of settings (listen, identity, upstream, rules, ...)" }], source);
  }
  const validate = shapeValidator();
  if (!validate(obj)) {
    for (const err of validate.errors ?? []) {
      const issue = describeAjvError(err, obj);
      if (issue) add(issue.path, issue.message);
    }
  }
  const cfg = semanticChecks(obj as Record<string, unknown>, resolve(baseDir), add);
  if (errors.length > 0) throw new ConfigError(sortIssues(errors), source);
  if (source) cfg.file = source;
  return cfg;
}

const FIELD_ORDER = Object.keys(CONFIG_SCHEMA.properties);

/** Orders issues as the config reads (top-level field, then list index), keeping the order found within each. */
function sortIssues(errors: ConfigIssue[]): ConfigIssue[] {
  const rank = (p: string): [number, number] => {
    const m = /^([^.[]*)(?:\[(\d+)\])?/.exec(p)!;
    const top = FIELD_ORDER.indexOf(m[1]);
    return [p === "" ? -1 : top < 0 ? FIELD_ORDER.length : top, m[2] === undefined ? -1 : Number(m[2])];
  };
  return errors
    .map((e, i) => ({ e, i, r: rank(e.path) }))
    .sort((a, b) => a.r[0] - b.r[0] || a.r[1] - b.r[1] || a.i - b.i)
    .map((x) => x.e);
}

// ---------------------------------------------------------------------------------------------------------------------
// ajv error → config-path message

/** Renders a JSON pointer in config syntax, using the data to tell array indexes from keys that look like numbers. */
export function configPath(pointer: string, root: unknown): string {
  if (pointer === "") return "";
  const segs = pointer.split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
  let out = "";
  let node: unknown = root;
  for (const seg of segs) {
    out = appendPath(out, seg, Array.isArray(node));
    node = node !== null && typeof node === "object" ? (node as Record<string, unknown>)[seg] : undefined;
  }
  return out;
}

function appendPath(base: string, key: string | number, isIndex: boolean): string {
  if (isIndex || typeof key === "number") return `${base}[${key}]`;
  if (/^[A-Za-z_$][\w$-]*$/.test(key)) return base === "" ? key : `${base}.${key}`;
  return `${base}[${JSON.stringify(key)}]`;
}

const TYPE_WORDS: Record<string, string> = {
  string: "a string",
  number: "a number",
  integer: "an integer",
  boolean: "a boolean (true or false)",
  object: "a mapping",
  array: "a list",
  null: "null",
};

function describeAjvError(err: ErrorObject, root: unknown): ConfigIssue | null {
  const base = configPath(err.instancePath, root);
  const p = err.params as Record<string, unknown>;
  const parent = err.parentSchema as Record<string, unknown> | undefined;
  if (err.propertyName !== undefined) {
    return { path: appendPath(base, err.propertyName, false), message: "name must not be empty" };
  }
  switch (err.keyword) {
    case "propertyNames":
      return null; // reported through the nested error, which names the offending key
    case "additionalProperties": {
      const key = String(p.additionalProperty);
      const known = Object.keys((parent?.properties as Record<string, unknown> | undefined) ?? {});
      const guess = closest(key, known);
      const hint = guess ? ` (did you mean "${guess}"?)` : known.length > 0 ? ` (known fields: ${known.join(", ")})` : "";
      return { path: appendPath(base, key, false), message: `unknown field${hint}` };
    }
    case "required":
      return { path: appendPath(base, String(p.missingProperty), false), message: "is required" };
    case "type": {
      const types = String(p.type).split(",");
      const words = types.map((t) => TYPE_WORDS[t] ?? t);
      const list = words.length === 1 ? words[0] : `${words.slice(0, -1).join(", ")} or ${words[words.length - 1]}`;
      return { path: base, message: `must be ${list}` };
    }
    case "enum":
      return { path: base, message: `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(", ")}` };
    case "minItems":
      return { path: base, message: p.limit === 1 ? "must not be empty" : `must have at least ${String(p.limit)} items` };
    case "minLength":
      return { path: base, message: "must not be empty" };
    case "uniqueItems":
      return { path: base, message: `must not contain duplicates (items ${String(p.j)} and ${String(p.i)} are equal)` };
    case "minimum":
      return { path: base, message: `must be at least ${String(p.limit)}` };
    case "maximum":
      return { path: base, message: `must be at most ${String(p.limit)}` };
    case "pattern":
      return { path: base, message: typeof parent?.["x-hint"] === "string" ? parent["x-hint"] : `must match ${String(p.pattern)}` };
    default:
      return { path: base, message: err.message ?? `fails ${err.keyword}` };
  }
}

/** The known name closest to a typo, if it is close enough to be a plausible intent. */
function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 3) return 99;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

// ---------------------------------------------------------------------------------------------------------------------
// semantic checks and normalization
//
// These run even when the shape check failed, so one pass reports everything; each check therefore looks at the
// type of what it reads and silently skips values the shape check has already complained about.

type Add = (path: string, message: string) => void;

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);
const isStr = (v: unknown): v is string => typeof v === "string" && v.length > 0;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter(isStr) : []);

function errMessage(e: unknown): string {
  if (isMeshError(e) && "field" in e) {
    // InvalidArgumentError prefixes the field; the issue carries the path separately.
    const field = String((e as { field: unknown }).field);
    return e.message.startsWith(`${field}: `) ? e.message.slice(field.length + 2) : e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

function duration(v: unknown, path: string, add: Add): number | undefined {
  if (!isStr(v)) return undefined;
  try {
    return parseDuration(v, path);
  } catch (e) {
    add(path, errMessage(e));
    return undefined;
  }
}

/** Parses `host:port` / `[v6]:port`. Exported for the CLI's `--listen` flags. */
export function parseListenAddress(text: string): ListenAddress | string {
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) return "has an unclosed '[' (IPv6 addresses are written [::1]:8443)";
    host = text.slice(1, close);
    if (isIP(host) !== 6) return `"${host}" in brackets is not an IPv6 address`;
    if (text[close + 1] !== ":") return "needs a port: host:port, e.g. [::1]:8443";
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return "needs a port: host:port, e.g. 127.0.0.1:8443";
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) return "IPv6 addresses must be in brackets, e.g. [::1]:8443";
    if (host === "") return "needs a host: host:port, e.g. 127.0.0.1:8443 (the address of the interface clients reach)";
    // inet_aton would read 0.00.0.0, 0x7f.1 or 2130706433 as addresses (0.00.0.0 is the wildcard): numbers must be
    // canonical dotted quads.
    if (isIP(host) === 0 && /^(0x[0-9a-f]+|[0-9.]+)$/i.test(host.split(".").pop() ?? "")) return `"${host}" is not a valid IPv4 address (write it as a dotted quad, e.g. 10.0.0.5)`;
    if (isIP(host) === 0 && !/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(host)) {
      return `"${host}" is not a valid host name or IP address`;
    }
  }
  if (!/^\d{1,5}$/.test(portText)) return portText === "" ? "needs a port after ':'" : `port "${portText}" is not a number`;
  const port = Number(portText);
  if (port > 65535) return `port ${port} is out of range (0-65535)`;
  return { host, port };
}

/** True for addresses that mean "every interface": 0.0.0.0, ::, and their spelled-out forms. */
export function isWildcardHost(host: string): boolean {
  const h = host.toLowerCase();
  if (isIP(h) === 4) return h.split(".").every((o) => Number(o) === 0);
  if (isIP(h) === 6) return /^[0:]+$/.test(h) || /^::ffff:0+\.0+\.0+\.0+$/.test(h);
  return false;
}

/** True for hosts that cannot leave this machine: localhost, 127.0.0.0/8, ::1 (and its IPv4-mapped form). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1).toLowerCase() : hostname.toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || /^::ffff:127\./.test(h) || /^::ffff:7f[0-9a-f]{2}:/.test(h);
  return false;
}

function checkUpstreamUrl(v: unknown, path: string, unsafe: boolean, add: Add): string | undefined {
  if (!isStr(v)) return undefined;
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    add(path, `"${v}" is not a URL (e.g. http://127.0.0.1:3001/mcp)`);
    return undefined;
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    add(path, `must be an http:// or https:// URL, not ${u.protocol}`);
    return undefined;
  }
  if (u.username || u.password) add(path, "must not carry credentials in the URL");
  if (!unsafe && !isLoopbackHost(u.hostname)) {
    add(path, `host "${u.hostname}" is not loopback; the server would be reachable around the agent (set upstream.unsafeUpstream: true if you mean it)`);
  }
  return v;
}

function resolvePath(baseDir: string, p: string): string {
  return isAbsolute(p) ? p : resolve(baseDir, p);
}

const CAPTURE_REF = /\{([A-Za-z_][A-Za-z0-9_]*)\}/g;

function semanticChecks(raw: Record<string, unknown>, baseDir: string, add: Add): AgentConfig {
  // listen (the top-level form; endpoints are checked below, once trust domains are known)
  const anyAddress = raw.listenAnyAddress === true;
  const listenAt = (v: unknown, path: string): ListenAddress | undefined => {
    if (!isStr(v)) return undefined;
    const r = parseListenAddress(v);
    if (typeof r === "string") {
      add(path, r);
      return undefined;
    }
    if (!anyAddress && isWildcardHost(r.host)) {
      add(path, `${r.host} is a wildcard address (every interface); the agent must listen only on the private interface its clients use (set listenAnyAddress: true to override)`);
    }
    return r;
  };
  const topListen = listenAt(raw.listen, "listen");
  // ca
  let ca: string | undefined;
  if (isStr(raw.ca)) {
    try {
      const u = new URL(raw.ca);
      if (u.protocol !== "https:") add("ca", `must be an https:// URL, not ${u.protocol}`);
      else ca = raw.ca;
    } catch {
      add("ca", `"${raw.ca}" is not a URL (e.g. https://127.0.0.1:9443)`);
    }
  }

  // trust domains
  let trustDomains: string[] | undefined;
  if (Array.isArray(raw.trustDomains)) {
    trustDomains = [];
    raw.trustDomains.forEach((td, i) => {
      if (typeof td !== "string") return;
      try {
        trustDomains!.push(validateTrustDomain(td, `trustDomains[${i}]`));
      } catch (e) {
        add(`trustDomains[${i}]`, errMessage(e));
      }
    });
  }

  // tls
  const tlsRaw = isObj(raw.tls) ? raw.tls : {};
  const tls: TlsConfig = { minVersion: tlsRaw.minVersion === "TLSv1.2" ? "TLSv1.2" : "TLSv1.3" };

  // revocation, reload
  const revocation: RevocationConfig = { ...DEFAULT_REVOCATION };
  if (isObj(raw.revocation)) {
    if (raw.ca === undefined) add("revocation", "applies only with ca: (the CA publishes the CRL and the live feed)");
    const poll = duration(raw.revocation.pollInterval, "revocation.pollInterval", add);
    if (poll !== undefined) {
      if (poll < 1000) add("revocation.pollInterval", "must be at least 1s");
      else if (poll > 3_600_000) add("revocation.pollInterval", "must be at most 1h (CRLs are valid for 1h; a longer interval would let them go stale)");
      else revocation.pollIntervalMs = poll;
    }
    if (raw.revocation.onStale === "serve-with-alert") revocation.onStale = "serve-with-alert";
    if (raw.revocation.feed === false) revocation.feed = false;
  }
  const reload: ReloadConfig = { ...DEFAULT_RELOAD };
  if (isObj(raw.reload)) {
    if (raw.reload.watch === false) reload.watch = false;
    const d = duration(raw.reload.debounce, "reload.debounce", add);
    if (d !== undefined) {
      if (d > 60_000) add("reload.debounce", "must be at most 1m");
      else reload.debounceMs = d;
    }
  }

  // upstream
  const up = isObj(raw.upstream) ? raw.upstream : {};
  const unsafe = up.unsafeUpstream === true;
  const upstream: UpstreamConfig = { unsafeUpstream: unsafe, timeoutMs: DEFAULT_UPSTREAM_TIMEOUT_MS, restart: { ...DEFAULT_RESTART } };
  if (isObj(raw.upstream)) {
    const kinds = (["url", "sse", "command"] as const).filter((k) => up[k] !== undefined);
    if (kinds.length !== 1) {
      add("upstream", kinds.length === 0 ? "must have exactly one of url, sse, command" : `must have exactly one of url, sse, command (found ${kinds.join(" and ")})`);
    }
    upstream.url = checkUpstreamUrl(up.url, "upstream.url", unsafe, add);
    upstream.sse = checkUpstreamUrl(up.sse, "upstream.sse", unsafe, add);
    if (Array.isArray(up.command)) {
      if (up.command.length > 0 && up.command[0] === "") add("upstream.command[0]", "the program must not be empty");
      if (up.command.every((c) => typeof c === "string")) upstream.command = [...(up.command as string[])];
    }
    for (const k of ["env", "cwd", "inheritEnv", "restart"] as const) {
      if (up[k] !== undefined && up.command === undefined) add(`upstream.${k}`, "only applies to upstream.command");
    }
    if (isObj(up.env)) {
      const env: Record<string, string> = Object.create(null);
      for (const [k, v] of Object.entries(up.env)) {
        if (typeof v !== "string") continue;
        if (k === "" || k.includes("=") || k.includes("\0")) add(appendPath("upstream.env", k, false), "is not a valid environment variable name");
        else env[k] = v;
      }
      upstream.env = env;
    }
    if (Array.isArray(up.inheritEnv) && up.inheritEnv.every(isStr)) {
      up.inheritEnv.forEach((k, i) => {
        if (!ENV_NAME.test(k)) add(`upstream.inheritEnv[${i}]`, `"${k}" is not an environment variable name (letters, digits, _; not starting with a digit)`);
      });
      upstream.inheritEnv = [...up.inheritEnv];
    }
    if (isObj(up.restart)) {
      const r = upstream.restart;
      const initial = duration(up.restart.initialDelay, "upstream.restart.initialDelay", add);
      if (initial !== undefined) r.initialDelayMs = initial;
      const max = duration(up.restart.maxDelay, "upstream.restart.maxDelay", add);
      if (max !== undefined) {
        if (max > 3_600_000) add("upstream.restart.maxDelay", "must be at most 1h");
        else r.maxDelayMs = max;
      }
      if (r.initialDelayMs > r.maxDelayMs) add("upstream.restart.initialDelay", `must not exceed upstream.restart.maxDelay (${formatDuration(r.maxDelayMs)})`);
      const stable = duration(up.restart.stableAfter, "upstream.restart.stableAfter", add);
      if (stable !== undefined) {
        if (stable < 100) add("upstream.restart.stableAfter", "must be at least 100ms (a child must stay up that long to count as recovered)");
        else r.stableAfterMs = stable;
      }
      if (typeof up.restart.maxRestarts === "number" && Number.isInteger(up.restart.maxRestarts)) r.maxRestarts = up.restart.maxRestarts;
    }
    if (isStr(up.cwd)) upstream.cwd = resolvePath(baseDir, up.cwd);
    if (isStr(up.socket)) {
      if (up.url === undefined && up.sse === undefined) add("upstream.socket", "only applies to upstream.url or upstream.sse");
      upstream.socket = resolvePath(baseDir, up.socket);
    }
    const t = duration(up.timeout, "upstream.timeout", add);
    if (t !== undefined) upstream.timeoutMs = t;
  }

  // tools
  const tools: Record<string, ToolDeclaration> = Object.create(null);
  if (isObj(raw.tools)) {
    for (const [name, decl] of Object.entries(raw.tools)) {
      if (!isObj(decl)) continue;
      const path = appendPath("tools", name, false);
      const out: ToolDeclaration = {};
      if (decl.access === "read" || decl.access === "write") out.access = decl.access;
      if (typeof decl.pin === "string" && /^[0-9a-fA-F]{64}$/.test(decl.pin)) out.pin = decl.pin.toLowerCase();
      if (isObj(decl.schema) || typeof decl.schema === "boolean") {
        const problem = overlaySchemaError(decl.schema);
        if (problem) add(`${path}.schema`, problem);
        else out.schema = decl.schema;
      }
      tools[name] = out;
    }
  }

  // rules and endpoints
  const checkRules = (list: unknown, at: string): RuleConfig[] => {
    const out: RuleConfig[] = [];
    const ids = new Map<string, number>();
    if (Array.isArray(list)) {
      list.forEach((r, i) => {
        if (!isObj(r)) return;
        const rule = checkRule(r, i, trustDomains, add, at);
        if (ids.has(rule.id)) add(`${at}[${i}].id`, `"${rule.id}" is already used by ${at}[${ids.get(rule.id)}]`);
        else ids.set(rule.id, i);
        out.push(rule);
      });
    }
    return out;
  };
  const rules = checkRules(raw.rules, "rules");
  const endpoints: EndpointConfig[] = [];
  const endpointPaths: string[] = [];
  const hasEndpoints = Array.isArray(raw.endpoints);
  if (raw.listen === undefined && !hasEndpoints) add("listen", "is required (or configure endpoints)");
  if (raw.rules === undefined && !hasEndpoints) add("rules", "is required (or configure endpoints)");
  if (raw.rules !== undefined && raw.listen === undefined) add("rules", "top-level rules need a top-level listen (or move them into endpoints)");
  if (raw.listen !== undefined && raw.rules === undefined && !hasEndpoints) add("rules", "is required");
  if (topListen && raw.rules !== undefined) {
    endpoints.push({ id: "default", listen: topListen, path: DEFAULT_ENDPOINT_PATH, rules });
    endpointPaths.push("listen");
  }
  if (hasEndpoints) {
    (raw.endpoints as unknown[]).forEach((e, i) => {
      if (!isObj(e)) return;
      const at = `endpoints[${i}]`;
      const id = isStr(e.id) ? e.id : `endpoint-${i}`;
      const listen = e.listen !== undefined ? listenAt(e.listen, `${at}.listen`) : topListen;
      if (e.listen === undefined && raw.listen === undefined) add(`${at}.listen`, "is required (there is no top-level listen to share)");
      let path = DEFAULT_ENDPOINT_PATH;
      if (isStr(e.path)) {
        if (!/^\/[A-Za-z0-9._~/-]*$/.test(e.path) || e.path.includes("//") || /(^|\/)\.\.?(\/|$)/.test(e.path)) {
          add(`${at}.path`, `"${e.path}" must be an absolute URL path like /admin/mcp (letters, digits, - . _ ~ /)`);
        } else {
          path = e.path;
        }
      }
      const ep: EndpointConfig = { id, listen: listen ?? { host: "127.0.0.1", port: 0 }, path, rules: checkRules(e.rules, `${at}.rules`) };
      if (Array.isArray(e.clients)) {
        ep.clients = [];
        e.clients.forEach((c, j) => {
          if (!isStr(c)) return;
          try {
            compileIdentityPattern(c, `${at}.clients[${j}]`);
            ep.clients!.push(c);
          } catch (err) {
            add(`${at}.clients[${j}]`, errMessage(err));
          }
        });
      }
      const step = duration(e.stepUp, `${at}.stepUp`, add);
      if (step !== undefined) ep.stepUpMs = step;
      endpoints.push(ep);
      endpointPaths.push(at);
    });
  }
  // Endpoints are told apart by listener and path; the same pair twice would make one of them unreachable.
  const seenDoors = new Map<string, string>();
  const seenIds = new Map<string, string>();
  endpoints.forEach((ep, i) => {
    const at = endpointPaths[i];
    if (seenIds.has(ep.id)) add(at === "listen" ? at : `${at}.id`, `endpoint id "${ep.id}" is already used by ${seenIds.get(ep.id)}`);
    else seenIds.set(ep.id, at);
    const door = `${ep.listen.host}|${ep.listen.port}|${ep.path}`;
    if (ep.listen.port !== 0 && seenDoors.has(door)) add(at, `listens on ${ep.listen.host}:${ep.listen.port}${ep.path} like ${seenDoors.get(door)}; give it another listen address or path`);
    else seenDoors.set(door, at);
  });

  // methods
  const methods = strings(raw.methods);
  methods.forEach((m, i) => {
    if (GATED_METHODS.has(m)) add(`methods[${i}]`, `${m} is authorized per call by rules, it cannot be allowed wholesale`);
    else if (/\s/.test(m)) add(`methods[${i}]`, `"${m}" is not a JSON-RPC method name`);
  });

  // limits
  const limits: LimitsConfig = { ...DEFAULT_LIMITS, rate: { ...DEFAULT_LIMITS.rate, perClass: {} }, coolDown: DEFAULT_LIMITS.coolDown ? { ...DEFAULT_LIMITS.coolDown } : null };
  if (isObj(raw.limits)) {
    for (const k of ["maxBodyBytes", "maxArgumentBytes", "maxDepth", "maxStringLength", "maxMessageDepth", "maxConnections", "maxConnectionsPerIdentity", "maxSessionsPerIdentity"] as const) {
      const v = raw.limits[k];
      if (typeof v === "number" && Number.isInteger(v) && v >= 1) limits[k] = v;
    }
    if (typeof raw.limits.concurrency === "number" && Number.isInteger(raw.limits.concurrency) && raw.limits.concurrency >= 0) limits.concurrency = raw.limits.concurrency;
    const rate = isObj(raw.limits.rate) ? raw.limits.rate : {};
    for (const k of ["perIdentity", "perTool"] as const) {
      if (rate[k] !== undefined) limits.rate[k] = rateOrOff(rate[k], `limits.rate.${k}`, add);
    }
    if (isObj(rate.perClass)) {
      for (const c of ["read", "write", "unknown"] as const) {
        const r = rateOrOff(rate.perClass[c], `limits.rate.perClass.${c}`, add);
        if (r) limits.rate.perClass[c] = r;
      }
    }
    const cd = raw.limits.coolDown;
    if (cd === "off") limits.coolDown = null;
    else if (isObj(cd)) {
      const c = { ...DEFAULT_LIMITS.coolDown! };
      if (typeof cd.after === "number" && Number.isInteger(cd.after) && cd.after >= 1) c.after = cd.after;
      const w = duration(cd.within, "limits.coolDown.within", add);
      if (w !== undefined) c.withinMs = w;
      const f = duration(cd.for, "limits.coolDown.for", add);
      if (f !== undefined) c.forMs = f;
      limits.coolDown = c;
    }
    const idle = raw.limits.idleTimeout === "off" ? void add("limits.idleTimeout", `cannot be off (an idle connection would hold its slot forever): use a duration up to ${formatDuration(MAX_IDLE_TIMEOUT_MS)}`) : duration(raw.limits.idleTimeout, "limits.idleTimeout", add);
    if (idle !== undefined) {
      if (idle < MIN_IDLE_TIMEOUT_MS || idle > MAX_IDLE_TIMEOUT_MS) {
        add("limits.idleTimeout", `${formatDuration(idle)} is out of range: use a duration from ${formatDuration(MIN_IDLE_TIMEOUT_MS)} to ${formatDuration(MAX_IDLE_TIMEOUT_MS)} (default ${formatDuration(DEFAULT_LIMITS.idleTimeoutMs)})`);
      } else limits.idleTimeoutMs = idle;
    }
    if (limits.maxArgumentBytes > limits.maxBodyBytes) {
      add("limits.maxArgumentBytes", `(${limits.maxArgumentBytes}) is larger than limits.maxBodyBytes (${limits.maxBodyBytes}), so it could never apply`);
    }
  }

  // pinning, audit
  const pin = isObj(raw.pinning) ? raw.pinning : {};
  const pinning: PinningConfig = {
    file: resolvePath(baseDir, isStr(pin.file) ? pin.file : DEFAULT_PIN_FILE),
    mode: pin.mode === "strict" ? "strict" : "tofu",
  };
  const auditRaw = isObj(raw.audit) ? raw.audit : {};
  const audit: AuditConfig = { ...DEFAULT_AUDIT };
  if (isStr(auditRaw.file)) audit.file = resolvePath(baseDir, auditRaw.file);
  if (typeof auditRaw.maxBytes === "number" && Number.isInteger(auditRaw.maxBytes) && auditRaw.maxBytes >= 1024) audit.maxBytes = auditRaw.maxBytes;
  if (typeof auditRaw.keep === "number" && Number.isInteger(auditRaw.keep) && auditRaw.keep >= 1) audit.keep = auditRaw.keep;
  if (auditRaw.chain === false) audit.chain = false;
  if ((auditRaw.maxBytes !== undefined || auditRaw.keep !== undefined) && !isStr(auditRaw.file)) add("audit.maxBytes", "rotation needs audit.file (stdout is not rotated)");

  // admin
  let admin: AdminConfig | undefined;
  if (isObj(raw.admin) && isStr(raw.admin.listen)) {
    const r = parseListenAddress(raw.admin.listen);
    if (typeof r === "string") add("admin.listen", r);
    else if (!isLoopbackHost(r.host)) add("admin.listen", `"${r.host}" is not loopback; the admin listener (metrics, status) serves plain HTTP and must stay on this machine (e.g. 127.0.0.1:9100)`);
    else if (r.port !== 0 && endpoints.some((e) => e.listen.host === r.host && e.listen.port === r.port)) add("admin.listen", "must differ from every endpoint's listen address");
    else admin = { listen: r };
  }

  // alerts
  const alerts = checkAlerts(raw.alerts, add);

  const cfg: AgentConfig = {
    listen: endpoints[0]?.listen ?? topListen ?? { host: "127.0.0.1", port: 0 },
    listenAnyAddress: anyAddress,
    endpoints,
    identity: isStr(raw.identity) ? resolvePath(baseDir, raw.identity) : "",
    trustBundles: strings(raw.trustBundles).map((p) => resolvePath(baseDir, p)),
    tls,
    revocation,
    reload,
    upstream,
    tools,
    trustAnnotations: raw.trustAnnotations === true,
    rules,
    methods,
    limits,
    pinning,
    audit,
    alerts,
    baseDir,
  };
  if (admin !== undefined) cfg.admin = admin;
  if (ca !== undefined) cfg.ca = ca;
  if (trustDomains !== undefined) cfg.trustDomains = trustDomains;
  return cfg;
}

function rateOrOff(v: unknown, path: string, add: Add): RateSpec | null {
  if (!isStr(v) || v.trim() === "off") return null;
  const r = parseRate(v);
  if (typeof r === "string") {
    add(path, r);
    return null;
  }
  return r;
}

function checkAlerts(v: unknown, add: Add): AlertsConfig {
  const a: AlertsConfig = { ...DEFAULT_ALERTS };
  if (!isObj(v)) return a;
  const int = (k: keyof AlertsConfig, min: number) => {
    const x = v[k];
    if (typeof x === "number" && Number.isInteger(x) && x >= min) (a as any)[k] = x;
  };
  for (const k of ["queue", "attempts", "spikeMinCalls", "failures", "handshakeFailures", "writeBurst", "maxCalls"] as const) int(k, 1);
  int("firstUseAfter", 0);
  if (typeof v.spikeFactor === "number" && v.spikeFactor > 1) a.spikeFactor = v.spikeFactor;
  if (typeof v.ewmaAlpha === "number" && v.ewmaAlpha > 0 && v.ewmaAlpha <= 1) a.ewmaAlpha = v.ewmaAlpha;
  const w = duration(v.window, "alerts.window", add);
  if (w !== undefined) a.windowMs = w;
  const r = duration(v.retry, "alerts.retry", add);
  if (r !== undefined) a.retryMs = r;
  if (typeof v.maxCallsPerMinute === "number" && Number.isInteger(v.maxCallsPerMinute) && v.maxCallsPerMinute >= 1) {
    if (v.maxCalls !== undefined) add("alerts.maxCallsPerMinute", "give either maxCalls (per window) or maxCallsPerMinute, not both");
    else a.maxCalls = Math.max(1, Math.round((v.maxCallsPerMinute * a.windowMs) / 60_000));
  }
  if (isStr(v.webhook)) {
    try {
      const u = new URL(v.webhook);
      if (u.protocol !== "http:" && u.protocol !== "https:") add("alerts.webhook", `must be an http:// or https:// URL, not ${u.protocol}`);
      else if (u.username || u.password) add("alerts.webhook", "must not carry credentials in the URL");
      else a.webhook = v.webhook;
    } catch {
      add("alerts.webhook", `"${v.webhook}" is not a URL`);
    }
  }
  return a;
}

function checkRule(r: Record<string, unknown>, i: number, trustDomains: string[] | undefined, add: Add, list = "rules"): RuleConfig {
  const at = `${list}[${i}]`;
  const effect = r.effect === "deny" ? "deny" : "allow";
  const rule: RuleConfig = { id: isStr(r.id) ? r.id : at, clients: strings(r.clients), effect };

  // A caller may match any one of the patterns, so a reference is only meaningful if every pattern captures it.
  const captureSets: { j: number; names: Set<string> }[] = [];
  if (Array.isArray(r.clients)) {
    r.clients.forEach((c, j) => {
      if (typeof c !== "string" || c === "") return;
      let compiled: CompiledIdentityPattern;
      try {
        compiled = compileIdentityPattern(c, `${at}.clients[${j}]`);
      } catch (e) {
        add(`${at}.clients[${j}]`, errMessage(e));
        return;
      }
      if (trustDomains && compiled.trustDomain !== undefined && !trustDomains.includes(compiled.trustDomain)) {
        add(`${at}.clients[${j}]`, `trust domain "${compiled.trustDomain}" is not in trustDomains, so this pattern can never match`);
      }
      captureSets.push({ j, names: new Set(compiled.captures) });
    });
  }

  for (const key of ["tools", "prompts"] as const) {
    const list = strings(r[key]);
    list.forEach((g, j) => {
      try {
        compileNameGlob([g], `${at}.${key}[${j}]`);
      } catch (e) {
        add(`${at}.${key}[${j}]`, errMessage(e));
      }
    });
    if (Array.isArray(r[key])) rule[key] = list;
  }
  const resources = strings(r.resources);
  resources.forEach((g, j) => {
    try {
      compileUriGlob([g], `${at}.resources[${j}]`);
    } catch (e) {
      add(`${at}.resources[${j}]`, errMessage(e));
    }
  });
  if (Array.isArray(r.resources)) rule.resources = resources;
  if (Array.isArray(r.access)) rule.access = r.access.filter((a): a is AccessClass => a === "read" || a === "write");

  const hasToolTarget = r.tools !== undefined || r.access !== undefined;
  const hasTarget = hasToolTarget || r.resources !== undefined || r.prompts !== undefined;
  if (!hasTarget && effect === "allow") {
    add(at, "an allow rule must name what it allows: at least one of tools, access, resources, prompts");
  }

  if (r.arguments !== undefined) {
    if (!hasToolTarget) add(`${at}.arguments`, "constrains tools/call arguments, so the rule needs tools or access");
    if (r.resources !== undefined || r.prompts !== undefined) {
      add(`${at}.arguments`, "applies to tool calls only; put resources and prompts in a separate rule");
    }
  }
  if (isObj(r.arguments)) {
    const args: Record<string, ArgumentConstraint> = Object.create(null);
    for (const [k, v] of Object.entries(r.arguments)) {
      if (v !== null && !["string", "number", "boolean"].includes(typeof v)) continue;
      const path = appendPath(`${at}.arguments`, k, false);
      if (typeof v === "string") {
        for (const m of v.matchAll(CAPTURE_REF)) {
          const name = m[1];
          const without = captureSets.find((s) => !s.names.has(name));
          if (without) add(path, `{${name}} is not captured by every clients pattern (${at}.clients[${without.j}] has no {${name}})`);
        }
      }
      if (typeof v === "number" && !Number.isFinite(v)) add(path, "must be a finite number");
      args[k] = v as ArgumentConstraint;
    }
    rule.arguments = args;
  }

  if (r.stepUp !== undefined) {
    if (effect === "deny") add(`${at}.stepUp`, "only applies to allow rules (a deny needs no fresh certificate)");
    const ms = duration(r.stepUp, `${at}.stepUp`, add);
    if (ms !== undefined && effect === "allow") rule.stepUpMs = ms;
  }
  if (r.rate !== undefined) {
    if (effect === "deny") add(`${at}.rate`, "only applies to allow rules");
    else if (!hasToolTarget) add(`${at}.rate`, "limits tools/call, so the rule needs tools or access");
    const rate = rateOrOff(r.rate, `${at}.rate`, add);
    if (rate && effect === "allow") rule.rate = rate;
  }
  return rule;
}

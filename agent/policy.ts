import { InvalidArgumentError } from "../lib/errors.ts";
import { parseSpiffeId } from "../lib/spiffe.ts";
import { formatDuration } from "../lib/duration.ts";
import type { AgentConfig, ArgumentConstraint, EndpointConfig, RuleConfig } from "./config.ts";

/** The authenticated peer of a connection, as the TLS layer saw it. */
export interface Caller {
  /** The peer's SPIFFE ID. */
  id: string;
  /** The client certificate's notBefore, in ms since the epoch (for step-up). */
  notBefore: number;
}

export interface Decision {
  allow: boolean;
  /** The rule that decided; for methods "builtin-methods" or "methods"; null when nothing matched (default deny). */
  rule: string | null;
  /** Precise, for logs only: it may name rules and identities, never argument values. */
  reason: string;
}

/** What the policy needs to know about a tool: its name and the server's (untrusted) annotations. */
export interface ToolInfo {
  name: string;
  annotations?: { readOnlyHint?: boolean; [k: string]: unknown } | null;
}

export type ToolAccess = "read" | "write" | "unknown";

/** Methods that any admitted identity may use: handshake, keep-alive, listings (filtered elsewhere), completion, logging. */
export const BUILTIN_METHODS: ReadonlySet<string> = new Set([
  "initialize",
  "ping",
  "notifications/initialized",
  "notifications/cancelled",
  "notifications/progress",
  "notifications/roots/list_changed",
  "tools/list",
  "resources/list",
  "resources/templates/list",
  "prompts/list",
  "completion/complete",
  "logging/setLevel",
]);

/** Methods whose every call is authorized by rules against its target, never by the method list. */
export const GATED_METHODS: ReadonlySet<string> = new Set([
  "tools/call",
  "resources/read",
  "resources/subscribe",
  "resources/unsubscribe",
  "prompts/get",
]);

// ---------------------------------------------------------------------------------------------------------------------
// patterns

export interface CompiledIdentityPattern {
  /** null = matches every valid identity (the pattern `*`). */
  re: RegExp | null;
  /** Capture names in group order. */
  captures: string[];
  /** The literal trust domain, when the pattern has one (used by config checks). */
  trustDomain?: string;
}

const CAPTURE_SEG = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/;
const TD_CHARS = /^[a-z0-9._*-]+$/;
const SEG_CHARS = /^[A-Za-z0-9._*-]+$/;
const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");

function literalWithStars(seg: string, star: string): string {
  return seg.split("*").map(reEscape).join(star);
}

/**
 * Compiles a SPIFFE identity pattern. The pattern is checked as strictly as the identities it will meet (lib/spiffe.ts),
 * so a pattern that could never match anything (upper-case trust domain, a stray space, an empty segment) is an error
 * rather than a silently dead rule.
 */
export function compileIdentityPattern(pattern: string, field = "clients"): CompiledIdentityPattern {
  if (pattern === "*") return { re: null, captures: [] };
  if (typeof pattern !== "string" || !pattern.startsWith("spiffe://")) {
    throw new InvalidArgumentError(field, `"${String(pattern)}" must be "*" or a spiffe:// pattern like spiffe://example.org/team-a/*`);
  }
  const segs = pattern.slice("spiffe://".length).split("/");
  const td = segs[0];
  const path = segs.slice(1);
  if (td === "") throw new InvalidArgumentError(field, `"${pattern}" has no trust domain`);
  if (path.length === 0 || (path.length === 1 && path[0] === "")) {
    throw new InvalidArgumentError(field, `"${pattern}" has no path; an identity is spiffe://DOMAIN/PATH (use spiffe://${td}/** for the whole trust domain)`);
  }
  const captures: string[] = [];
  const capture = (seg: string): string | null => {
    const m = CAPTURE_SEG.exec(seg);
    if (!m) return null;
    if (captures.includes(m[1])) throw new InvalidArgumentError(field, `"${pattern}" captures {${m[1]}} twice`);
    captures.push(m[1]);
    return "([^/]+)";
  };

  let src = "^spiffe://";
  let literalTd: string | undefined;
  const tdCap = capture(td);
  if (tdCap) src += tdCap;
  else if (td.includes("**")) throw new InvalidArgumentError(field, `"${pattern}": ** cannot stand for a trust domain (use * for any trust domain)`);
  else if (!TD_CHARS.test(td)) {
    throw new InvalidArgumentError(field, `"${pattern}": trust domain "${td}" may only contain lower-case letters, digits, '.', '-', '_' and *`);
  } else {
    src += literalWithStars(td, "[^/]*");
    if (!td.includes("*")) literalTd = td;
  }

  for (let i = 0; i < path.length; i++) {
    const seg = path[i];
    if (seg === "**") {
      if (path[i + 1] === "**") continue; // `**/**` says nothing more than `**`
      src += i === path.length - 1 ? "(?:/[^/]+)+" : "(?:/[^/]+)*";
      continue;
    }
    if (seg === "") throw new InvalidArgumentError(field, `"${pattern}" has an empty path segment`);
    const cap = capture(seg);
    if (cap) {
      src += "/" + cap;
      continue;
    }
    if (seg.includes("{") || seg.includes("}")) {
      throw new InvalidArgumentError(field, `"${pattern}": a capture must be a whole segment named like {tenant}, not "${seg}"`);
    }
    if (seg.includes("**")) throw new InvalidArgumentError(field, `"${pattern}": ** must be a whole path segment, not part of "${seg}"`);
    if (seg === "." || seg === "..") throw new InvalidArgumentError(field, `"${pattern}": "${seg}" is not a valid path segment`);
    if (!SEG_CHARS.test(seg)) {
      throw new InvalidArgumentError(field, `"${pattern}": segment "${seg}" may only contain letters, digits, '.', '-', '_' and *`);
    }
    src += "/" + literalWithStars(seg, "[^/]*");
  }
  const out: CompiledIdentityPattern = { re: new RegExp(src + "$"), captures };
  if (literalTd !== undefined) out.trustDomain = literalTd;
  return out;
}

function checkGlobText(g: string, field: string): void {
  if (typeof g !== "string" || g === "") throw new InvalidArgumentError(field, "must be a non-empty glob");
  if (g.includes("{") || g.includes("}")) {
    throw new InvalidArgumentError(field, `"${g}": captures like {tenant} can only be referenced in arguments`);
  }
}

/** Tool and prompt name globs: `*` is any run of characters, everything else literal. One RegExp for the whole list. */
export function compileNameGlob(globs: string[], field = "tools"): RegExp {
  const alts = globs.map((g, i) => {
    checkGlobText(g, globs.length === 1 ? field : `${field}[${i}]`);
    return literalWithStars(g.replace(/\*{2,}/g, "*"), "[\\s\\S]*");
  });
  return new RegExp(`^(?:${alts.join("|")})$`);
}

/** Resource URI globs: `*` stays within a path segment, `**` crosses segments. */
export function compileUriGlob(globs: string[], field = "resources"): RegExp {
  const alts = globs.map((g, i) => {
    checkGlobText(g, globs.length === 1 ? field : `${field}[${i}]`);
    return g
      .replace(/\*{3,}/g, "**")
      .split("**")
      .map((part) => literalWithStars(part, "[^/]*"))
      .join("[\\s\\S]*");
  });
  return new RegExp(`^(?:${alts.join("|")})$`);
}

// A `**` or `*` must not carry a request out of the directory an operator granted, so URIs that could be resolved to
// somewhere else (dot segments, encoded separators or dots, backslashes) are refused before any glob sees them.
// eslint-disable-next-line no-control-regex
const SUSPICIOUS_URI = /(^|\/)\.\.?(\/|$|[?#])|%2e|%2f|%5c|\\|[\u0000-\u001f\u007f]/i;

// ---------------------------------------------------------------------------------------------------------------------
// compiled rules

type Captures = Record<string, string>;

interface ArgCheck {
  key: string;
  /** Literal value, or a template split into literal text and capture names (odd indexes are names). */
  literal?: ArgumentConstraint;
  template?: string[];
}

interface CompiledRule {
  id: string;
  deny: boolean;
  clients: CompiledIdentityPattern[];
  tools: RegExp | null;
  access: ReadonlySet<string> | null;
  resources: RegExp | null;
  prompts: RegExp | null;
  args: ArgCheck[];
  stepUpMs: number | null;
  /** A deny rule naming no target at all blocks the identity everywhere. */
  blanket: boolean;
}

/** Per identity: for each rule, the captures of every clients pattern that matched (empty = rule not for this caller). */
type IdentityMatch = { valid: true; perRule: Captures[][] } | { valid: false; why: string };

const IDENTITY_CACHE_MAX = 4096;

function compileArgs(args: Record<string, ArgumentConstraint> | undefined): ArgCheck[] {
  if (!args) return [];
  return Object.keys(args).map((key) => {
    const v = args[key];
    if (typeof v === "string" && /\{[A-Za-z_][A-Za-z0-9_]*\}/.test(v)) {
      return { key, template: v.split(/\{([A-Za-z_][A-Za-z0-9_]*)\}/) };
    }
    return { key, literal: v };
  });
}

function compileRule(r: RuleConfig, i: number): CompiledRule {
  const at = `rules[${i}]`;
  const hasTarget = r.tools !== undefined || r.access !== undefined || r.resources !== undefined || r.prompts !== undefined;
  return {
    id: r.id ?? at,
    deny: r.effect === "deny",
    clients: r.clients.map((c, j) => compileIdentityPattern(c, `${at}.clients[${j}]`)),
    tools: r.tools && r.tools.length > 0 ? compileNameGlob(r.tools, `${at}.tools`) : null,
    access: r.access && r.access.length > 0 ? new Set(r.access) : null,
    resources: r.resources && r.resources.length > 0 ? compileUriGlob(r.resources, `${at}.resources`) : null,
    prompts: r.prompts && r.prompts.length > 0 ? compileNameGlob(r.prompts, `${at}.prompts`) : null,
    args: compileArgs(r.arguments),
    stepUpMs: r.effect === "deny" ? null : (r.stepUpMs ?? null),
    blanket: r.effect === "deny" && !hasTarget,
  };
}

const hasOwn = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

/** Does the argument set satisfy every constraint under these captures? Returns the failing key, or null. */
function failedArg(checks: ArgCheck[], caps: Captures, args: unknown): string | null {
  const obj = args !== null && typeof args === "object" && !Array.isArray(args) ? (args as Record<string, unknown>) : null;
  for (const c of checks) {
    if (obj === null || !hasOwn(obj, c.key)) return c.key;
    const actual = obj[c.key];
    if (c.template) {
      let expected = "";
      for (let k = 0; k < c.template.length; k++) {
        if (k % 2 === 0) expected += c.template[k];
        else if (hasOwn(caps, c.template[k])) expected += caps[c.template[k]];
        else return c.key; // the config check makes this unreachable; fail closed anyway
      }
      if (actual !== expected) return c.key;
    } else if (actual !== c.literal) {
      return c.key;
    }
  }
  return null;
}

const ok = (rule: string, reason: string): Decision => ({ allow: true, rule, reason });
const no = (rule: string | null, reason: string): Decision => ({ allow: false, rule, reason });

type Target =
  | { kind: "tool"; name: string; access: ToolAccess }
  | { kind: "resource"; uri: string }
  | { kind: "prompt"; name: string };

export interface PolicyOptions {
  /** Clock for step-up checks (ms since the epoch); tests and `agent check` pin it. */
  now?: () => number;
}

/**
 * The compiled policy. Default deny; an applicable deny beats every allow regardless of order. Every entry point is
 * total: malformed input (a non-string name, an identity that is not a SPIFFE ID) yields a deny, never an exception.
 */
export class Policy {
  private readonly rules: CompiledRule[];
  private readonly access: Map<string, "read" | "write">;
  private readonly trustAnnotations: boolean;
  private readonly methods: ReadonlySet<string>;
  private readonly trustDomains: ReadonlySet<string> | null;
  private readonly cache = new Map<string, IdentityMatch>();
  private readonly now: () => number;
  /** An endpoint's narrower identity set: identities outside it are not valid callers here at all. */
  private readonly restrict: CompiledIdentityPattern[] | null;

  private constructor(cfg: AgentConfig, opts: PolicyOptions, rules: RuleConfig[] = cfg.rules, restrict: string[] | null = null) {
    this.now = opts.now ?? Date.now;
    this.rules = rules.map(compileRule);
    this.restrict = restrict ? restrict.map((c, j) => compileIdentityPattern(c, `clients[${j}]`)) : null;
    this.access = new Map();
    for (const name of Object.keys(cfg.tools)) {
      const a = cfg.tools[name].access;
      if (a) this.access.set(name, a);
    }
    this.trustAnnotations = cfg.trustAnnotations;
    this.methods = new Set(cfg.methods.filter((m) => !GATED_METHODS.has(m)));
    this.trustDomains = cfg.trustDomains && cfg.trustDomains.length > 0 ? new Set(cfg.trustDomains) : null;
  }

  /** Compiles a validated config. Honours `cfg.trustDomains` when set: other trust domains are denied everything. */
  static compile(cfg: AgentConfig, opts: PolicyOptions = {}): Policy {
    return new Policy(cfg, opts);
  }

  /**
   * The policy of one endpoint: its own rules, every allow rule tightened by the endpoint's step-up, and only the
   * endpoint's `clients` (when set) counted as callers at all. Declarations, methods and trust domains are shared.
   */
  static forEndpoint(cfg: AgentConfig, ep: EndpointConfig, opts: PolicyOptions = {}): Policy {
    const rules = ep.stepUpMs === undefined ? ep.rules : ep.rules.map((r) => (r.effect === "deny" ? r : { ...r, stepUpMs: Math.min(r.stepUpMs ?? Infinity, ep.stepUpMs!) }));
    return new Policy(cfg, opts, rules, ep.clients ?? null);
  }

  /** The access class the policy uses for a tool: the operator's declaration, else (if trusted) the server's hint. */
  accessOf(tool: ToolInfo): ToolAccess {
    const name = tool !== null && typeof tool === "object" ? tool.name : undefined;
    if (typeof name !== "string") return "unknown";
    const declared = this.access.get(name);
    if (declared) return declared;
    if (!this.trustAnnotations) return "unknown";
    const ann = tool.annotations;
    return ann !== null && typeof ann === "object" && ann.readOnlyHint === true ? "read" : "write";
  }

  /** Could any allow rule ever apply to this identity? The connection-level gate. */
  admits(identity: string): boolean {
    const m = this.match(identity);
    if (!m.valid) return false;
    let any = false;
    for (let i = 0; i < this.rules.length; i++) {
      if (m.perRule[i].length === 0) continue;
      if (this.rules[i].blanket) return false;
      if (!this.rules[i].deny) any = true;
    }
    return any;
  }

  /** JSON-RPC methods other than the per-target ones (tools/call, resources/*, prompts/get). */
  method(caller: Caller, method: string): Decision {
    if (typeof method !== "string") return no(null, "method name is not a string");
    if (GATED_METHODS.has(method)) return no(null, `${method} is authorized per target, not as a method`);
    const m = this.match(caller?.id);
    if (!m.valid) return no(null, m.why);
    let admitted = false;
    for (let i = 0; i < this.rules.length; i++) {
      if (m.perRule[i].length === 0) continue;
      if (this.rules[i].blanket) return no(this.rules[i].id, `rule "${this.rules[i].id}" denies ${caller.id} everything`);
      if (!this.rules[i].deny) admitted = true;
    }
    if (!admitted) return no(null, `no allow rule names ${caller.id}`);
    if (BUILTIN_METHODS.has(method)) return ok("builtin-methods", `${method} is in the built-in method list`);
    if (this.methods.has(method)) return ok("methods", `${method} is allowed by the config's methods list`);
    return no(null, `method ${method} is not allowed (not built in, not in methods)`);
  }

  /** Authorizes a tools/call. */
  tool(caller: Caller, tool: ToolInfo, args: unknown): Decision {
    const name = tool !== null && typeof tool === "object" ? tool.name : undefined;
    if (typeof name !== "string") return no(null, "tool name is not a string");
    return this.decide(caller, { kind: "tool", name, access: this.accessOf(tool) }, args);
  }

  /** Authorizes resources/read, resources/subscribe and resources/unsubscribe. */
  resource(caller: Caller, uri: string): Decision {
    if (typeof uri !== "string") return no(null, "resource URI is not a string");
    if (SUSPICIOUS_URI.test(uri)) return no(null, "resource URI has dot segments, encoded separators or control characters");
    return this.decide(caller, { kind: "resource", uri }, undefined);
  }

  /** Authorizes prompts/get. */
  prompt(caller: Caller, name: string): Decision {
    if (typeof name !== "string") return no(null, "prompt name is not a string");
    return this.decide(caller, { kind: "prompt", name }, undefined);
  }

  /**
   * May this tool appear in the caller's tools/list? True if some allow rule could admit it (argument constraints and
   * step-up are ignored: the caller can satisfy them per call) and no unconditional deny removes it. Whenever this is
   * false, `tool()` denies every argument set.
   */
  listTool(caller: Caller, tool: ToolInfo): boolean {
    const name = tool !== null && typeof tool === "object" ? tool.name : undefined;
    if (typeof name !== "string") return false;
    const m = this.match(caller?.id);
    if (!m.valid) return false;
    const target: Target = { kind: "tool", name, access: this.accessOf(tool) };
    let allowed = false;
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i];
      if (m.perRule[i].length === 0 || !this.targets(r, target)) continue;
      if (r.deny) {
        if (r.args.length === 0) return false;
      } else {
        allowed = true;
      }
    }
    return allowed;
  }

  private targets(r: CompiledRule, t: Target): boolean {
    if (r.blanket) return true;
    switch (t.kind) {
      case "tool":
        return (r.tools !== null && r.tools.test(t.name)) || (r.access !== null && r.access.has(t.access));
      case "resource":
        return r.resources !== null && r.resources.test(t.uri);
      case "prompt":
        return r.prompts !== null && r.prompts.test(t.name);
    }
  }

  private decide(caller: Caller, target: Target, args: unknown): Decision {
    const m = this.match(caller?.id);
    if (!m.valid) return no(null, m.why);
    const what = target.kind === "resource" ? `resource ${target.uri}` : `${target.kind} ${target.name}`;
    let allowedBy: CompiledRule | null = null;
    let nearMiss = "";
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i];
      const matches = m.perRule[i];
      if (matches.length === 0 || !this.targets(r, target)) continue;
      if (r.deny) {
        // A conditional deny applies if the arguments satisfy its constraints under any pattern the caller matched.
        if (r.args.length === 0 || matches.some((caps) => failedArg(r.args, caps, args) === null)) {
          return no(r.id, `rule "${r.id}" denies ${what} to ${caller.id}`);
        }
        continue;
      }
      if (allowedBy !== null) continue; // still scanning for denies
      let failed: string | null = null;
      if (r.args.length > 0) {
        failed = "";
        for (const caps of matches) {
          failed = failedArg(r.args, caps, args);
          if (failed === null) break;
        }
      }
      if (failed !== null) {
        nearMiss ||= `; rule "${r.id}" did not apply: argument ${JSON.stringify(failed)} does not satisfy its constraint`;
        continue;
      }
      if (r.stepUpMs !== null) {
        const nb = caller.notBefore;
        const age = typeof nb === "number" && Number.isFinite(nb) ? this.now() - nb : Infinity;
        if (!(age <= r.stepUpMs)) {
          const ageText = Number.isFinite(age) ? `${formatDuration(Math.max(0, Math.round(age / 1000)) * 1000)} ago` : "at an unknown time";
          nearMiss ||= `; rule "${r.id}" did not apply: it needs a certificate issued within ${formatDuration(r.stepUpMs)} (this one was issued ${ageText})`;
          continue;
        }
      }
      allowedBy = r;
    }
    if (allowedBy) {
      const cls = target.kind === "tool" ? ` (access ${target.access})` : "";
      return ok(allowedBy.id, `rule "${allowedBy.id}" allows ${what}${cls} to ${caller.id}`);
    }
    return no(null, `no allow rule matched ${what} for ${caller.id} (default deny)${nearMiss}`);
  }

  /** Matches an identity against every rule once, then caches it: a connection makes many calls as one identity. */
  private match(id: unknown): IdentityMatch {
    if (typeof id !== "string") return { valid: false, why: "caller identity is not a string" };
    const hit = this.cache.get(id);
    if (hit) return hit;
    let result: IdentityMatch;
    const parsed = parseSpiffeId(id);
    if (!parsed) {
      result = { valid: false, why: "caller identity is not a valid SPIFFE ID" };
    } else if (this.trustDomains && !this.trustDomains.has(parsed.trustDomain)) {
      result = { valid: false, why: `trust domain ${parsed.trustDomain} is not accepted` };
    } else if (this.restrict && !this.restrict.some((p) => p.re === null || p.re.test(id))) {
      result = { valid: false, why: `${id} is not in this endpoint's clients` };
    } else {
      const perRule = this.rules.map((r) => {
        const found: Captures[] = [];
        for (const p of r.clients) {
          if (p.re === null) {
            found.push(Object.create(null) as Captures);
            continue;
          }
          const mm = p.re.exec(id);
          if (!mm) continue;
          const caps = Object.create(null) as Captures;
          p.captures.forEach((name, k) => (caps[name] = mm[k + 1]));
          found.push(caps);
        }
        return found;
      });
      result = { valid: true, perRule };
    }
    if (this.cache.size >= IDENTITY_CACHE_MAX) this.cache.clear();
    this.cache.set(id, result);
    return result;
  }
}

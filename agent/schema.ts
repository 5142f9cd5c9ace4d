import { createHash } from "node:crypto";
import { Ajv, type ErrorObject, type Options, type ValidateFunction } from "ajv";
import { Ajv2019 } from "ajv/dist/2019.js";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsPlugin from "ajv-formats";
import type { LimitsConfig } from "./config.ts";
import { canonicalJson } from "./pinning.ts";

export type Dialect = "draft-07" | "2019-09" | "2020-12";

/** The first MCP protocol version whose tool schemas default to JSON Schema 2020-12. */
export const SCHEMA_2020_PROTOCOL = "2025-11-25";

const addFormats = addFormatsPlugin as unknown as (ajv: Ajv) => Ajv;

const DIALECT_IDS: ReadonlyMap<string, Dialect> = new Map([
  ["json-schema.org/draft-07/schema", "draft-07"],
  ["json-schema.org/draft/2019-09/schema", "2019-09"],
  ["json-schema.org/draft/2020-12/schema", "2020-12"],
]);

/**
 * The dialect a schema is written in: its `$schema`, else what the negotiated protocol version implies (2020-12 from
 * 2025-11-25 on, draft-07 before). Anything else is an error string: validating with the wrong rules could let
 * through what the author meant to forbid, so unknown dialects fail closed.
 */
export function dialectOf(schema: unknown, protocolVersion?: string, fallback?: Dialect): Dialect | { error: string } {
  const declared = schema !== null && typeof schema === "object" ? (schema as Record<string, unknown>).$schema : undefined;
  if (declared === undefined) {
    if (fallback) return fallback;
    return typeof protocolVersion === "string" && /^\d{4}-\d{2}-\d{2}$/.test(protocolVersion) && protocolVersion >= SCHEMA_2020_PROTOCOL
      ? "2020-12"
      : "draft-07";
  }
  if (typeof declared === "string") {
    const m = /^https?:\/\/(.*?)#?$/.exec(declared);
    const d = m ? DIALECT_IDS.get(m[1]) : undefined;
    if (d) return d;
  }
  const shown = typeof declared === "string" ? JSON.stringify(declared.length > 100 ? declared.slice(0, 100) + "…" : declared) : typeof declared;
  return { error: `unsupported JSON Schema dialect ${shown} (supported: draft-07, 2019-09, 2020-12)` };
}

function makeAjv(dialect: Dialect, opts: Options): Ajv {
  const ajv = dialect === "2020-12" ? new Ajv2020(opts) : dialect === "2019-09" ? new Ajv2019(opts) : new Ajv(opts);
  addFormats(ajv as Ajv);
  return ajv as Ajv;
}

// Servers emit keywords of their own (and of other tools), so their schemas are compiled leniently; the operator's
// overlay is ours, and unknown keywords there are typos that would silently weaken it.
const SERVER_OPTS: Options = {
  strict: false,
  allErrors: true,
  coerceTypes: false,
  useDefaults: false,
  removeAdditional: false,
  logger: false,
  addUsedSchema: false,
  validateFormats: true,
};
const OVERLAY_OPTS: Options = {
  ...SERVER_OPTS,
  strict: false,
  strictSchema: true,
  strictNumbers: true,
  strictTypes: false,
  strictTuples: false,
  strictRequired: false,
};

// Schemas with their own identifiers register them in the Ajv instance; two servers (or two versions of one tool)
// reusing an $id would then clash, so such schemas get an instance of their own.
const SELF_IDENTIFYING = /"(\$id|\$anchor|\$dynamicAnchor|\$recursiveAnchor)":/;

interface Compiled {
  validate: ValidateFunction;
  ajv: Ajv;
  shared: boolean;
  schema: object | boolean;
}

type CompileResult = Compiled | { error: string };

class Compiler {
  private readonly shared = new Map<Dialect, Ajv>();
  constructor(private readonly opts: Options) {}

  compile(schema: object | boolean, dialect: Dialect, canonical: string): CompileResult {
    // $schema selected the instance already; removing it lets draft-07 ids without '#' work like those with.
    let body: object | boolean = schema;
    if (typeof schema === "object" && schema !== null && "$schema" in schema) {
      const { $schema: _drop, ...rest } = schema as Record<string, unknown>;
      body = rest;
    }
    const own = SELF_IDENTIFYING.test(canonical);
    let ajv = own ? undefined : this.shared.get(dialect);
    if (!ajv) {
      ajv = makeAjv(dialect, this.opts);
      if (!own) this.shared.set(dialect, ajv);
    }
    try {
      return { validate: ajv.compile(body), ajv, shared: !own, schema: body };
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      return { error: `schema does not compile (${msg.length > 200 ? msg.slice(0, 200) + "…" : msg})` };
    }
  }

  release(c: Compiled): void {
    if (c.shared) {
      try {
        c.ajv.removeSchema(c.schema as object);
      } catch {
        // Already gone; nothing holds it.
      }
    }
  }
}

const overlayCompiler = new Compiler(OVERLAY_OPTS);

/** Why an operator overlay schema is unusable, or null. Used by the config loader. */
export function overlaySchemaError(schema: unknown): string | null {
  if (typeof schema !== "boolean" && (schema === null || typeof schema !== "object" || Array.isArray(schema))) {
    return "must be a JSON Schema object";
  }
  const d = dialectOf(schema, undefined, "2020-12");
  if (typeof d !== "string") return d.error;
  let canonical: string;
  try {
    canonical = canonicalJson(schema);
  } catch (e) {
    return (e as Error).message;
  }
  const c = overlayCompiler.compile(schema, d, canonical);
  if ("error" in c) return c.error;
  overlayCompiler.release(c);
  return null;
}

/** A tool as far as validation cares. */
export interface ValidatedTool {
  name: string;
  inputSchema?: unknown;
}

export interface ArgumentValidatorOptions {
  /** Compiled validators kept (least recently used are dropped). Default 512. */
  maxEntries?: number;
}

const MAX_ERRORS_SHOWN = 3;

/**
 * Validates tools/call arguments against the tool's own input schema and the operator's overlay. Compiled validators
 * are cached by a hash of (schema, overlay, dialect), so a definition that is listed again as a fresh object reuses its
 * validator, and a changed one can never hit a stale entry.
 */
export class ArgumentValidator {
  private readonly server = new Compiler(SERVER_OPTS);
  private readonly overlay = new Compiler(OVERLAY_OPTS);
  private readonly cache = new Map<string, { server: CompileResult; overlay: CompileResult | null }>();
  private readonly byObject = new WeakMap<object, { key: string; overlay: unknown; dialect: Dialect }>();
  private readonly maxEntries: number;

  constructor(opts: ArgumentValidatorOptions = {}) {
    this.maxEntries = Math.max(1, opts.maxEntries ?? 512);
  }

  /** null if the arguments pass both schemas; else a short reason naming paths, never argument values. */
  validate(tool: ValidatedTool, overlay: unknown, args: unknown, protocolVersion?: string): string | null {
    const schema = tool !== null && typeof tool === "object" ? tool.inputSchema : undefined;
    if (schema === undefined) return "the tool has no input schema";
    if (typeof schema !== "boolean" && (schema === null || typeof schema !== "object" || Array.isArray(schema))) {
      return "the tool's input schema is not a JSON Schema object";
    }
    const dialect = dialectOf(schema, protocolVersion);
    if (typeof dialect !== "string") return `the tool's input schema uses an ${dialect.error}`;
    let overlayDialect: Dialect | undefined;
    if (overlay === null) overlay = undefined;
    if (overlay !== undefined) {
      if (typeof overlay !== "boolean" && (typeof overlay !== "object" || Array.isArray(overlay))) {
        return "the operator's schema is not a JSON Schema object";
      }
      const od = dialectOf(overlay, undefined, "2020-12");
      if (typeof od !== "string") return `the operator's schema uses an ${od.error}`;
      overlayDialect = od;
    }

    // Hot path: the catalog hands us the same schema object on every call, so its key is remembered per object and
    // the canonical JSON + hash is computed once per definition, not once per call.
    const memo = typeof schema === "object" ? this.byObject.get(schema as object) : undefined;
    let key: string;
    let canonicalServer = "";
    let canonicalOverlay = "";
    if (memo && memo.overlay === overlay && memo.dialect === dialect && this.cache.has(memo.key)) {
      key = memo.key;
    } else {
      try {
        canonicalServer = canonicalJson(schema);
        if (overlay !== undefined) canonicalOverlay = canonicalJson(overlay);
      } catch (e) {
        return `the tool's input schema cannot be used: ${(e as Error).message}`;
      }
      key = createHash("sha256")
        .update(`${dialect}\u0000${canonicalServer}\u0000${overlayDialect ?? ""}\u0000${canonicalOverlay}`)
        .digest("base64");
      if (typeof schema === "object") this.byObject.set(schema as object, { key, overlay, dialect });
    }
    let entry = this.cache.get(key);
    if (entry) {
      this.cache.delete(key); // re-insert: Map order is our LRU order
      this.cache.set(key, entry);
    } else {
      entry = {
        server: this.server.compile(schema as object | boolean, dialect, canonicalServer),
        overlay: overlayDialect ? this.overlay.compile(overlay as object | boolean, overlayDialect, canonicalOverlay) : null,
      };
      this.cache.set(key, entry);
      while (this.cache.size > this.maxEntries) {
        const [oldKey, old] = this.cache.entries().next().value as [string, { server: CompileResult; overlay: CompileResult | null }];
        this.cache.delete(oldKey);
        if (!("error" in old.server)) this.server.release(old.server);
        if (old.overlay && !("error" in old.overlay)) this.overlay.release(old.overlay);
      }
    }

    const value = args === undefined ? {} : args;
    if ("error" in entry.server) return `the tool's input schema ${entry.server.error}`;
    const problems: string[] = [];
    if (!entry.server.validate(value)) problems.push(...(entry.server.validate.errors ?? []).map(describe));
    if (entry.overlay) {
      if ("error" in entry.overlay) return `the operator's schema ${entry.overlay.error}`;
      if (!entry.overlay.validate(value)) problems.push(...(entry.overlay.validate.errors ?? []).map(describe));
    }
    return summarize(problems);
  }

  /** Validates against the operator's overlay alone (for `agent check`, where no server schema is at hand). */
  validateOverlay(overlay: unknown, args: unknown): string | null {
    return this.validate({ name: "", inputSchema: true }, overlay, args);
  }

  /** Number of cached validators (for metrics and tests). */
  get size(): number {
    return this.cache.size;
  }
}

function summarize(problems: string[]): string | null {
  const unique = [...new Set(problems)];
  if (unique.length === 0) return null;
  const shown = unique.slice(0, MAX_ERRORS_SHOWN).join("; ");
  return unique.length > MAX_ERRORS_SHOWN ? `${shown} (and ${unique.length - MAX_ERRORS_SHOWN} more)` : shown;
}

const MAX_KEY_SHOWN = 40;

function pathOf(pointer: string, extra?: string): string {
  const segs = pointer === "" ? [] : pointer.split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
  if (extra !== undefined) segs.push(extra);
  let out = "arguments";
  for (const s of segs) {
    if (/^\d+$/.test(s)) out += `[${s}]`;
    else if (/^[A-Za-z_$][\w$-]*$/.test(s) && s.length <= MAX_KEY_SHOWN) out += `.${s}`;
    else out += `[${JSON.stringify(s.length > MAX_KEY_SHOWN ? s.slice(0, MAX_KEY_SHOWN) + "…" : s)}]`;
  }
  return out;
}

// Messages come from the schema (types, limits, patterns), never from the instance: ajv runs without `verbose`, so
// argument values cannot leak into logs or replies through here.
function describe(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case "required":
      return `${pathOf(e.instancePath, String(p.missingProperty))}: is required`;
    case "additionalProperties":
    case "unevaluatedProperties":
      return `${pathOf(e.instancePath, String(p.additionalProperty ?? p.unevaluatedProperty))}: is not allowed`;
    case "enum":
      return `${pathOf(e.instancePath)}: must be one of the allowed values`;
    default:
      return `${pathOf(e.instancePath)}: ${e.message ?? `fails ${e.keyword}`}`;
  }
}

/**
 * Checks size bounds on tools/call arguments before any schema sees them: serialized JSON bytes, nesting depth, and
 * string length (values and keys). Iterative and stops at the first bound crossed, so hostile input (100k levels of
 * nesting, a cyclic object) costs little and cannot overflow the stack. Returns the reason, or null.
 */
export function checkLimits(args: unknown, limits: LimitsConfig): string | null {
  // Each entry: a value and its depth (containers count one level each).
  const stack: { v: unknown; d: number }[] = [{ v: args === undefined ? {} : args, d: 0 }];
  let bytes = 0;
  while (stack.length > 0) {
    const { v, d } = stack.pop()!;
    if (v === null || v === undefined) {
      bytes += 4;
    } else if (typeof v === "string") {
      if (v.length > limits.maxStringLength) return `a string in the arguments is ${v.length} characters long (limit ${limits.maxStringLength})`;
      bytes += jsonStringBytes(v);
    } else if (typeof v === "number") {
      bytes += Number.isFinite(v) ? String(v).length : 4;
    } else if (typeof v === "boolean") {
      bytes += v ? 4 : 5;
    } else if (typeof v === "object") {
      if (d + 1 > limits.maxDepth) return `arguments nest deeper than ${limits.maxDepth} levels`;
      if (Array.isArray(v)) {
        bytes += 2 + Math.max(0, v.length - 1);
        for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], d: d + 1 });
      } else {
        const keys = Object.keys(v);
        bytes += 2 + Math.max(0, keys.length - 1);
        for (const k of keys) {
          if (k.length > limits.maxStringLength) return `a key in the arguments is ${k.length} characters long (limit ${limits.maxStringLength})`;
          bytes += jsonStringBytes(k) + 1;
          stack.push({ v: (v as Record<string, unknown>)[k], d: d + 1 });
        }
      }
    } else {
      return `arguments contain a ${typeof v}, which is not JSON data`;
    }
    if (bytes > limits.maxArgumentBytes) return `arguments exceed ${limits.maxArgumentBytes} bytes`;
  }
  return null;
}

/** UTF-8 length of a string's JSON encoding, without building it for the common all-plain case. */
function jsonStringBytes(s: string): number {
  if (/^[\x20-\x21\x23-\x5b\x5d-\x7e]*$/.test(s)) return s.length + 2;
  return Buffer.byteLength(JSON.stringify(s));
}

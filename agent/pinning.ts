import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { InvalidArgumentError, StateError } from "../lib/errors.ts";
import { writeFileAtomic } from "../lib/files.ts";
import type { AgentConfig } from "./config.ts";

/** A tool definition as a server lists it (only the fields the pin covers are typed). */
export interface Tool {
  name: string;
  title?: string;
  description?: string;
  inputSchema?: unknown;
  annotations?: unknown;
  [k: string]: unknown;
}

export interface BlockedTool {
  name: string;
  /** For logs and `agent tools` output. */
  reason: string;
  /** The definition's current hash ("" if it could not be hashed). */
  hash: string;
  /** The hash it is pinned to, if any. */
  pinned: string | null;
}

export interface PinReview {
  allowed: Tool[];
  blocked: BlockedTool[];
  /** Pins made by this review (tofu). Already persisted when review returns. */
  newPins: { name: string; hash: string }[];
}

export interface PinEntry {
  name: string;
  hash: string;
  pinnedAt: string;
  /** A differing definition seen since, waiting for `approve`. */
  pending?: { hash: string; seenAt: string };
}

export interface PinStoreOptions {
  /** The pin file. Absent = pins live in memory only (tests, `agent check`). */
  file?: string;
  mode: "tofu" | "strict";
  /** Pins from the config (`tools.X.pin`): always win, never written to the file. */
  configPins?: Record<string, string> | Map<string, string>;
  now?: () => number;
}

const HEX64 = /^[0-9a-f]{64}$/;
const MAX_CANONICAL_DEPTH = 256;

/**
 * Canonical JSON: object keys sorted by UTF-16 code units, no whitespace, `undefined` members dropped (as
 * JSON.stringify does), so equal definitions hash equally however a server orders its keys. Depth is bounded, so a
 * hostile definition cannot blow the stack; it throws instead, which callers treat as "block".
 */
export function canonicalJson(value: unknown, maxDepth = MAX_CANONICAL_DEPTH): string {
  const enc = (v: unknown, depth: number): string | undefined => {
    if (v === null) return "null";
    switch (typeof v) {
      case "string":
        return JSON.stringify(v);
      case "number":
        return Number.isFinite(v) ? JSON.stringify(v) : "null";
      case "boolean":
        return v ? "true" : "false";
      case "undefined":
        return undefined;
      case "object": {
        if (depth >= maxDepth) throw new RangeError(`value nests deeper than ${maxDepth} levels`);
        if (Array.isArray(v)) return `[${v.map((x) => enc(x, depth + 1) ?? "null").join(",")}]`;
        const o = v as Record<string, unknown>;
        const parts: string[] = [];
        for (const k of Object.keys(o).sort()) {
          const s = enc(o[k], depth + 1);
          if (s !== undefined) parts.push(`${JSON.stringify(k)}:${s}`);
        }
        return `{${parts.join(",")}}`;
      }
      default:
        throw new TypeError(`${typeof v} is not JSON data`);
    }
  };
  return enc(value, 0) ?? "null";
}

/** sha256 hex over the fields a client model sees and relies on: name, title, description, inputSchema, annotations. */
export function toolHash(tool: Tool): string {
  const view: Record<string, unknown> = {
    name: tool.name,
    description: tool.description,
    inputSchema: tool.inputSchema,
    annotations: tool.annotations,
  };
  if (tool.title !== undefined) view.title = tool.title;
  return createHash("sha256").update(canonicalJson(view)).digest("hex");
}

interface StoredPin {
  hash: string;
  pinnedAt: string;
  pending?: { hash: string; seenAt: string };
}

/**
 * Pins of tool definitions, so a server that silently changes a tool (a "rug pull": new description, wider schema)
 * has that tool blocked until an operator approves the change. The file is re-read when another process (the
 * `agent tools approve` command) has changed it, and every write is atomic.
 */
export class PinStore {
  private readonly file: string | undefined;
  readonly mode: "tofu" | "strict";
  private readonly configPins: Map<string, string>;
  private readonly now: () => number;
  private pins = new Map<string, StoredPin>();
  private stamp = "";

  constructor(opts: PinStoreOptions) {
    this.file = opts.file;
    this.mode = opts.mode;
    this.now = opts.now ?? Date.now;
    const cp = opts.configPins instanceof Map ? [...opts.configPins] : Object.entries(opts.configPins ?? {});
    this.configPins = new Map(cp.map(([k, v]) => [k, v.toLowerCase()]));
    this.refresh();
  }

  /** The store a config describes: its pin file and mode, and its `tools.X.pin` hashes. */
  static fromConfig(cfg: AgentConfig, now?: () => number): PinStore {
    const configPins = new Map<string, string>();
    for (const name of Object.keys(cfg.tools)) {
      const pin = cfg.tools[name].pin;
      if (pin !== undefined) configPins.set(name, pin);
    }
    return new PinStore({ file: cfg.pinning.file, mode: cfg.pinning.mode, configPins, now });
  }

  /** Decides which tools of a listing may be shown and called; pins unseen tools in tofu mode. */
  review(tools: Tool[]): PinReview {
    this.refresh();
    const out: PinReview = { allowed: [], blocked: [], newPins: [] };
    const counts = new Map<string, number>();
    for (const t of tools) {
      if (isNamed(t)) counts.set(t.name, (counts.get(t.name) ?? 0) + 1);
    }
    let dirty = false;
    const stamp = new Date(this.now()).toISOString();
    for (const t of tools) {
      if (!isNamed(t)) {
        out.blocked.push({ name: "", reason: "tool has no name", hash: "", pinned: null });
        continue;
      }
      const name = t.name;
      const configPin = this.configPins.get(name);
      const stored = this.mode === "tofu" ? this.pins.get(name) : undefined;
      const pinned = configPin ?? stored?.hash ?? null;
      let hash: string;
      try {
        hash = toolHash(t);
      } catch (e) {
        out.blocked.push({ name, reason: `definition cannot be hashed: ${(e as Error).message}`, hash: "", pinned });
        continue;
      }
      if ((counts.get(name) ?? 0) > 1) {
        // Which of the two would a client call? Neither is trustworthy, so neither is shown.
        out.blocked.push({ name, reason: "the server lists more than one tool with this name", hash, pinned });
        continue;
      }
      if (configPin !== undefined) {
        if (hash === configPin) out.allowed.push(t);
        else out.blocked.push({ name, reason: `definition does not match the pin in the config (tools.${name}.pin)`, hash, pinned });
        continue;
      }
      if (this.mode === "strict") {
        out.blocked.push({ name, reason: "strict pinning: the config has no pin for this tool", hash, pinned: null });
        continue;
      }
      if (stored === undefined) {
        this.pins.set(name, { hash, pinnedAt: stamp });
        out.newPins.push({ name, hash });
        out.allowed.push(t);
        dirty = true;
      } else if (stored.hash === hash) {
        out.allowed.push(t);
      } else {
        out.blocked.push({
          name,
          reason: `definition changed since it was pinned at ${stored.pinnedAt}; approve with: mcpmesh agent tools approve ${name}`,
          hash,
          pinned: stored.hash,
        });
        if (stored.pending?.hash !== hash) {
          stored.pending = { hash, seenAt: stamp };
          dirty = true;
        }
      }
    }
    if (dirty) this.save();
    return out;
  }

  /**
   * Accepts a tool's definition: `hash` if given, else the changed definition last seen by `review`. Returns the new
   * and the previous pin.
   */
  approve(name: string, hash?: string): { name: string; hash: string; previous: string | null } {
    if (this.configPins.has(name)) {
      throw new InvalidArgumentError("tool", `${name} is pinned in the config (tools.${name}.pin); change the pin there`);
    }
    if (this.mode === "strict") {
      throw new InvalidArgumentError("tool", `strict pinning only trusts config pins; add tools.${name}.pin to the config`);
    }
    this.refresh();
    const stored = this.pins.get(name);
    let target: string;
    if (hash !== undefined) {
      target = hash.toLowerCase();
      if (!HEX64.test(target)) throw new InvalidArgumentError("hash", "must be a sha256 hex digest (64 hex characters)");
    } else if (stored?.pending) {
      target = stored.pending.hash;
    } else {
      throw new InvalidArgumentError("tool", stored ? `${name} has no changed definition waiting for approval` : `no tool named ${name} has been seen`);
    }
    this.pins.set(name, { hash: target, pinnedAt: new Date(this.now()).toISOString() });
    this.save();
    return { name, hash: target, previous: stored?.hash ?? null };
  }

  /** Stored pins (not the config's), for `agent tools` listings. */
  list(): PinEntry[] {
    this.refresh();
    return [...this.pins].map(([name, p]) => ({ name, ...p }));
  }

  private refresh(): void {
    if (this.file === undefined) return;
    let stamp: string;
    try {
      const st = statSync(this.file);
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        if (this.stamp !== "") this.pins = new Map();
        this.stamp = "";
        return;
      }
      throw new StateError(`pin file ${this.file} cannot be read`, { cause: e });
    }
    if (stamp === this.stamp) return;
    let text: string;
    try {
      text = readFileSync(this.file, "utf8");
    } catch (e) {
      throw new StateError(`pin file ${this.file} cannot be read`, { cause: e });
    }
    this.pins = parsePinFile(text, this.file);
    this.stamp = stamp;
  }

  private save(): void {
    if (this.file === undefined) return;
    const tools: Record<string, StoredPin> = {};
    for (const name of [...this.pins.keys()].sort()) {
      // defineProperty, so a tool called "__proto__" is stored as data rather than changing the object's prototype.
      Object.defineProperty(tools, name, { value: this.pins.get(name), enumerable: true, writable: true, configurable: true });
    }
    mkdirSync(dirname(this.file), { recursive: true });
    writeFileAtomic(this.file, JSON.stringify({ version: 1, tools }, null, 2) + "\n");
    const st = statSync(this.file);
    this.stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
  }
}

function isNamed(t: unknown): t is Tool {
  return t !== null && typeof t === "object" && typeof (t as { name?: unknown }).name === "string" && (t as Tool).name !== "";
}

function parsePinFile(text: string, file: string): Map<string, StoredPin> {
  const bad = (why: string): never => {
    throw new StateError(`pin file ${file} is corrupt (${why}); it was left untouched: fix it, or move it away to re-pin every tool`);
  };
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    return bad(`not JSON: ${(e as Error).message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) return bad("not a JSON object");
  const d = data as Record<string, unknown>;
  if (d.version !== 1) return bad(`unsupported version ${JSON.stringify(d.version)}`);
  const tools = d.tools;
  if (tools === null || typeof tools !== "object" || Array.isArray(tools)) return bad('"tools" is not an object');
  const out = new Map<string, StoredPin>();
  for (const [name, v] of Object.entries(tools as Record<string, unknown>)) {
    const e = v as Record<string, unknown> | null;
    if (e === null || typeof e !== "object" || typeof e.hash !== "string" || !HEX64.test(e.hash)) {
      return bad(`tools[${JSON.stringify(name)}].hash is not a sha256 hex digest`);
    }
    const pin: StoredPin = { hash: e.hash, pinnedAt: typeof e.pinnedAt === "string" ? e.pinnedAt : "an unknown time" };
    const p = e.pending as Record<string, unknown> | undefined;
    if (p !== undefined) {
      if (p === null || typeof p !== "object" || typeof p.hash !== "string" || !HEX64.test(p.hash)) {
        return bad(`tools[${JSON.stringify(name)}].pending.hash is not a sha256 hex digest`);
      }
      pin.pending = { hash: p.hash, seenAt: typeof p.seenAt === "string" ? p.seenAt : "" };
    }
    out.set(name, pin);
  }
  return out;
}

import type { Tool } from "./pinning.ts";

/** A request the agent forwarded and whose response it must recognise (for filtering and audit). */
export interface PendingCall {
  method: string;
  at: number;
  /** A later page of a paginated listing (merges into the catalog instead of replacing it). */
  paged?: boolean;
}

/**
 * An MCP session as the agent tracks it. It is bound to the identity that created it: the same session id from any
 * other identity is answered as unknown (404), so a leaked or guessed id is worth nothing.
 */
export interface Session {
  /** The upstream's Mcp-Session-Id, or `~<identity>` for a stateless upstream (one pseudo-session per identity). */
  key: string;
  upstreamId: string | null;
  owner: string;
  protocolVersion: string;
  /** Tools the upstream listed that passed pinning, by name; null until listed (or after list_changed). */
  tools: Map<string, Tool> | null;
  pending: Map<string, PendingCall>;
  createdAt: number;
  lastSeen: number;
  /** Closers of the streams open on this session (SSE, WebSocket), run when the session must end. */
  closers: Set<() => void>;
  /** Run once when the table drops the session (delete, eviction, revocation, idle sweep): message-mode sessions end their upstream channel here. */
  ended?: () => void;
}

export const DEFAULT_PROTOCOL_VERSION = "2025-03-26";

export class SessionTable {
  readonly #sessions = new Map<string, Session>();
  readonly #maxIdleMs: number;

  constructor(opts: { maxIdleMs?: number } = {}) {
    this.#maxIdleMs = opts.maxIdleMs ?? 30 * 60_000;
  }

  create(key: string, upstreamId: string | null, owner: string, protocolVersion: string): Session {
    const now = Date.now();
    const s: Session = { key, upstreamId, owner, protocolVersion, tools: null, pending: new Map(), createdAt: now, lastSeen: now, closers: new Set() };
    this.#sessions.set(key, s);
    return s;
  }

  /** The session if it exists and belongs to `identity`; else null (the caller answers 404 either way). */
  lookup(key: string, identity: string): Session | null {
    const s = this.#sessions.get(key);
    if (!s || s.owner !== identity) return null;
    s.lastSeen = Date.now();
    return s;
  }

  /** Whether the key exists under another owner, for the audit line only (never for the reply). */
  ownedByOther(key: string, identity: string): boolean {
    const s = this.#sessions.get(key);
    return s !== undefined && s.owner !== identity;
  }

  /** Sessions an identity holds (for the per-identity cap). */
  countOwned(identity: string): number {
    let n = 0;
    for (const s of this.#sessions.values()) if (s.owner === identity) n++;
    return n;
  }

  /** The identity's least recently used session with no open stream, if any. */
  oldestIdle(identity: string): Session | null {
    let best: Session | null = null;
    for (const s of this.#sessions.values()) {
      if (s.owner === identity && s.closers.size === 0 && (best === null || s.lastSeen < best.lastSeen)) best = s;
    }
    return best;
  }

  /** The stateless pseudo-session of an identity, created on first use. */
  stateless(identity: string, protocolVersion: string): Session {
    const key = `~${identity}`;
    return this.#sessions.get(key) ?? this.create(key, null, identity, protocolVersion);
  }

  /** Registers a session object created before its id was known (initialize), under the upstream's id. */
  adopt(s: Session, key: string, upstreamId: string | null): Session {
    s.key = key;
    s.upstreamId = upstreamId;
    const existing = this.#sessions.get(key);
    if (existing && existing.owner !== s.owner) throw new Error("session id collision across identities");
    this.#sessions.set(key, s);
    return s;
  }

  /** A session object not yet in the table (the initialize exchange decides its id). */
  provisional(owner: string, protocolVersion: string): Session {
    const now = Date.now();
    return { key: "", upstreamId: null, owner, protocolVersion, tools: null, pending: new Map(), createdAt: now, lastSeen: now, closers: new Set() };
  }

  delete(key: string): void {
    const s = this.#sessions.get(key);
    if (!s) return;
    this.#sessions.delete(key);
    for (const close of s.closers) close();
    s.ended?.();
  }

  /** Ends every session of an identity (revocation, expiry). */
  closeIdentity(identity: string): number {
    let n = 0;
    for (const s of [...this.#sessions.values()]) {
      if (s.owner === identity) {
        this.delete(s.key);
        n++;
      }
    }
    return n;
  }

  sweep(now = Date.now()): void {
    for (const s of [...this.#sessions.values()]) if (now - s.lastSeen > this.#maxIdleMs && s.closers.size === 0) this.delete(s.key);
  }

  get size(): number {
    return this.#sessions.size;
  }

  all(): IterableIterator<Session> {
    return this.#sessions.values();
  }
}

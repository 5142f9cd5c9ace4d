import { chmodSync } from "node:fs";
import Database from "better-sqlite3";
import { StateError } from "../lib/errors.ts";
import { CaUnavailableError } from "./errors.ts";

export type CertKind = "client" | "agent" | "server";

export interface TokenRecord {
  hash: string;
  identity: string;
  kind: CertKind;
  certTtlMs: number;
  dns: string[];
  ips: string[];
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
}

export interface CertRecord {
  serial: string;
  identity: string;
  kind: CertKind;
  notBefore: number;
  notAfter: number;
  ttlMs: number;
  dns: string[];
  ips: string[];
  pem: string;
  issuedAt: number;
  via: "enroll" | "renew" | "server";
  parentSerial: string | null;
  revokedAt: number | null;
  reason: string | null;
}

export interface RevocationEvent {
  id: number;
  serial: string;
  identity: string;
  kind: CertKind;
  at: number;
  reason: string | null;
}

export interface CaEvent {
  id: number;
  at: number;
  type: string;
  identity: string | null;
  serial: string | null;
  detail: Record<string, unknown>;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  hash TEXT PRIMARY KEY, identity TEXT NOT NULL, kind TEXT NOT NULL, cert_ttl_ms INTEGER NOT NULL,
  dns TEXT NOT NULL, ips TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  used_at INTEGER, used_serial TEXT);
CREATE TABLE IF NOT EXISTS certs (
  serial TEXT PRIMARY KEY, identity TEXT NOT NULL, kind TEXT NOT NULL, not_before INTEGER NOT NULL,
  not_after INTEGER NOT NULL, ttl_ms INTEGER NOT NULL, dns TEXT NOT NULL, ips TEXT NOT NULL, pem TEXT NOT NULL,
  issued_at INTEGER NOT NULL, via TEXT NOT NULL, parent_serial TEXT, revoked_at INTEGER, reason TEXT);
CREATE INDEX IF NOT EXISTS certs_identity ON certs(identity);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, type TEXT NOT NULL, identity TEXT, serial TEXT,
  detail TEXT NOT NULL);
-- The live feed asks "revocations after event N" every 150 ms; without this it scans every issuance's event.
CREATE INDEX IF NOT EXISTS events_type_id ON events(type, id);
`;

type Row = Record<string, any>;

/** How long queued commits wait at most for announced issuances (CaStore.intent) to join their transaction. */
const GROUP_WAIT_MS = 10;

/**
 * better-sqlite3 12 on Node 24 can abort the process (`RemoveEnvironmentCleanupHook: (env) != nullptr`) when a
 * Statement is garbage-collected while Node tears its environment down. Statements are therefore prepared once per
 * store and kept reachable for the life of the process, so their destructors never run at an unlucky moment.
 */
const RETAINED: unknown[] = [];
export function retainSqlite<T>(o: T): T {
  RETAINED.push(o);
  return o;
}

function certFromRow(r: Row): CertRecord {
  return {
    serial: r.serial, identity: r.identity, kind: r.kind, notBefore: r.not_before, notAfter: r.not_after,
    ttlMs: r.ttl_ms, dns: JSON.parse(r.dns), ips: JSON.parse(r.ips), pem: r.pem, issuedAt: r.issued_at, via: r.via,
    parentSerial: r.parent_serial, revokedAt: r.revoked_at, reason: r.reason,
  };
}

/**
 * The CA's database: SQLite in WAL mode with synchronous=FULL, so a certificate that was returned to a caller is on
 * disk even if the process is killed right after. Every state change runs in one transaction.
 */
export class CaStore {
  readonly #db: Database.Database;
  readonly #statements = new Map<string, Database.Statement>();

  readonly #groupWaitMs: number;

  private constructor(db: Database.Database, groupWaitMs: number) {
    this.#db = db;
    this.#groupWaitMs = groupWaitMs;
  }

  #s(sql: string): Database.Statement {
    let st = this.#statements.get(sql);
    if (!st) this.#statements.set(sql, (st = retainSqlite(this.#db.prepare(sql))));
    return st;
  }

  /** `groupWaitMs`: see intent(); tests set it to make the wait observable. */
  static open(path: string, opts: { create?: boolean; groupWaitMs?: number } = {}): CaStore {
    let db: Database.Database | undefined;
    try {
      db = retainSqlite(new Database(path, { fileMustExist: !opts.create }));
      db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;");
      const check = retainSqlite(db.prepare("PRAGMA quick_check")).pluck().get();
      if (check !== "ok") throw new Error(`quick_check: ${String(check)}`);
      db.exec(SCHEMA);
      // The database holds token hashes and the issuance record: owner-only, like the keys.
      for (const f of [path, `${path}-wal`, `${path}-shm`]) {
        try { chmodSync(f, 0o600); } catch { /* -wal/-shm may not exist yet */ }
      }
      return new CaStore(db, opts.groupWaitMs ?? GROUP_WAIT_MS);
    } catch (e) {
      try { db?.close(); } catch { /* closing a broken handle */ }
      throw new StateError(`the CA database ${path} cannot be opened (corrupt or not a database): ${(e as Error).message}`, { cause: e });
    }
  }

  /** Closes the database; commits still queued (group wait, issuances signing) fail with 503 semantics, unwritten. */
  close(): void {
    if (this.#immediate) clearImmediate(this.#immediate);
    if (this.#timer) clearTimeout(this.#timer);
    this.#immediate = this.#timer = null;
    const queued = this.#pending;
    this.#pending = [];
    for (const p of queued) p.reject(shuttingDown());
    if (this.#db.open) this.#db.close();
  }

  transaction<T>(fn: () => T): T {
    return this.#db.transaction(fn).immediate();
  }

  #pending: Array<{ fn: () => unknown; resolve: (v: any) => void; reject: (e: unknown) => void }> = [];

  /**
   * Group commit: `fn` runs inside one IMMEDIATE transaction shared with every other `groupCommit` queued in the same
   * turn of the event loop (or while announced writes are outstanding, see intent()), each in its own savepoint (a throwing `fn` undoes only its own writes and rejects only its
   * own promise). Promises settle after the shared COMMIT, so a caller answers only once its writes are durable;
   * with synchronous=FULL that is one fsync for the whole group instead of one per issuance. A failed COMMIT rejects
   * the whole group.
   */
  groupCommit<T>(fn: () => T): Promise<T> {
    if (!this.#db.open) return Promise.reject(shuttingDown());
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ fn, resolve, reject });
      this.#schedule();
    });
  }

  /** Issuances announced by intent() that have neither committed nor cancelled yet. */
  #intents = 0;
  #immediate: NodeJS.Immediate | null = null;
  #timer: NodeJS.Timeout | null = null;

  /**
   * Announces a write that will come shortly (an issuance whose CSR check and signature are running on the thread
   * pool): while any are outstanding, queued commits wait for them, up to GROUP_WAIT_MS, so one fsync covers the
   * whole wave instead of one per event-loop turn (measured: ~20 issuances per fsync instead of ~11 under the bench). `commit` is groupCommit; `cancel` withdraws the intent (the
   * issuance failed before writing). Idempotent: only the first of commit/cancel counts.
   */
  intent(): { commit<T>(fn: () => T): Promise<T>; cancel(): void } {
    this.#intents++;
    let open = true;
    const settle = () => {
      if (!open) return;
      open = false;
      this.#intents--;
    };
    return {
      commit: <T>(fn: () => T): Promise<T> => {
        settle();
        return this.groupCommit(fn);
      },
      cancel: () => {
        settle();
        if (this.#pending.length > 0) this.#schedule();
      },
    };
  }

  #schedule(): void {
    if (this.#pending.length === 0 || this.#immediate) return;
    if (this.#intents === 0) {
      if (this.#timer) clearTimeout(this.#timer);
      this.#timer = null;
      this.#immediate = setImmediate(() => this.#flush());
    } else if (!this.#timer) {
      // The bound on waiting: a lost intent (or a slow thread pool) delays a commit by at most this much.
      this.#timer = setTimeout(() => {
        this.#timer = null;
        if (!this.#immediate) this.#immediate = setImmediate(() => this.#flush());
      }, this.#groupWaitMs);
    }
  }

  #flush(): void {
    this.#immediate = null;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const batch = this.#pending;
    this.#pending = [];
    if (batch.length === 0) return;
    const results: Array<{ ok: true; value: unknown } | { ok: false; error: unknown }> = [];
    try {
      this.#db.transaction(() => {
        for (const item of batch) {
          try {
            results.push({ ok: true, value: this.#db.transaction(item.fn)() }); // nested: a SAVEPOINT
          } catch (error) {
            results.push({ ok: false, error });
          }
        }
      }).immediate();
    } catch (e) {
      for (const item of batch) item.reject(e);
      return;
    }
    batch.forEach((item, i) => {
      const r = results[i];
      if (r.ok) item.resolve(r.value);
      else item.reject(r.error);
    });
  }

  insertToken(t: TokenRecord): void {
    this.#s(`INSERT INTO tokens (hash, identity, kind, cert_ttl_ms, dns, ips, created_at, expires_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)`).run(t.hash, t.identity, t.kind, t.certTtlMs, JSON.stringify(t.dns), JSON.stringify(t.ips), t.createdAt, t.expiresAt);
  }

  getToken(hash: string): TokenRecord | null {
    const r = this.#s(`SELECT * FROM tokens WHERE hash = ?`).get(hash) as Row | undefined;
    if (!r) return null;
    return {
      hash: r.hash, identity: r.identity, kind: r.kind, certTtlMs: r.cert_ttl_ms, dns: JSON.parse(r.dns),
      ips: JSON.parse(r.ips), createdAt: r.created_at, expiresAt: r.expires_at, usedAt: r.used_at,
    };
  }

  /** Marks a token used if, and only if, it is still unused and unexpired. Returns whether this call won. */
  redeemToken(hash: string, now: number, serial: string): boolean {
    const res = this.#s(`UPDATE tokens SET used_at = ?, used_serial = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?`)
      .run(now, serial, hash, now);
    return res.changes === 1;
  }

  insertCert(c: CertRecord): void {
    this.#s(`INSERT INTO certs (serial, identity, kind, not_before, not_after, ttl_ms, dns, ips, pem, issued_at, via, parent_serial)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(c.serial, c.identity, c.kind, c.notBefore, c.notAfter, c.ttlMs,
      JSON.stringify(c.dns), JSON.stringify(c.ips), c.pem, c.issuedAt, c.via, c.parentSerial);
  }

  getCert(serial: string): CertRecord | null {
    const r = this.#s(`SELECT * FROM certs WHERE serial = ?`).get(serial) as Row | undefined;
    return r ? certFromRow(r) : null;
  }

  /** Whether a certificate is recorded and not revoked: the one column renewal re-checks inside its transaction. */
  isCertActive(serial: string): boolean {
    const r = this.#s(`SELECT revoked_at FROM certs WHERE serial = ?`).get(serial) as Row | undefined;
    return r !== undefined && r.revoked_at === null;
  }

  listCerts(): CertRecord[] {
    return (this.#s(`SELECT * FROM certs ORDER BY issued_at, serial`).all() as Row[]).map(certFromRow);
  }

  /** Revokes the given serials that are not revoked yet; returns the ones this call revoked. */
  revokeSerials(serials: string[], now: number, reason: string): string[] {
    const stmt = this.#s(`UPDATE certs SET revoked_at = ?, reason = ? WHERE serial = ? AND revoked_at IS NULL`);
    return serials.filter((s) => stmt.run(now, reason, s).changes === 1);
  }

  serialsForIdentity(identity: string): string[] {
    return (this.#s(`SELECT serial FROM certs WHERE identity = ?`).all(identity) as Row[]).map((r) => r.serial);
  }

  /** Revoked certificates that have not expired yet (expired ones need no CRL entry). */
  revokedUnexpired(now: number): CertRecord[] {
    return (this.#s(`SELECT * FROM certs WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY revoked_at`).all(now) as Row[]).map(certFromRow);
  }

  /**
   * Revocations recorded after event `afterId` (any process: `mcpmesh ca revoke` writes the same database), oldest
   * first, with the certificate's identity. `afterId` -1 asks only for the current high-water mark (no rows).
   */
  revocationsAfter(afterId: number): { cursor: number; rows: RevocationEvent[] } {
    const max = (this.#s(`SELECT COALESCE(MAX(id), 0) AS m FROM events WHERE type = 'cert.revoked'`).get() as Row).m as number;
    if (afterId < 0 || max <= afterId) return { cursor: Math.max(max, afterId), rows: [] };
    const rows = (this.#s(`SELECT e.id, e.serial, e.at, c.identity, c.kind, c.reason FROM events e JOIN certs c ON c.serial = e.serial
      WHERE e.type = 'cert.revoked' AND e.id > ? ORDER BY e.id`).all(afterId) as Row[]).map((r) => ({ id: r.id, serial: r.serial, at: r.at, identity: r.identity, kind: r.kind, reason: r.reason }));
    return { cursor: max, rows };
  }

  addEvent(type: string, fields: { identity?: string | null; serial?: string | null; detail?: Record<string, unknown> }, now = Date.now()): void {
    this.#s(`INSERT INTO events (at, type, identity, serial, detail) VALUES (?, ?, ?, ?, ?)`)
      .run(now, type, fields.identity ?? null, fields.serial ?? null, JSON.stringify(fields.detail ?? {}));
  }

  events(): CaEvent[] {
    return (this.#s(`SELECT * FROM events ORDER BY id`).all() as Row[]).map((r) => ({
      id: r.id, at: r.at, type: r.type, identity: r.identity, serial: r.serial, detail: JSON.parse(r.detail),
    }));
  }

  getMeta(key: string): string | null {
    const r = this.#s(`SELECT value FROM meta WHERE key = ?`).get(key) as Row | undefined;
    return r ? r.value : null;
  }

  setMeta(key: string, value: string): void {
    this.#s(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`).run(key, value);
  }
}

const shuttingDown = () => new CaUnavailableError("the CA is shutting down; nothing was issued (retry against a running CA)");

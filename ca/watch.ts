import { watch, type FSWatcher } from "node:fs";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { WebSocketServer, type WebSocket } from "ws";
import { isMeshError } from "../lib/errors.ts";
import { silentLogger, type Logger } from "../lib/log.ts";
import type { Authority } from "./authority.ts";
import type { CertRecord, RevocationEvent } from "./store.ts";

/**
 * The CA's live revocation feed: `GET /v1/watch` upgraded to a WebSocket, for agents only (a valid, unrevoked
 * certificate of kind agent, over mTLS). Messages are JSON text frames:
 *
 * - `{ type: "hello", crl, at }` on subscribe: the current signed CRL, so a (re)connecting agent is in sync at once;
 * - `{ type: "revoked", identity, serials, reason, at }` for each revocation, pushed as soon as it is recorded.
 *
 * Revocations made through this process's Authority are pushed immediately; those written to the database by another
 * process (`mcpmesh ca revoke` runs on the store alone) are found when the store's WAL file changes (`watchFile`,
 * inotify on Linux) and, as a fallback, by polling the store's revocation events every `pollMs` (150 ms). Pings every `heartbeatMs`; a subscriber that
 * misses one pong is dropped. A subscriber whose own certificate is revoked, or reaches notAfter, is disconnected.
 */
export type WatchMessage =
  | { type: "hello"; crl: string; at: string }
  | { type: "revoked"; identity: string; serials: string[]; reason: string | null; at: string };

export const WATCH_PATH = "/v1/watch";
/** After the last WAL write: look again at these times (ms), in case the commit became visible late (a busy host). */
const TRAILING_LOOKS_MS = [25, 100, 400, 1600];

export interface RevocationFeedOptions {
  authority: Pick<Authority, "authenticatePeer" | "crlPem" | "revocationsAfter" | "on" | "off">;
  logger?: Logger;
  pollMs?: number;
  heartbeatMs?: number;
  /**
   * A file that changes whenever the store is written (its WAL): a change makes the feed look at once, so a
   * revocation by another process does not wait for the next poll. The poll stays as the fallback.
   */
  watchFile?: string;
}

interface Subscriber {
  ws: WebSocket;
  rec: CertRecord;
  alive: boolean;
  expiry: NodeJS.Timeout;
}

export class RevocationFeed {
  readonly #o: Required<Omit<RevocationFeedOptions, "logger" | "watchFile">> & { logger: Logger };
  readonly #wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024, clientTracking: false });
  readonly #subs = new Set<Subscriber>();
  #cursor: number;
  readonly #poll: NodeJS.Timeout;
  readonly #heartbeat: NodeJS.Timeout;
  readonly #onRevoked = () => this.check();
  #watcher: FSWatcher | undefined;
  #lookSoon = false;
  #trailing: NodeJS.Timeout | undefined;

  constructor(opts: RevocationFeedOptions) {
    this.#o = { ...opts, pollMs: opts.pollMs ?? 150, heartbeatMs: opts.heartbeatMs ?? 15_000, logger: opts.logger ?? silentLogger() };
    this.#cursor = this.#o.authority.revocationsAfter(-1).cursor;
    this.#poll = setInterval(() => this.check(), this.#o.pollMs);
    this.#poll.unref();
    this.#heartbeat = setInterval(() => this.#beat(), this.#o.heartbeatMs);
    this.#heartbeat.unref();
    this.#o.authority.on("revoked", this.#onRevoked);
    if (opts.watchFile) {
      try {
        this.#watcher = watch(opts.watchFile, { persistent: false }, () => this.#soon());
        this.#watcher.on("error", () => this.#watcher?.close());
      } catch (e) {
        this.#o.logger.warn({ event: "watch_file_unavailable", file: opts.watchFile, reason: (e as Error).message }, "store changes not watched; revocations by other processes arrive with the poll");
      }
    }
  }

  /**
   * A writer's WAL write is seen before its commit is visible (the fsync and the shared-memory index update follow
   * it), so one look right away and trailing looks after the last write (until 1.6 s); bursts of writes (every issuance
   * writes the WAL) coalesce into one pending look of each kind.
   */
  #soon(): void {
    if (!this.#lookSoon) {
      this.#lookSoon = true;
      setImmediate(() => {
        this.#lookSoon = false;
        this.check();
      });
    }
    clearTimeout(this.#trailing);
    const look = (i: number) => {
      this.#trailing = setTimeout(() => {
        this.check();
        if (i + 1 < TRAILING_LOOKS_MS.length) look(i + 1);
      }, TRAILING_LOOKS_MS[i] - (i > 0 ? TRAILING_LOOKS_MS[i - 1] : 0));
      this.#trailing.unref();
    };
    look(0);
  }

  get subscribers(): number {
    return this.#subs.size;
  }

  /** The HTTPS server's `upgrade` handler for WATCH_PATH: authenticates, then subscribes. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const tls = req.socket as TLSSocket;
    let rec: CertRecord;
    try {
      const cert = tls.getPeerX509Certificate?.();
      rec = this.#o.authority.authenticatePeer({ leafDer: cert ? cert.raw : null, chainTrusted: tls.authorized === true });
      if (rec.kind !== "agent") return this.#refuse(socket, 403, "MCPMESH_FORBIDDEN", `the revocation feed is for agents; ${rec.identity} holds a ${rec.kind} certificate`);
    } catch (e) {
      if (isMeshError(e)) return this.#refuse(socket, e.code === "MCPMESH_NO_CLIENT_CERT" ? 401 : 403, e.code, e.message);
      this.#o.logger.error({ event: "internal_error", path: WATCH_PATH, err: e }, "internal error");
      return this.#refuse(socket, 500, "MCPMESH_INTERNAL", "internal error; see the CA log");
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => void this.#subscribe(ws, rec));
  }

  #refuse(socket: Duplex, status: number, code: string, message: string): void {
    this.#o.logger.warn({ event: "watch_refused", code, reason: message }, "revocation feed subscription refused");
    const body = JSON.stringify({ error: { code, message } });
    socket.end(`HTTP/1.1 ${status} ${status === 401 ? "Unauthorized" : status === 403 ? "Forbidden" : "Internal Server Error"}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  }

  async #subscribe(ws: WebSocket, rec: CertRecord): Promise<void> {
    const expiry = setTimeout(() => ws.close(4001, "certificate expired"), Math.max(0, Math.min(rec.notAfter - Date.now(), 2 ** 31 - 1)));
    expiry.unref();
    const sub: Subscriber = { ws, rec, alive: true, expiry };
    this.#subs.add(sub);
    ws.on("pong", () => (sub.alive = true));
    ws.on("message", () => {}); // subscribers have nothing to say; frames are ignored
    ws.on("error", (e) => {
      this.#o.logger.debug({ event: "watch_socket_error", identity: rec.identity, reason: e.message }, "feed socket error");
      ws.terminate();
    });
    ws.on("close", (code, reason) => {
      clearTimeout(expiry);
      this.#subs.delete(sub);
      this.#o.logger.info({ event: "watch_unsubscribed", identity: rec.identity, serial: rec.serial, code, reason: reason.toString() }, "agent left the revocation feed");
    });
    this.#o.logger.info({ event: "watch_subscribed", identity: rec.identity, serial: rec.serial, subscribers: this.#subs.size }, "agent subscribed to the revocation feed");
    try {
      const crl = await this.#o.authority.crlPem();
      this.#send(sub, { type: "hello", crl, at: new Date().toISOString() });
    } catch (e) {
      this.#o.logger.error({ event: "watch_hello_failed", err: e }, "could not send the CRL to a new subscriber");
      ws.close(1011, "internal error");
    }
  }

  #send(sub: Subscriber, msg: WatchMessage): void {
    if (sub.ws.readyState === sub.ws.OPEN) sub.ws.send(JSON.stringify(msg));
  }

  /** Looks for revocations recorded since the last look (by any process) and pushes them. */
  check(): void {
    let found: { cursor: number; rows: RevocationEvent[] };
    try {
      found = this.#o.authority.revocationsAfter(this.#cursor);
    } catch (e) {
      this.#o.logger.error({ event: "watch_poll_failed", reason: (e as Error).message }, "cannot read revocations from the store");
      return;
    }
    this.#cursor = found.cursor;
    if (found.rows.length === 0) return;
    // One message per identity (a revocation by identity covers all its certificates at once).
    const groups = new Map<string, RevocationEvent[]>();
    for (const r of found.rows) {
      const g = groups.get(r.identity);
      if (g) g.push(r);
      else groups.set(r.identity, [r]);
    }
    for (const [identity, rows] of groups) {
      const msg: WatchMessage = { type: "revoked", identity, serials: rows.map((r) => r.serial), reason: rows[0].reason, at: new Date(rows[0].at).toISOString() };
      this.#o.logger.info({ event: "revocation_pushed", identity, serials: msg.serials, subscribers: this.#subs.size }, "revocation pushed to subscribed agents");
      for (const sub of this.#subs) this.#send(sub, msg);
    }
    // A subscriber whose own certificate was revoked leaves the feed.
    const revoked = new Set(found.rows.map((r) => r.serial));
    for (const sub of this.#subs) if (revoked.has(sub.rec.serial)) sub.ws.close(4003, "certificate revoked");
  }

  #beat(): void {
    for (const sub of this.#subs) {
      if (!sub.alive) {
        sub.ws.terminate();
        continue;
      }
      sub.alive = false;
      sub.ws.ping();
    }
  }

  close(): void {
    clearInterval(this.#poll);
    clearInterval(this.#heartbeat);
    this.#watcher?.close();
    clearTimeout(this.#trailing);
    this.#o.authority.off("revoked", this.#onRevoked);
    for (const sub of this.#subs) sub.ws.terminate();
    this.#subs.clear();
    this.#wss.close();
  }
}

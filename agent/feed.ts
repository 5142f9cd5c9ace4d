import { EventEmitter } from "node:events";
import type { WebSocket } from "ws";
import { loadWs } from "../lib/lazy-ws.ts";
import { silentLogger, type Logger } from "../lib/log.ts";

/** A revocation as the CA pushes it (see ca/watch.ts). */
export interface PushedRevocation {
  identity: string;
  serials: string[];
  reason: string | null;
  at: string;
}

export interface FeedCredentials {
  /** Roots to verify the CA with. */
  ca: string;
  cert: string;
  key: string;
}

export interface FeedClientOptions {
  /** The CA's base URL (https://HOST:PORT); the feed is wss://HOST:PORT/v1/watch. */
  caUrl: string;
  /** Read on every (re)connection, so a renewed certificate is used from the next connection on. */
  credentials: () => FeedCredentials;
  logger?: Logger;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** The CA pings every 15 s; with nothing heard for this long the connection is considered dead. Default 40 s. */
  idleTimeoutMs?: number;
  random?: () => number;
}

/**
 * The agent's subscription to the CA's live revocation feed: a mutually authenticated WebSocket that reconnects with
 * exponential backoff (jittered) and treats silence (no ping, no message) as a dead connection.
 * Events: "crl" (PEM, sent by the CA on every subscribe), "revoked" (PushedRevocation), "connected", "disconnected"
 * ({ reason }).
 */
export class RevocationFeedClient extends EventEmitter {
  readonly #o: Required<Omit<FeedClientOptions, "logger">> & { logger: Logger };
  #ws: WebSocket | null = null;
  #timer: NodeJS.Timeout | null = null;
  #idle: NodeJS.Timeout | null = null;
  #failures = 0;
  #stopped = true;
  #connected = false;
  /** Bumped by every connect attempt, reconnect() and stop(): an attempt still waiting for `ws` knows it is stale. */
  #attempt = 0;

  constructor(opts: FeedClientOptions) {
    super();
    this.#o = { minBackoffMs: 250, maxBackoffMs: 30_000, idleTimeoutMs: 40_000, random: Math.random, ...opts, logger: opts.logger ?? silentLogger() };
  }

  get connected(): boolean {
    return this.#connected;
  }

  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#connect();
  }

  stop(): void {
    this.#stopped = true;
    this.#attempt++;
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#idle) clearTimeout(this.#idle);
    this.#timer = this.#idle = null;
    this.#ws?.terminate();
    this.#ws = null;
  }

  /** Drops the current connection and reconnects now (e.g. after the agent's own certificate was renewed). */
  reconnect(): void {
    if (this.#stopped) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const old = this.#ws;
    this.#ws = null;
    old?.removeAllListeners();
    old?.on("error", () => {});
    old?.terminate();
    if (this.#connected) {
      this.#connected = false;
      this.emit("disconnected", { reason: "reconnect" });
    }
    this.#connect();
  }

  #connect(): void {
    if (this.#stopped) return;
    // `ws` is imported on the first connection (lib/lazy-ws.ts); an agent without a feed never loads it.
    const attempt = ++this.#attempt;
    loadWs().then(
      ({ WebSocket }) => {
        if (!this.#stopped && attempt === this.#attempt) this.#open(WebSocket);
      },
      (e: unknown) => {
        if (!this.#stopped && attempt === this.#attempt) this.#retry(`the WebSocket library could not be loaded: ${(e as Error).message}`);
      },
    );
  }

  #open(WebSocket: typeof import("ws").WebSocket): void {
    let creds: FeedCredentials;
    try {
      creds = this.#o.credentials();
    } catch (e) {
      return this.#retry(`cannot read the agent's identity: ${(e as Error).message}`);
    }
    const url = new URL("/v1/watch", this.#o.caUrl);
    url.protocol = "wss:";
    const ws = new WebSocket(url, {
      ca: creds.ca,
      cert: creds.cert,
      key: creds.key,
      minVersion: "TLSv1.3",
      handshakeTimeout: 10_000,
      maxPayload: 8 * 1024 * 1024,
      perMessageDeflate: false,
    });
    this.#ws = ws;
    let why = "closed";
    ws.on("unexpected-response", (_req, res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        let message = `HTTP ${res.statusCode}`;
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
          if (typeof body?.error?.message === "string") message += `: ${body.error.message}`;
        } catch {
          /* not JSON */
        }
        why = `the CA refused the subscription (${message})`;
        ws.terminate();
      });
    });
    ws.on("open", () => {
      this.#failures = 0;
      this.#connected = true;
      this.#touch(ws);
      this.#o.logger.info({ event: "feed_connected", ca: this.#o.caUrl }, "subscribed to the CA's revocation feed");
      this.emit("connected");
    });
    ws.on("ping", () => this.#touch(ws));
    ws.on("message", (data) => {
      this.#touch(ws);
      let msg: any;
      try {
        msg = JSON.parse(String(data));
      } catch {
        this.#o.logger.warn({ event: "feed_bad_message", reason: "not JSON" }, "ignored a malformed message from the revocation feed");
        return;
      }
      if (msg?.type === "hello" && typeof msg.crl === "string") this.emit("crl", msg.crl);
      else if (msg?.type === "revoked" && Array.isArray(msg.serials) && msg.serials.every((s: unknown) => typeof s === "string") && typeof msg.identity === "string") {
        this.emit("revoked", { identity: msg.identity, serials: msg.serials, reason: typeof msg.reason === "string" ? msg.reason : null, at: String(msg.at) } satisfies PushedRevocation);
      } else this.#o.logger.warn({ event: "feed_bad_message", reason: `unknown message type ${JSON.stringify(msg?.type)}` }, "ignored a malformed message from the revocation feed");
    });
    ws.on("error", (e) => (why = e.message));
    ws.on("close", (code, reason) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      if (this.#idle) clearTimeout(this.#idle);
      if (code !== 1006 && code !== 1005) why = `closed by the CA (${code}${reason.length ? ` ${reason.toString()}` : ""})`;
      if (this.#connected) {
        this.#connected = false;
        this.emit("disconnected", { reason: why });
      }
      this.#retry(why);
    });
  }

  #touch(ws: WebSocket): void {
    if (this.#idle) clearTimeout(this.#idle);
    this.#idle = setTimeout(() => ws.terminate(), this.#o.idleTimeoutMs);
    this.#idle.unref();
  }

  #retry(reason: string): void {
    if (this.#stopped) return;
    this.#failures++;
    const base = Math.min(this.#o.maxBackoffMs, this.#o.minBackoffMs * 2 ** Math.min(this.#failures - 1, 20));
    const delay = Math.round(base * (0.8 + this.#o.random() * 0.4));
    // The first failure after a working connection is worth a warning; repeated ones are expected while the CA is down.
    const level = this.#failures === 1 ? "warn" : "debug";
    this.#o.logger[level]({ event: "feed_disconnected", ca: this.#o.caUrl, reason, attempt: this.#failures, retryInMs: delay }, "revocation feed unavailable; reconnecting with backoff");
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, delay);
    this.#timer.unref();
  }
}

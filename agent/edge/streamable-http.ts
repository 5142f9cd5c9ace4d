import { EventEmitter } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { errorResponse, INVALID_REQUEST, RATE_LIMITED, PARSE_ERROR, SESSION_NOT_FOUND, SERVER_ERROR, type JsonRpcMessage, type JsonRpcResponse } from "../jsonrpc.ts";
import { INSPECTED_RESPONSES, type ClientMessageContext, type Gatekeeper } from "../gatekeeper.ts";
import { DEFAULT_PROTOCOL_VERSION, type Session, type SessionTable } from "../session.ts";
import type { Caller } from "../policy.ts";
import type { Tool } from "../pinning.ts";
import type { HttpUpstream, UpstreamResponse } from "../upstream/http.ts";
import { relaySse } from "./sse.ts";
import { BodyIncompleteError, BodyTooLargeError, readBody } from "../../lib/body.ts";
import type { Logger } from "../../lib/log.ts";
import type { AuditSink } from "../audit.ts";
import type { LimitsConfig } from "../config.ts";
import { scanJson } from "../json-scan.ts";

/**
 * The Streamable HTTP edge (spec 2025-03-26 and later) in front of a Streamable HTTP upstream: POST/GET/DELETE on
 * one endpoint. It turns bodies into parsed messages for the gatekeeper, forwards allowed bytes unchanged, and relays
 * responses (JSON or SSE), letting the gatekeeper filter what it must read. It knows nothing of policy.
 */
export interface StreamableHttpEdgeOptions {
  gate: Gatekeeper;
  sessions: SessionTable;
  upstream: HttpUpstream;
  limits: LimitsConfig;
  logger: Logger;
  audit: AuditSink;
}

/** Client headers that reach the upstream; everything else (Authorization, Cookie, ...) stays at the agent. */
const FORWARDED_REQUEST_HEADERS = ["content-type", "accept", "mcp-protocol-version", "last-event-id"];
const RELAYED_RESPONSE_HEADERS = ["content-type", "mcp-session-id", "cache-control", "retry-after", "www-authenticate"];

/** How long a POST's SSE response headers may wait for the first event before they are sent alone. */
const HEADER_HOLD_MS = 50;

/**
 * Coalesces what the SSE relay writes within one turn of the event loop into one res.write (one TLS record, one
 * syscall): a POST's headers, its event and the chunked end usually leave in a single write instead of three. Plain
 * strings are joined in JavaScript and the socket is never corked (a corked relay once left keep-alive sockets corked
 * on Node 24, so later responses never left). Headers wait for the first write at most `holdMs` (0: sent at once), so
 * a slow tool's stream still opens promptly.
 */
class CoalescedWrites {
  #res: ServerResponse;
  #conn: Socket;
  #pending = "";
  #immediate: NodeJS.Immediate | undefined;
  #hold: NodeJS.Timeout | undefined;

  constructor(res: ServerResponse, conn: Socket, holdMs: number) {
    this.#res = res;
    this.#conn = conn;
    // Timers get `this` as an argument rather than a closure: three fewer allocations per response.
    if (holdMs === 0) res.flushHeaders();
    else this.#hold = setTimeout(flushHeldHeaders, holdMs, this);
  }

  /** The hold expired before any event: the headers go out alone. */
  flushHeaders(): void {
    this.#hold = undefined;
    // (headersSent is already true after writeHead: it means "stored", not "written".)
    if (!this.#res.destroyed && !this.#res.writableEnded) this.#res.flushHeaders();
  }

  write(chunk: string): void {
    this.#pending += chunk;
    this.#immediate ??= setImmediate(flushCoalesced, this);
  }

  flush(): void {
    this.#immediate = undefined;
    if (this.#hold) this.#hold = void clearTimeout(this.#hold);
    const data = this.#pending;
    this.#pending = "";
    if (data && !this.#res.destroyed) this.#res.write(data);
  }

  /**
   * A promise while the client is behind (the socket holds more than its high-water mark), settled on "drain" or on
   * close; undefined when it can take more. Text still pending here is at most what one upstream read delivered.
   */
  drained(): Promise<void> | undefined {
    const res = this.#res;
    // The connection's "close" too: a pipelined response queued behind another has no socket yet, and when the
    // connection goes Node emits neither "drain" nor "close" on it (Node 20.20), so the relay would wait forever.
    const conn = this.#conn;
    if (!res.writableNeedDrain || res.destroyed || conn.destroyed) return undefined;
    return new Promise((resolve) => {
      const done = () => {
        res.off("drain", done);
        res.off("close", done);
        conn.off("close", done);
        resolve();
      };
      res.on("drain", done);
      res.on("close", done);
      conn.on("close", done);
    });
  }

  /** Ends the response with whatever is still pending, in the same write as the chunked terminator. */
  end(): void {
    if (this.#immediate) this.#immediate = void clearImmediate(this.#immediate);
    if (this.#hold) this.#hold = void clearTimeout(this.#hold);
    const data = this.#pending;
    this.#pending = "";
    if (data && !this.#res.destroyed) this.#res.end(data);
    else this.#res.end();
  }
}
const flushHeldHeaders = (w: CoalescedWrites): void => w.flushHeaders();
const flushCoalesced = (w: CoalescedWrites): void => w.flush();

/** One strict decoder for every body (it keeps no state between calls without `stream`). */
const UTF8 = new TextDecoder("utf-8", { fatal: true });

export function sendJson(res: ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data), ...extraHeaders });
  res.end(data);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The cancel signal of one forwarded POST: it fires when the client's response closes unfinished. undici takes an
 * EventEmitter as `signal`; an AbortController, with its EventTarget listener added and removed by undici, costs
 * about 10 µs per request on Node 20, this well under one.
 */
class ClientGone extends EventEmitter {
  aborted = false;

  constructor(res: ServerResponse) {
    super();
    res.once("close", () => {
      if (res.writableFinished || this.aborted) return;
      this.aborted = true;
      this.emit("abort");
    });
  }
}

/** A request's context for the gatekeeper; a class so that no closure is built per request. */
class EdgeContext implements ClientMessageContext {
  readonly transport = "streamable-http";
  constructor(
    readonly caller: Caller,
    readonly session: Session,
    readonly req: IncomingMessage,
    readonly fetcher: (session: Session, caller: Caller, req: IncomingMessage) => Promise<Tool[]>,
  ) {}

  fetchTools(): Promise<Tool[]> {
    return this.fetcher(this.session, this.caller, this.req);
  }
}

export class StreamableHttpEdge {
  #o: StreamableHttpEdgeOptions;

  constructor(opts: StreamableHttpEdgeOptions) {
    this.#o = opts;
  }

  /** Swaps limits (config reload). */
  update(opts: Partial<Pick<StreamableHttpEdgeOptions, "limits">>): void {
    this.#o = { ...this.#o, ...opts };
  }

  async handle(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    try {
      const origin = header(req, "origin");
      if (origin !== undefined && !this.#sameOrigin(origin, header(req, "host"))) {
        this.#o.logger.warn({ event: "origin_refused", identity: caller.id, origin }, "request with a foreign Origin refused");
        return sendJson(res, 403, errorResponse(null, SERVER_ERROR, "Forbidden: Origin not allowed"));
      }
      if (req.method !== "DELETE") {
        // An identity in cool-down is refused whole requests, before any body is read.
        const left = this.#o.gate.coolDown(caller, "streamable-http");
        if (left > 0) {
          return sendJson(res, 429, errorResponse(null, RATE_LIMITED, `Too many requests: cool-down for another ${left} ms`, { retryAfterMs: left }), { "retry-after": String(Math.ceil(left / 1000)) });
        }
      }
      switch (req.method) {
        case "POST":
          return await this.#post(req, res, caller);
        case "GET":
          return await this.#get(req, res, caller);
        case "DELETE":
          return await this.#delete(req, res, caller);
        default:
          res.writeHead(405, { allow: "GET, POST, DELETE" }).end();
      }
    } catch (e) {
      if (e instanceof BodyTooLargeError) {
        sendJson(res, 413, errorResponse(null, INVALID_REQUEST, `Request body larger than ${this.#o.limits.maxBodyBytes} bytes`), { connection: "close" });
        return;
      }
      if (e instanceof BodyIncompleteError) return void res.destroy(); // the client left mid-body: nothing was forwarded
      if (res.destroyed || !res.socket || res.socket.destroyed) return; // the client went away (its call was cancelled upstream too)
      const timedOut = (e as { cause?: { code?: string } }).cause?.code === "UND_ERR_HEADERS_TIMEOUT";
      this.#o.logger.warn({ event: "upstream_error", identity: caller.id, reason: (e as Error).message, timedOut }, "request failed");
      const rid = (e as { rpcId?: string | number }).rpcId ?? null;
      if (!res.headersSent) sendJson(res, timedOut ? 504 : 502, errorResponse(rid, SERVER_ERROR, timedOut ? "Upstream MCP server timed out" : "Upstream MCP server unavailable"));
      else res.destroy();
    }
  }

  /** A message refused before any session or policy work: logged and answered, never forwarded. */
  #refuse(res: ServerResponse, caller: Caller, status: number, code: number, message: string): void {
    this.#o.audit.record({ identity: caller.id, session: null, method: "(unparsed)", decision: "deny", rule: null, reason: message, decisionUs: 0, transport: "streamable-http" });
    sendJson(res, status, errorResponse(null, code, message));
  }

  #sameOrigin(origin: string, host: string | undefined): boolean {
    try {
      return host !== undefined && new URL(origin).host === host;
    } catch {
      return false;
    }
  }

  /** Resolves the session a request belongs to; null means "answer 404". */
  #session(req: IncomingMessage, caller: Caller): Session | null | "stateless" {
    const sid = header(req, "mcp-session-id");
    if (sid === undefined) return "stateless";
    const found = this.#o.sessions.lookup(sid, caller.id);
    // A bridged session (legacy SSE, WebSocket: the agent's own id, `ended` set) is not an upstream session.
    const s = found?.ended ? null : found;
    if (!s) {
      this.#o.logger.warn({ event: "session_refused", identity: caller.id, reason: this.#o.sessions.ownedByOther(sid, caller.id) ? "session belongs to another identity" : "unknown session" }, "session refused");
    }
    return s;
  }

  #upstreamHeaders(req: IncomingMessage, session: Session | null, caller: Caller): Record<string, string> {
    const h: Record<string, string> = { "x-mcpmesh-identity": caller.id };
    for (const name of FORWARDED_REQUEST_HEADERS) {
      const v = header(req, name);
      if (v !== undefined) h[name] = v;
    }
    if (session?.upstreamId) h["mcp-session-id"] = session.upstreamId;
    return h;
  }

  #context(session: Session, caller: Caller, req: IncomingMessage): ClientMessageContext {
    return new EdgeContext(caller, session, req, this.#fetchToolsFor);
  }

  readonly #fetchToolsFor = (session: Session, caller: Caller, req: IncomingMessage): Promise<Tool[]> => this.#fetchTools(session, caller, req);

  async #post(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const body = await readBody(req, this.#o.limits.maxBodyBytes);
    let parsed: unknown;
    let text: string;
    try {
      text = UTF8.decode(body);
    } catch {
      return this.#refuse(res, caller, 400, PARSE_ERROR, "Parse error: the body is not valid UTF-8");
    }
    const unsafe = scanJson(text, this.#o.limits.maxMessageDepth);
    if (unsafe) return this.#refuse(res, caller, 400, INVALID_REQUEST, `Invalid Request: ${unsafe}`);
    try {
      parsed = JSON.parse(text);
    } catch {
      return this.#refuse(res, caller, 400, PARSE_ERROR, "Parse error: the body is not valid JSON");
    }
    const found = this.#session(req, caller);
    if (found === null) return sendJson(res, 404, errorResponse(null, SESSION_NOT_FOUND, "Session not found"));
    const isInit = !Array.isArray(parsed) && found === "stateless" && (parsed as any)?.method === "initialize";
    if (isInit && this.#o.sessions.countOwned(caller.id) >= this.#o.limits.maxSessionsPerIdentity) {
      // SDK clients rarely DELETE their sessions, so at the cap the identity's least recently used session without an
      // open stream makes room (memory stays bounded); only when every session is streaming is the new one refused.
      const victim = this.#o.sessions.oldestIdle(caller.id);
      if (victim) {
        this.#o.logger.info({ event: "session_evicted", identity: caller.id, session: victim.upstreamId, limit: this.#o.limits.maxSessionsPerIdentity }, "session limit reached; least recently used session closed");
        this.#o.sessions.delete(victim.key);
        if (victim.upstreamId) {
          void this.#o.upstream
            .send("DELETE", { "x-mcpmesh-identity": caller.id, "mcp-session-id": victim.upstreamId, "mcp-protocol-version": victim.protocolVersion })
            .then((r) => r.body.resume())
            .catch(() => {});
        }
      } else {
        const id = (parsed as { id?: unknown }).id;
        this.#o.logger.warn({ event: "session_limit", identity: caller.id, limit: this.#o.limits.maxSessionsPerIdentity }, "too many sessions for one identity");
        return sendJson(res, 429, errorResponse(typeof id === "string" || typeof id === "number" ? id : null, SERVER_ERROR, "Too many sessions for this identity; close one (DELETE) first"));
      }
    }
    const protocolHeader = header(req, "mcp-protocol-version");
    const session =
      found !== "stateless" ? found
      : isInit ? this.#o.sessions.provisional(caller.id, String((parsed as any)?.params?.protocolVersion ?? DEFAULT_PROTOCOL_VERSION))
      : this.#o.sessions.stateless(caller.id, protocolHeader ?? DEFAULT_PROTOCOL_VERSION);

    const headerCheck = checkMethodHeaders(req, parsed);
    if (headerCheck) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, headerCheck));

    const ctx = this.#context(session, caller, req);
    let inspect: boolean;
    let expectsResponse: boolean;
    let done: (() => void) | undefined;
    if (Array.isArray(parsed)) {
      if (parsed.length === 0) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, "Invalid Request: empty batch"));
      if (session.protocolVersion !== "2025-03-26") {
        return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, `Invalid Request: JSON-RPC batches are not part of protocol version ${session.protocolVersion}`));
      }
      const verdict = await this.#o.gate.checkBatch(ctx, parsed);
      if (!verdict.forward) return verdict.replies.length ? sendJson(res, 200, verdict.replies) : void res.writeHead(403).end();
      done = verdict.done;
      inspect = parsed.some((m: any) => INSPECTED_RESPONSES.has(m?.method));
      expectsResponse = parsed.some((m: any) => m && "id" in m && "method" in m);
    } else {
      const verdict = await this.#o.gate.checkClientMessage(ctx, parsed);
      if (verdict.action === "reply") {
        if (verdict.reply) return sendJson(res, verdict.status, verdict.reply, verdict.headers);
        return sendJson(res, verdict.status, errorResponse(null, SERVER_ERROR, "Forbidden"));
      }
      done = verdict.done;
      const m = parsed as any;
      inspect = INSPECTED_RESPONSES.has(m?.method);
      expectsResponse = "id" in m && "method" in m;
    }

    // A client that goes away before the upstream answers takes its upstream request with it.
    const cancel = new ClientGone(res);
    try {
      let up: UpstreamResponse;
      try {
        up = await this.#o.upstream.send("POST", this.#upstreamHeaders(req, session.upstreamId ? session : null, caller), body, cancel);
      } catch (e) {
        // The error reply answers the request by its id (a batch or a notification gets null).
        const rid = Array.isArray(parsed) ? undefined : (parsed as { id?: unknown }).id;
        if (typeof rid === "string" || typeof rid === "number") (e as { rpcId?: unknown }).rpcId = rid;
        throw e;
      }
      if (isInit && up.status >= 200 && up.status < 300) {
        const sid = up.headers["mcp-session-id"];
        if (typeof sid === "string" && sid.length > 0) this.#o.sessions.adopt(session, sid, sid);
        else this.#o.sessions.adopt(session, `~${caller.id}`, null);
      }
      await this.#relay(req, res, up, session, caller, inspect || !expectsResponse ? "inspect" : "stream");
    } finally {
      done?.();
    }
  }

  async #get(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const found = this.#session(req, caller);
    if (found === null) return sendJson(res, 404, errorResponse(null, SESSION_NOT_FOUND, "Session not found"));
    const session = found === "stateless" ? this.#o.sessions.stateless(caller.id, header(req, "mcp-protocol-version") ?? DEFAULT_PROTOCOL_VERSION) : found;
    const ac = new AbortController();
    const up = await this.#o.upstream.send("GET", this.#upstreamHeaders(req, found === "stateless" ? null : session, caller), undefined, ac.signal);
    const close = () => {
      ac.abort();
      res.destroy();
    };
    session.closers.add(close);
    res.on("close", () => {
      session.closers.delete(close);
      ac.abort();
    });
    await this.#relay(req, res, up, session, caller, "inspect").catch(() => {});
  }

  async #delete(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const found = this.#session(req, caller);
    if (found === null || found === "stateless") return sendJson(res, found === null ? 404 : 400, errorResponse(null, found === null ? SESSION_NOT_FOUND : INVALID_REQUEST, found === null ? "Session not found" : "Mcp-Session-Id header is required"));
    const up = await this.#o.upstream.send("DELETE", this.#upstreamHeaders(req, found, caller));
    if (up.status >= 200 && up.status < 300) this.#o.sessions.delete(found.key);
    await this.#relay(req, res, up, found, caller, "inspect");
  }

  /**
   * Relays an upstream response. SSE is re-framed event by event through the gatekeeper's filter. JSON bodies are
   * parsed only when the request's response must be read ("inspect"); otherwise bytes pass through untouched.
   */
  async #relay(req: IncomingMessage, res: ServerResponse, up: UpstreamResponse, session: Session, caller: Caller, mode: "inspect" | "stream"): Promise<void> {
    const headers: Record<string, string> = {};
    for (const name of RELAYED_RESPONSE_HEADERS) {
      const v = up.headers[name];
      if (typeof v === "string") headers[name] = v;
    }
    const type = (headers["content-type"] ?? "").toLowerCase();
    if (type.startsWith("text/event-stream")) {
      res.writeHead(up.status, { ...headers, "cache-control": "no-cache", "x-accel-buffering": "no" });
      const out = new CoalescedWrites(res, req.socket, req.method === "GET" ? 0 : HEADER_HOLD_MS);
      const close = () => {
        up.body.destroy();
        res.destroy();
      };
      session.closers.add(close);
      const gone = () => {
        session.closers.delete(close);
        up.body.destroy();
      };
      res.on("close", gone);
      // A pipelined response queued behind another never emits "close" when the connection goes: watch the connection.
      req.socket.on("close", gone);
      try {
        await relaySse(up.body, (chunk) => out.write(chunk), (ev) => this.#filterEvent(session, caller, ev.data), { drained: () => out.drained() });
      } finally {
        req.socket.off("close", gone);
        session.closers.delete(close);
        out.end();
      }
      return;
    }
    if (mode === "stream" || !type.startsWith("application/json")) {
      res.writeHead(up.status, headers);
      up.body.pipe(res);
      await new Promise<void>((resolve) => res.on("close", resolve));
      return;
    }
    const chunks: Buffer[] = [];
    for await (const c of up.body) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    const filtered = this.#filterEvent(session, caller, raw.toString("utf8"));
    const out = filtered === null ? Buffer.alloc(0) : Buffer.from(filtered);
    res.writeHead(up.status, { ...headers, "content-length": String(out.length) });
    res.end(out);
  }

  /** One server payload (a message or a batch) through the gatekeeper; returns the text to send, or null to drop. */
  #filterEvent(session: Session, caller: Caller, data: string): string | null {
    if (session.pending.size === 0 && !data.includes("list_changed")) return data;
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      return data;
    }
    if (Array.isArray(parsed)) {
      let changed = false;
      const out = parsed.map((m) => {
        const f = this.#o.gate.filterServerMessage(session, caller, m as JsonRpcMessage);
        if (f !== m) changed = true;
        return f;
      });
      return changed ? JSON.stringify(out) : data;
    }
    if (parsed === null || typeof parsed !== "object") return data;
    const f = this.#o.gate.filterServerMessage(session, caller, parsed as JsonRpcMessage);
    return f === parsed ? data : JSON.stringify(f);
  }

  /** The agent lists the tools itself (all pages) when a call arrives on a session that never listed them. */
  async #fetchTools(session: Session, caller: Caller, req: IncomingMessage): Promise<Tool[]> {
    const tools: Tool[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 100; page++) {
      const id = `mcpmesh-tools-${Date.now()}-${page}`;
      const body = Buffer.from(JSON.stringify({ jsonrpc: "2.0", id, method: "tools/list", params: cursor ? { cursor } : {} }));
      const headers = this.#upstreamHeaders(req, session.upstreamId ? session : null, caller);
      headers["content-type"] = "application/json";
      headers.accept = "application/json, text/event-stream";
      const up = await this.#o.upstream.send("POST", headers, body);
      const res = await readOneResponse(up, id);
      if (!res || res.error || !Array.isArray(res.result?.tools)) throw new Error(`tools/list failed: ${res?.error?.message ?? `HTTP ${up.status}`}`);
      tools.push(...res.result.tools);
      cursor = typeof res.result.nextCursor === "string" ? res.result.nextCursor : undefined;
      if (!cursor) break;
    }
    return tools;
  }
}

/** Reads the response with `id` from a JSON or SSE upstream answer. */
async function readOneResponse(up: UpstreamResponse, id: string): Promise<JsonRpcResponse | null> {
  const type = String(up.headers["content-type"] ?? "");
  if (type.startsWith("text/event-stream")) {
    let found: JsonRpcResponse | null = null;
    await relaySse(up.body, () => {}, (ev) => {
      try {
        const m = JSON.parse(ev.data);
        if (m?.id === id) {
          found = m;
          up.body.destroy();
        }
      } catch {
        // not JSON: not ours
      }
      return null;
    }).catch(() => {});
    return found;
  }
  const chunks: Buffer[] = [];
  for await (const c of up.body) chunks.push(c as Buffer);
  try {
    const m = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    return m?.id === id ? m : null;
  } catch {
    return null;
  }
}

/**
 * The 2026 stateless revision mirrors the method (and tool/resource/prompt name) in headers so intermediaries can
 * route without parsing. The agent always decides on the body; headers that disagree with it are refused.
 */
export function checkMethodHeaders(req: IncomingMessage, parsed: unknown): string | null {
  const method = header(req, "mcp-method");
  const name = header(req, "mcp-name");
  if (method === undefined && name === undefined) return null;
  if (Array.isArray(parsed) || parsed === null || typeof parsed !== "object") return "Mcp-Method/Mcp-Name headers require a single JSON-RPC message";
  const m = parsed as { method?: unknown; params?: Record<string, unknown> };
  if (method !== undefined && method !== m.method) return "Mcp-Method header does not match the body's method";
  if (name !== undefined) {
    const p = m.params ?? {};
    const bodyName = m.method === "resources/read" || m.method === "resources/subscribe" || m.method === "resources/unsubscribe" ? p.uri : p.name;
    if (name !== bodyName) return "Mcp-Name header does not match the body";
  }
  return null;
}

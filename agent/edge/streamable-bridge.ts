import type { IncomingMessage, ServerResponse } from "node:http";
import { errorResponse, idKey, INVALID_REQUEST, RATE_LIMITED, SERVER_ERROR, SESSION_NOT_FOUND, type JsonRpcId, type JsonRpcMessage } from "../jsonrpc.ts";
import type { Caller } from "../policy.ts";
import { auditRefusal, decodeMessage, SessionBridge, slowConsumerCap } from "../bridge.ts";
import { checkMethodHeaders, sendJson } from "./streamable-http.ts";
import { BodyIncompleteError, BodyTooLargeError, readBody } from "../../lib/body.ts";
import { formatSseEvent } from "./sse.ts";
import { foreignOrigin, headerOf, type BridgeEdgeOptions } from "./legacy-sse.ts";

/** Server messages kept for a session with no stream open to carry them, at most. */
const MAX_QUEUED = 1_000;

/** One POST waiting for the answers to its requests. */
interface Post {
  res: ServerResponse;
  /** idKeys of the requests whose answers this POST's stream carries. */
  pending: Set<string>;
  /** Progress tokens of its requests: their progress notifications go here. */
  tokens: Set<string | number>;
  started: boolean;
  buffered: string[];
}

interface Conn {
  bridge: SessionBridge;
  get: ServerResponse | null;
  posts: Set<Post>;
  byId: Map<string, Post>;
  queue: string[];
}

function requestsOf(parsed: unknown): { ids: JsonRpcId[]; tokens: (string | number)[] } {
  const ids: JsonRpcId[] = [];
  const tokens: (string | number)[] = [];
  for (const m of Array.isArray(parsed) ? parsed : [parsed]) {
    if (m === null || typeof m !== "object" || typeof (m as any).method !== "string") continue;
    const id = (m as any).id;
    if (typeof id === "string" || typeof id === "number") ids.push(id);
    const t = (m as any).params?._meta?.progressToken;
    if (typeof t === "string" || typeof t === "number") tokens.push(t);
  }
  return { ids, tokens };
}

/**
 * The Streamable HTTP edge in message mode: in front of an upstream that is not Streamable HTTP (legacy SSE, stdio),
 * where the agent holds the MCP session itself (it mints the Mcp-Session-Id) and each session is a `SessionBridge`.
 * A POST with requests is answered with an SSE stream carrying their responses and their progress; other server
 * messages (logging, list_changed, sampling requests) go to the session's GET stream, else to an open POST stream,
 * else wait (bounded) for the next GET. Notifications and responses are answered 202.
 *
 * The byte-forwarding `StreamableHttpEdge` stays the path for Streamable HTTP upstreams.
 */
export class StreamableMessageEdge {
  #o: BridgeEdgeOptions;
  readonly #conns = new Map<string, Conn>();

  constructor(opts: BridgeEdgeOptions) {
    this.#o = opts;
  }

  update(opts: Partial<Pick<BridgeEdgeOptions, "limits">>): void {
    this.#o = { ...this.#o, ...opts };
  }

  /** Bytes one client stream may hold queued (from the current limits: a reload applies). */
  get #cap(): number {
    return slowConsumerCap(this.#o.limits);
  }

  async handle(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const origin = foreignOrigin(req);
    if (origin !== null) {
      this.#o.logger.warn({ event: "origin_refused", identity: caller.id, origin }, "request with a foreign Origin refused");
      return sendJson(res, 403, errorResponse(null, SERVER_ERROR, "Forbidden: Origin not allowed"));
    }
    if (req.method !== "DELETE") {
      const left = this.#o.gate.coolDown(caller, "streamable-http");
      if (left > 0) return sendJson(res, 429, errorResponse(null, RATE_LIMITED, `Too many requests: cool-down for another ${left} ms`, { retryAfterMs: left }), { "retry-after": String(Math.ceil(left / 1000)) });
    }
    try {
      switch (req.method) {
        case "POST":
          return await this.#post(req, res, caller);
        case "GET":
          return this.#get(req, res, caller);
        case "DELETE":
          return this.#delete(req, res, caller);
        default:
          res.writeHead(405, { allow: "GET, POST, DELETE" }).end();
      }
    } catch (e) {
      if (e instanceof BodyTooLargeError) return sendJson(res, 413, errorResponse(null, INVALID_REQUEST, `Request body larger than ${this.#o.limits.maxBodyBytes} bytes`), { connection: "close" });
      if (e instanceof BodyIncompleteError) return void res.destroy(); // the client left mid-body: nothing was forwarded
      this.#o.logger.warn({ event: "request_failed", identity: caller.id, reason: (e as Error).message }, "request failed");
      if (!res.headersSent) sendJson(res, 500, errorResponse(null, SERVER_ERROR, "Internal error"));
      else res.destroy();
    }
  }

  /** The session named by Mcp-Session-Id, if it exists and belongs to the caller. */
  #conn(req: IncomingMessage, caller: Caller): Conn | null {
    const sid = headerOf(req, "mcp-session-id") ?? "";
    const conn = this.#o.sessions.lookup(sid, caller.id) ? this.#conns.get(sid) : undefined;
    if (!conn) {
      this.#o.logger.warn({ event: "session_refused", identity: caller.id, reason: this.#o.sessions.ownedByOther(sid, caller.id) ? "session belongs to another identity" : "unknown session" }, "session refused");
      return null;
    }
    return conn;
  }

  async #post(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const body = await readBody(req, this.#o.limits.maxBodyBytes);
    const decoded = decodeMessage(body, this.#o.limits.maxMessageDepth);
    if (!decoded.ok) {
      auditRefusal(this.#o.audit, caller, "streamable-http", decoded.message);
      return sendJson(res, decoded.status, errorResponse(null, decoded.code, decoded.message));
    }
    const parsed = decoded.value;
    let conn: Conn;
    let created = false;
    if (headerOf(req, "mcp-session-id") === undefined) {
      const isInit = !Array.isArray(parsed) && (parsed as any)?.method === "initialize" && "id" in (parsed as object);
      if (!isInit) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required"));
      const headerCheck = checkMethodHeaders(req, parsed);
      if (headerCheck) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, headerCheck));
      const opened = await this.#open(caller);
      if (typeof opened === "number") {
        return opened === 429
          ? sendJson(res, 429, errorResponse((parsed as any).id ?? null, SERVER_ERROR, "Too many sessions for this identity; close one (DELETE) first"))
          : sendJson(res, 502, errorResponse((parsed as any).id ?? null, SERVER_ERROR, "Upstream MCP server unavailable"));
      }
      conn = opened;
      created = true;
    } else {
      const found = this.#conn(req, caller);
      if (!found) return sendJson(res, 404, errorResponse(null, SESSION_NOT_FOUND, "Session not found"));
      conn = found;
      const headerCheck = checkMethodHeaders(req, parsed);
      if (headerCheck) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, headerCheck));
    }
    const { ids, tokens } = requestsOf(parsed);
    const post: Post = { res, pending: new Set(ids.map(idKey)), tokens: new Set(tokens), started: false, buffered: [] };
    // Registered before the message is forwarded: an answer can only be routed to a POST that is known.
    const fresh = ids.map(idKey).filter((k) => !conn.byId.has(k));
    for (const k of fresh) conn.byId.set(k, post);
    conn.posts.add(post);
    const unregister = () => {
      conn.posts.delete(post);
      for (const k of fresh) if (conn.byId.get(k) === post) conn.byId.delete(k);
    };
    const outcome = await conn.bridge.receive(parsed);
    if (outcome.awaiting.length === 0) {
      unregister();
      if (created && outcome.reply !== undefined) conn.bridge.close("initialize refused");
      if (outcome.reply !== undefined) return sendJson(res, outcome.status, outcome.reply);
      if (outcome.status >= 400) return sendJson(res, outcome.status, errorResponse(null, SERVER_ERROR, "Forbidden"));
      return void res.writeHead(202).end();
    }
    const headers: Record<string, string> = { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" };
    if (created) headers["mcp-session-id"] = conn.bridge.id;
    res.writeHead(200, headers);
    res.flushHeaders();
    post.started = true;
    for (const chunk of post.buffered) res.write(chunk);
    post.buffered = [];
    if (post.pending.size === 0) res.end();
    res.on("close", unregister);
  }

  async #open(caller: Caller): Promise<Conn | 429 | 502> {
    let conn: Conn | null = null;
    const bridge = SessionBridge.open({
      ...this.#o,
      caller,
      transport: "streamable-http",
      deliver: (m) => conn && this.#route(conn, m),
      onEnd: () => {
        if (!conn) return;
        this.#conns.delete(bridge!.id);
        conn.get?.end();
        for (const p of conn.posts) p.res.end();
      },
    });
    if (!bridge) {
      this.#o.logger.warn({ event: "session_limit", identity: caller.id, limit: this.#o.limits.maxSessionsPerIdentity }, "too many sessions for one identity");
      return 429;
    }
    conn = { bridge, get: null, posts: new Set(), byId: new Map(), queue: [] };
    this.#conns.set(bridge.id, conn);
    try {
      await bridge.start();
    } catch (e) {
      this.#o.logger.warn({ event: "upstream_error", identity: caller.id, reason: (e as Error).message }, "could not open the upstream channel");
      return 502;
    }
    return conn;
  }

  /** Where a server message goes: its request's POST stream, else the GET stream, else an open POST, else the queue. */
  #route(conn: Conn, m: JsonRpcMessage | JsonRpcMessage[]): void {
    const chunk = formatSseEvent({ event: "message", data: JSON.stringify(m) });
    const write = (p: Post) => {
      if (!p.started) return void p.buffered.push(chunk);
      p.res.write(chunk);
      this.#bounded(conn, p.res);
    };
    const answers = (Array.isArray(m) ? m : [m]).filter((x) => !("method" in x) && (typeof (x as any).id === "string" || typeof (x as any).id === "number"));
    if (answers.length > 0) {
      const post = conn.byId.get(idKey((answers[0] as { id: JsonRpcId }).id));
      if (!post) return; // its client went away
      write(post);
      for (const a of answers) {
        const k = idKey((a as { id: JsonRpcId }).id);
        post.pending.delete(k);
        if (conn.byId.get(k) === post) conn.byId.delete(k);
      }
      if (post.pending.size === 0 && post.started) post.res.end();
      return;
    }
    const single = m as JsonRpcMessage & { method?: string; params?: any };
    if (single.method === "notifications/progress") {
      const token = single.params?.progressToken;
      for (const p of conn.posts) {
        if (p.tokens.has(token)) return write(p);
      }
    }
    if (conn.get) {
      conn.get.write(chunk);
      return this.#bounded(conn, conn.get);
    }
    const open = [...conn.posts].reverse().find((p) => p.pending.size > 0);
    if (open) return write(open);
    if (conn.queue.length >= MAX_QUEUED) conn.queue.shift();
    conn.queue.push(chunk);
  }

  /**
   * A client that stops reading one of its session's streams: past `slowConsumerCap` queued, the session is ended
   * (its streams closed) instead of the agent queueing without bound. The streams relay one message channel, so there
   * is no single upstream response to pause as the direct Streamable HTTP edge does.
   */
  #bounded(conn: Conn, res: ServerResponse): void {
    if (res.writableLength <= this.#cap || conn.bridge.ended) return;
    this.#o.logger.warn({ event: "slow_consumer", identity: conn.bridge.session.owner, transport: "streamable-http", queuedBytes: res.writableLength, limitBytes: this.#cap }, "client not reading its stream: session ended");
    conn.bridge.close("client not reading its stream");
    res.destroy();
  }

  #get(req: IncomingMessage, res: ServerResponse, caller: Caller): void {
    if (headerOf(req, "mcp-session-id") === undefined) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required"));
    const conn = this.#conn(req, caller);
    if (!conn) return sendJson(res, 404, errorResponse(null, SESSION_NOT_FOUND, "Session not found"));
    if (conn.get) return sendJson(res, 409, errorResponse(null, SERVER_ERROR, "Conflict: only one stream per session"));
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" });
    res.flushHeaders();
    conn.get = res;
    for (const chunk of conn.queue) res.write(chunk);
    conn.queue = [];
    const closer = () => res.end();
    conn.bridge.session.closers.add(closer);
    res.on("close", () => {
      conn.bridge.session.closers.delete(closer);
      if (conn.get === res) conn.get = null;
    });
  }

  #delete(req: IncomingMessage, res: ServerResponse, caller: Caller): void {
    if (headerOf(req, "mcp-session-id") === undefined) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, "Mcp-Session-Id header is required"));
    const conn = this.#conn(req, caller);
    if (!conn) return sendJson(res, 404, errorResponse(null, SESSION_NOT_FOUND, "Session not found"));
    conn.bridge.close("client ended the session");
    res.writeHead(200).end();
  }
}

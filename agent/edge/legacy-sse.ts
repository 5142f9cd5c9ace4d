import type { IncomingMessage, ServerResponse } from "node:http";
import { errorResponse, INVALID_REQUEST, RATE_LIMITED, SERVER_ERROR, SESSION_NOT_FOUND, type JsonRpcMessage } from "../jsonrpc.ts";
import type { Gatekeeper } from "../gatekeeper.ts";
import type { SessionTable } from "../session.ts";
import type { Caller } from "../policy.ts";
import type { UpstreamConnector } from "../upstream/connector.ts";
import type { AuditSink } from "../audit.ts";
import type { LimitsConfig } from "../config.ts";
import type { Logger } from "../../lib/log.ts";
import { auditRefusal, decodeMessage, SessionBridge, slowConsumerCap } from "../bridge.ts";
import { checkMethodHeaders, sendJson } from "./streamable-http.ts";
import { BodyIncompleteError, BodyTooLargeError, readBody } from "../../lib/body.ts";
import { formatSseEvent } from "./sse.ts";

/** Options shared by the edges that work through a `SessionBridge`. */
export interface BridgeEdgeOptions {
  gate: Gatekeeper;
  sessions: SessionTable;
  connector: UpstreamConnector;
  limits: LimitsConfig;
  logger: Logger;
  audit: AuditSink;
  /** `upstream.timeout` for each forwarded request (bridge.ts). */
  timeoutMs: number;
}

/** A comment line every so often keeps idle streams alive through proxies and lets a dead peer be noticed. */
const KEEPALIVE_MS = 15_000;

export function headerOf(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Browsers send Origin; a page on another origin must not drive a client certificate the user has installed. */
export function foreignOrigin(req: IncomingMessage): string | null {
  const origin = headerOf(req, "origin");
  if (origin === undefined) return null;
  try {
    return new URL(origin).host === headerOf(req, "host") ? null : origin;
  } catch {
    return origin;
  }
}

interface Stream {
  bridge: SessionBridge;
  res: ServerResponse;
}

/**
 * The legacy HTTP+SSE transport (protocol 2024-11-05) downstream: `GET <sse path>` opens a session's event stream,
 * whose first event (`endpoint`) names the agent's own message path with the session id; the client POSTs each
 * message there and gets 202, and every answer (including the agent's denials) arrives on the stream. The session is
 * bound to the identity that opened the stream: another identity's POST gets 404 and nothing is forwarded.
 */
export class LegacySseEdge {
  #o: BridgeEdgeOptions;
  readonly #streams = new Map<string, Stream>();

  constructor(opts: BridgeEdgeOptions) {
    this.#o = opts;
  }

  update(opts: Partial<Pick<BridgeEdgeOptions, "limits">>): void {
    this.#o = { ...this.#o, ...opts };
  }

  #coolingDown(res: ServerResponse, caller: Caller): boolean {
    const left = this.#o.gate.coolDown(caller, "sse");
    if (left <= 0) return false;
    sendJson(res, 429, errorResponse(null, RATE_LIMITED, `Too many requests: cool-down for another ${left} ms`, { retryAfterMs: left }), { "retry-after": String(Math.ceil(left / 1000)) });
    return true;
  }

  #foreign(req: IncomingMessage, res: ServerResponse, caller: Caller): boolean {
    const origin = foreignOrigin(req);
    if (origin === null) return false;
    this.#o.logger.warn({ event: "origin_refused", identity: caller.id, origin }, "request with a foreign Origin refused");
    sendJson(res, 403, errorResponse(null, SERVER_ERROR, "Forbidden: Origin not allowed"));
    return true;
  }

  /** `GET <sse path>`: a new session and its event stream. `messagePath` is where its POSTs go. */
  async handleStream(req: IncomingMessage, res: ServerResponse, caller: Caller, messagePath: string): Promise<void> {
    if (req.method !== "GET") return void res.writeHead(405, { allow: "GET" }).end();
    if (this.#foreign(req, res, caller) || this.#coolingDown(res, caller)) return;
    let open = true;
    const bridge = SessionBridge.open({
      ...this.#o,
      caller,
      transport: "sse",
      deliver: (m: JsonRpcMessage | JsonRpcMessage[]) => {
        if (!open) return;
        res.write(formatSseEvent({ event: "message", data: JSON.stringify(m) }));
        const cap = slowConsumerCap(this.#o.limits); // the limits in force now: a reload applies to open streams too
        if (res.writableLength > cap) {
          // The client is not reading: end its session rather than hold an unbounded queue for it.
          open = false;
          this.#o.logger.warn({ event: "slow_consumer", identity: caller.id, transport: "sse", queuedBytes: res.writableLength, limitBytes: cap }, "client not reading its stream: session ended");
          bridge!.close("client not reading its stream");
          res.destroy();
        }
      },
      onEnd: () => {
        this.#streams.delete(bridge!.id);
        // Before the stream started (the upstream channel failed to open) the caller answers with an error instead.
        if (open && res.headersSent) res.end();
        open = false;
      },
    });
    if (!bridge) {
      this.#o.logger.warn({ event: "session_limit", identity: caller.id, limit: this.#o.limits.maxSessionsPerIdentity }, "too many sessions for one identity");
      return sendJson(res, 429, errorResponse(null, SERVER_ERROR, "Too many sessions for this identity; close one first"));
    }
    try {
      await bridge.start();
    } catch (e) {
      this.#o.logger.warn({ event: "upstream_error", identity: caller.id, reason: (e as Error).message }, "could not open the upstream channel");
      return sendJson(res, 502, errorResponse(null, SERVER_ERROR, "Upstream MCP server unavailable"));
    }
    if (bridge.ended) return sendJson(res, 409, errorResponse(null, SERVER_ERROR, "Session ended before its stream opened"));
    this.#streams.set(bridge.id, { bridge, res });
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no" });
    res.write(formatSseEvent({ event: "endpoint", data: `${messagePath}?sessionId=${encodeURIComponent(bridge.id)}` }));
    const keepalive = setInterval(() => res.write(": keepalive\n\n"), KEEPALIVE_MS);
    keepalive.unref();
    // While the stream is open the session is busy (never evicted as idle); dropping the session ends the stream —
    // gracefully, so the errors answering calls in flight still reach the client (revocation destroys the socket).
    const closer = () => res.end();
    bridge.session.closers.add(closer);
    res.on("close", () => {
      clearInterval(keepalive);
      bridge.session.closers.delete(closer);
      open = false;
      bridge.close("client closed the stream");
    });
    this.#o.logger.debug({ event: "sse_session_opened", identity: caller.id, session: bridge.id }, "legacy SSE session opened");
  }

  /** `POST <message path>?sessionId=…`: one client message for an open session; answers arrive on its stream. */
  async handleMessage(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    if (req.method !== "POST") return void res.writeHead(405, { allow: "POST" }).end();
    if (this.#foreign(req, res, caller)) return;
    const sid = new URL(req.url ?? "/", "https://agent").searchParams.get("sessionId") ?? "";
    const owned = this.#o.sessions.lookup(sid, caller.id);
    const stream = owned ? this.#streams.get(sid) : undefined;
    if (!stream) {
      this.#o.logger.warn({ event: "session_refused", identity: caller.id, transport: "sse", reason: this.#o.sessions.ownedByOther(sid, caller.id) ? "session belongs to another identity" : "unknown session" }, "session refused");
      req.resume();
      return sendJson(res, 404, errorResponse(null, SESSION_NOT_FOUND, "Session not found"));
    }
    if (this.#coolingDown(res, caller)) return void req.resume();
    let body: Buffer;
    try {
      body = await readBody(req, this.#o.limits.maxBodyBytes);
    } catch (e) {
      if (e instanceof BodyTooLargeError) return sendJson(res, 413, errorResponse(null, INVALID_REQUEST, `Request body larger than ${this.#o.limits.maxBodyBytes} bytes`), { connection: "close" });
      if (e instanceof BodyIncompleteError) return void res.destroy(); // the client left mid-body: nothing was forwarded
      throw e;
    }
    const decoded = decodeMessage(body, this.#o.limits.maxMessageDepth);
    if (!decoded.ok) {
      auditRefusal(this.#o.audit, caller, "sse", decoded.message);
      return sendJson(res, decoded.status, errorResponse(null, decoded.code, decoded.message));
    }
    const headerCheck = checkMethodHeaders(req, decoded.value);
    if (headerCheck) return sendJson(res, 400, errorResponse(null, INVALID_REQUEST, headerCheck));
    const outcome = await stream.bridge.receive(decoded.value);
    res.writeHead(202, { "content-type": "text/plain" }).end("Accepted");
    // The POST only acknowledges receipt: a refusal reaches the client where answers do, on its stream.
    if (outcome.reply !== undefined && !stream.bridge.ended) stream.res.write(formatSseEvent({ event: "message", data: JSON.stringify(outcome.reply) }));
  }
}

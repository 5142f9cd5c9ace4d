import { randomUUID } from "node:crypto";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { classify, errorResponse, idKey, INVALID_REQUEST, PARSE_ERROR, SERVER_ERROR, type JsonRpcId, type JsonRpcMessage, type JsonRpcResponse } from "./jsonrpc.ts";
import type { ClientMessageContext, Gatekeeper } from "./gatekeeper.ts";
import { DEFAULT_PROTOCOL_VERSION, type Session, type SessionTable } from "./session.ts";
import type { Caller } from "./policy.ts";
import type { Tool } from "./pinning.ts";
import type { UpstreamConnector } from "./upstream/connector.ts";
import type { AuditSink } from "./audit.ts";
import type { LimitsConfig } from "./config.ts";
import type { Logger } from "../lib/log.ts";
import { scanJson } from "./json-scan.ts";

/** The downstream transports, as audit lines and metrics name them. */
export type DownstreamKind = "streamable-http" | "sse" | "ws";

/** How long the agent waits for the answer to a request it sends itself (its own tools/list). */
const INTERNAL_TIMEOUT_MS = 30_000;
/** Server → client requests remembered so a client response can be matched to one (bounded). */
const MAX_SERVER_REQUESTS = 1_000;
/** Timed-out request ids remembered per session so their late answers are dropped (see #lateIds). */
const MAX_TIMED_OUT = 1_000;

const UTF8 = new TextDecoder("utf-8", { fatal: true });

export type Decoded = { ok: true; value: unknown } | { ok: false; status: number; code: number; message: string };

/**
 * One client message (an SSE POST body, a WebSocket frame) from bytes to a JSON value, with the same refusals as the
 * Streamable HTTP edge: strict UTF-8, the pre-scan (depth, duplicate keys, `__proto__`), then one JSON.parse.
 */
export function decodeMessage(data: Buffer | string, maxDepth: number): Decoded {
  let text: string;
  if (typeof data === "string") text = data;
  else {
    try {
      text = UTF8.decode(data);
    } catch {
      return { ok: false, status: 400, code: PARSE_ERROR, message: "Parse error: the body is not valid UTF-8" };
    }
  }
  const unsafe = scanJson(text, maxDepth);
  if (unsafe) return { ok: false, status: 400, code: INVALID_REQUEST, message: `Invalid Request: ${unsafe}` };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false, status: 400, code: PARSE_ERROR, message: "Parse error: the body is not valid JSON" };
  }
}

/**
 * How many bytes a message edge (legacy SSE, WebSocket) may hold queued for one client that is not reading: 16 of the
 * largest messages the agent accepts (16 MiB by default). These edges relay a message channel shared by the session's
 * calls, so there is no one upstream stream to pause as the Streamable HTTP edge does; past this cap the session is
 * ended instead, and the agent's memory stays bounded whatever the upstream sends.
 */
export function slowConsumerCap(limits: Pick<LimitsConfig, "maxBodyBytes">): number {
  return 16 * limits.maxBodyBytes;
}

/** A message refused before any session or policy work, audited the way the Streamable HTTP edge audits it. */
export function auditRefusal(audit: AuditSink, caller: Caller, transport: DownstreamKind, reason: string): void {
  audit.record({ identity: caller.id, session: null, method: "(unparsed)", decision: "deny", rule: null, reason, decisionUs: 0, transport });
}

export interface BridgeOptions {
  gate: Gatekeeper;
  sessions: SessionTable;
  connector: UpstreamConnector;
  caller: Caller;
  transport: DownstreamKind;
  logger: Logger;
  limits: LimitsConfig;
  /**
   * `upstream.timeout`: how long a forwarded request may wait for its answer without news of it (a progress
   * notification for its token restarts the clock). Then the client gets -32000 "timed out" and the upstream a
   * `notifications/cancelled`. 0 = no timeout.
   */
  timeoutMs: number;
  /** Sends a message (or a batch's answers) to the client. */
  deliver: (msg: JsonRpcMessage | JsonRpcMessage[]) => void;
  /** The bridge ended (upstream channel gone, session dropped, revocation): the edge closes its side. */
  onEnd: (reason: string) => void;
}

/** What became of one client message. */
export interface Outcome {
  /** The answer the client gets instead of forwarding (a denial, an invalid message); absent when forwarded. */
  reply?: JsonRpcResponse | JsonRpcResponse[];
  /** The HTTP status an HTTP transport answers with: the gate's for replies, 202 for forwarded messages. */
  status: number;
  /** Request ids that were forwarded: their responses arrive through `deliver`. */
  awaiting: JsonRpcId[];
}

interface InFlight {
  done?: () => void;
  /** The upstream.timeout clock of this request (restarted by its progress notifications). */
  timer?: NodeJS.Timeout;
  /** The request's progressToken (as an idKey), if it asked for progress. */
  token?: string;
  /** The request's id and method, for its timeout (set when it is forwarded). */
  id?: JsonRpcId;
  method?: string;
  /** The batch the request came in, whose answers are delivered together. */
  batch?: { pending: Set<string>; replies: JsonRpcMessage[]; done?: () => void };
}

function isRequestLike(m: unknown): m is { id: JsonRpcId; method: string } {
  return m !== null && typeof m === "object" && typeof (m as any).method === "string" && (typeof (m as any).id === "string" || typeof (m as any).id === "number");
}

/**
 * One downstream MCP session bridged, message by message, to one upstream channel: downstream transport ⇄ Gatekeeper
 * ⇄ `UpstreamConnector` channel. Transport-independent: the legacy SSE and WebSocket edges, and the Streamable HTTP
 * edge in front of a non-HTTP upstream, all feed it parsed client messages and deliver what it hands back.
 *
 * - The session is the agent's own (a random id), bound to the identity that opened it, and lives in the endpoint's
 *   `SessionTable` like any other: revocation, expiry, eviction and the idle sweep end the bridge with it.
 * - Client messages go through the same `Gatekeeper` calls as on the HTTP edge (same verdicts, audit, metrics); only
 *   what it allows is sent upstream. Batches only on 2025-03-26 sessions, answered together.
 * - Server messages: responses pass `filterServerMessage` (negotiated version, pinned and per-caller filtered
 *   tools/list); notifications, progress and server requests (sampling, elicitation, roots) pass through, and client
 *   responses are forwarded only if they answer a server request actually pending. `notifications/tools/list_changed`
 *   is relayed and then the agent lists the tools itself, so pinning judges the new definitions at once.
 * - When the channel dies, every request still in flight is answered with -32000 and the session ends.
 * - `upstream.timeout` per request: no answer and no progress for its token within it → -32000 "timed out" to the
 *   client, `notifications/cancelled` upstream, and a late answer is dropped.
 */
export class SessionBridge {
  readonly session: Session;
  readonly #o: BridgeOptions;
  #channel!: Transport;
  readonly #inflight = new Map<string, InFlight>();
  /** progressToken (idKey) → the request's idKey, for the requests in flight that asked for progress. */
  readonly #byToken = new Map<string, string>();
  /**
   * Ids of requests answered "timed out" whose upstream answer has not come (cancellation is advisory, so it still
   * may): such an answer is dropped, and the id is not accepted again until it came, so a late answer can never be
   * taken for the answer to a new request that reused the id. Bounded (oldest forgotten first).
   */
  readonly #lateIds = new Set<string>();
  readonly #internal = new Map<string, { resolve: (m: JsonRpcResponse) => void; timer: NodeJS.Timeout }>();
  readonly #serverRequests = new Set<string>();
  #ended = false;

  private constructor(o: BridgeOptions, session: Session) {
    this.#o = o;
    this.session = session;
    session.ended = () => this.close("session ended");
  }

  /**
   * Opens a session for `caller`, or returns null when the identity is at `limits.maxSessionsPerIdentity` and none of
   * its sessions is idle (an idle one is evicted to make room, as on the HTTP edge).
   */
  static open(o: BridgeOptions): SessionBridge | null {
    const { sessions, caller, limits } = o;
    if (sessions.countOwned(caller.id) >= limits.maxSessionsPerIdentity) {
      const victim = sessions.oldestIdle(caller.id);
      if (!victim) return null;
      o.logger.info({ event: "session_evicted", identity: caller.id, session: victim.upstreamId, limit: limits.maxSessionsPerIdentity }, "session limit reached; least recently used session closed");
      sessions.delete(victim.key);
    }
    const id = randomUUID();
    return new SessionBridge(o, sessions.create(id, id, caller.id, DEFAULT_PROTOCOL_VERSION));
  }

  get id(): string {
    return this.session.key;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Opens and starts the upstream channel; on failure the session is gone and the error is thrown. */
  async start(): Promise<void> {
    const o = this.#o;
    const session = this.session;
    try {
      this.#channel = o.connector.open({ identity: o.caller.id, sessionId: session.key });
      this.#channel.onmessage = (m) => this.#fromServer(m as JsonRpcMessage);
      this.#channel.onerror = (e) => o.logger.warn({ event: "upstream_channel_error", identity: o.caller.id, session: session.key, reason: e.message }, "upstream channel error");
      this.#channel.onclose = () => this.close("upstream channel closed");
      await this.#channel.start();
    } catch (e) {
      this.close(`upstream channel failed to start: ${(e as Error).message}`);
      throw e;
    }
  }

  #ctx(): ClientMessageContext {
    return { caller: this.#o.caller, session: this.session, transport: this.#o.transport, fetchTools: () => this.#listTools() };
  }

  /** Decides one parsed client message (or batch) and forwards it if allowed. */
  async receive(parsed: unknown): Promise<Outcome> {
    if (this.#ended) return { status: 404, awaiting: [], reply: errorResponse(null, SERVER_ERROR, "Session ended") };
    this.session.lastSeen = Date.now();
    if (Array.isArray(parsed)) return this.#receiveBatch(parsed);
    const c = classify(parsed);
    if (c.kind === "request") {
      if (this.#inflight.has(idKey(c.msg.id)) || this.#lateIds.has(idKey(c.msg.id))) {
        return { status: 400, awaiting: [], reply: errorResponse(c.msg.id, INVALID_REQUEST, "Invalid Request: a request with this id is still in flight") };
      }
      if (c.msg.method === "initialize" && typeof c.msg.params?.protocolVersion === "string") this.session.protocolVersion = c.msg.params.protocolVersion;
    }
    if (c.kind === "response") {
      // A client response carries no authority of its own, but it must answer something the server asked.
      const key = idKey(c.msg.id as JsonRpcId);
      if (!this.#serverRequests.delete(key)) {
        this.#o.logger.warn({ event: "unsolicited_response", identity: this.#o.caller.id, session: this.session.key }, "client response to no pending server request dropped");
        return { status: 202, awaiting: [] };
      }
    }
    const verdict = await this.#o.gate.checkClientMessage(this.#ctx(), parsed);
    if (verdict.action === "reply") {
      return { status: verdict.status, awaiting: [], reply: verdict.reply ?? undefined };
    }
    if (c.kind === "request") this.#track(c.msg as { id: JsonRpcId; method: string; params?: any }, { done: verdict.done });
    // Not awaited: over HTTP the send lasts until the upstream's response headers, and the edge answers its client
    // (202) as soon as the message is decided. Sends start in arrival order, which is what the upstream sees.
    void this.#send(parsed as JSONRPCMessage);
    return { status: 202, awaiting: c.kind === "request" ? [c.msg.id] : [] };
  }

  async #receiveBatch(items: unknown[]): Promise<Outcome> {
    if (items.length === 0) return { status: 400, awaiting: [], reply: errorResponse(null, INVALID_REQUEST, "Invalid Request: empty batch") };
    if (this.session.protocolVersion !== "2025-03-26") {
      return { status: 400, awaiting: [], reply: errorResponse(null, INVALID_REQUEST, `Invalid Request: JSON-RPC batches are not part of protocol version ${this.session.protocolVersion}`) };
    }
    const ids = items.filter(isRequestLike).map((m) => idKey(m.id));
    if (new Set(ids).size !== ids.length || ids.some((k) => this.#inflight.has(k) || this.#lateIds.has(k))) {
      return { status: 400, awaiting: [], reply: errorResponse(null, INVALID_REQUEST, "Invalid Request: request ids in a batch must be unique and not in flight") };
    }
    const verdict = await this.#o.gate.checkBatch(this.#ctx(), items);
    if (!verdict.forward) return { status: 200, awaiting: [], reply: verdict.replies };
    const awaiting: JsonRpcId[] = [];
    if (ids.length > 0) {
      const batch = { pending: new Set(ids), replies: [] as JsonRpcMessage[], done: verdict.done };
      for (const m of items) {
        if (!isRequestLike(m)) continue;
        this.#track(m as { id: JsonRpcId; method: string; params?: any }, { batch });
        awaiting.push(m.id);
      }
    } else verdict.done();
    for (const m of items) {
      if (classify(m).kind === "response" && !this.#serverRequests.delete(idKey((m as { id: JsonRpcId }).id))) continue;
      void this.#send(m as JSONRPCMessage);
    }
    return { status: 202, awaiting };
  }

  /** Registers a forwarded request as in flight and starts its upstream.timeout clock. */
  #track(m: { id: JsonRpcId; method: string; params?: any }, f: InFlight): void {
    const key = idKey(m.id);
    const token = m.params?._meta?.progressToken;
    if (typeof token === "string" || typeof token === "number") {
      f.token = idKey(token);
      this.#byToken.set(f.token, key);
    }
    f.id = m.id;
    f.method = m.method;
    this.#inflight.set(key, f);
    this.#arm(key, f);
  }

  #arm(key: string, f: InFlight): void {
    if (this.#o.timeoutMs <= 0) return;
    clearTimeout(f.timer);
    f.timer = setTimeout(() => this.#timedOut(key, f.id!, f.method!), this.#o.timeoutMs);
    f.timer.unref();
  }

  /**
   * No answer (nor progress) within upstream.timeout: the client is answered now, and the upstream is told to stop
   * (`notifications/cancelled`), so neither side waits for ever; an answer arriving later is dropped.
   */
  #timedOut(key: string, id: JsonRpcId, method: string): void {
    if (this.#ended || !this.#inflight.has(key)) return;
    this.#o.logger.warn({ event: "upstream_timeout", identity: this.#o.caller.id, session: this.session.key, method, timeoutMs: this.#o.timeoutMs }, "no answer from the upstream in time: request cancelled");
    // Its answer may still come: remembered so it is dropped, and the gate's note of the request is dropped now.
    this.#lateIds.add(key);
    if (this.#lateIds.size > MAX_TIMED_OUT) this.#lateIds.delete(this.#lateIds.values().next().value!);
    this.session.pending.delete(key);
    this.#channel.send({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: id, reason: `no answer within ${this.#o.timeoutMs} ms (mcpmesh upstream.timeout)` } } as JSONRPCMessage).catch(() => {});
    this.#answer(id, errorResponse(id, SERVER_ERROR, "Upstream MCP server timed out"));
  }

  async #send(m: JSONRPCMessage): Promise<void> {
    try {
      await this.#channel.send(m);
    } catch (e) {
      this.#o.logger.warn({ event: "upstream_error", identity: this.#o.caller.id, session: this.session.key, reason: (e as Error).message }, "could not send to the upstream");
      if (isRequestLike(m)) this.#answer(m.id, errorResponse(m.id, SERVER_ERROR, "Upstream MCP server unavailable"));
    }
  }

  /** Routes the response for a forwarded request to the client (alone, or with the rest of its batch). */
  #answer(id: JsonRpcId, msg: JsonRpcMessage): void {
    const key = idKey(id);
    const f = this.#inflight.get(key);
    if (!f) return;
    this.#inflight.delete(key);
    clearTimeout(f.timer);
    if (f.token !== undefined && this.#byToken.get(f.token) === key) this.#byToken.delete(f.token);
    if (!f.batch) {
      f.done?.();
      this.#o.deliver(msg);
      return;
    }
    f.batch.replies.push(msg);
    f.batch.pending.delete(key);
    if (f.batch.pending.size === 0) {
      f.batch.done?.();
      this.#o.deliver(f.batch.replies);
    }
  }

  #fromServer(m: JsonRpcMessage): void {
    if (this.#ended || m === null || typeof m !== "object") return;
    const hasId = "id" in m && (typeof m.id === "string" || typeof m.id === "number");
    if (!("method" in m)) {
      if (!hasId) {
        this.#o.logger.warn({ event: "upstream_error_unrouted", identity: this.#o.caller.id, session: this.session.key, error: (m as JsonRpcResponse).error?.message }, "upstream sent a response without an id");
        return;
      }
      const id = (m as JsonRpcResponse).id as JsonRpcId;
      const mine = this.#internal.get(idKey(id));
      if (mine) {
        this.#internal.delete(idKey(id));
        clearTimeout(mine.timer);
        mine.resolve(m as JsonRpcResponse);
        return;
      }
      if (this.#lateIds.delete(idKey(id))) return; // the late answer to a request the client was told timed out
      if (!this.#inflight.has(idKey(id))) return; // answered already (an error on a dead stream), or never asked
      const wasInit = this.session.pending.get(idKey(id))?.method === "initialize";
      const out = this.#o.gate.filterServerMessage(this.session, this.#o.caller, m);
      // The channel sends the negotiated version on later requests (MCP-Protocol-Version over HTTP).
      if (wasInit) this.#channel.setProtocolVersion?.(this.session.protocolVersion);
      this.#answer(id, out);
      return;
    }
    if (hasId) {
      // A server request (sampling, elicitation, roots/list, ping): the client's response may go back upstream.
      if (this.#serverRequests.size >= MAX_SERVER_REQUESTS) this.#serverRequests.delete(this.#serverRequests.values().next().value!);
      this.#serverRequests.add(idKey((m as { id: JsonRpcId }).id));
    }
    if (m.method === "notifications/progress") {
      // News of a request in flight: its timeout starts over (as the SDK's resetTimeoutOnProgress does).
      const t = (m as { params?: { progressToken?: unknown } }).params?.progressToken;
      const key = typeof t === "string" || typeof t === "number" ? this.#byToken.get(idKey(t)) : undefined;
      const f = key === undefined ? undefined : this.#inflight.get(key);
      if (key !== undefined && f) this.#arm(key, f);
    }
    const out = this.#o.gate.filterServerMessage(this.session, this.#o.caller, m);
    this.#o.deliver(out);
    if (m.method === "notifications/tools/list_changed") void this.#relist();
  }

  /** After list_changed: the agent lists the tools itself so pinning judges changed definitions now (and alerts). */
  async #relist(): Promise<void> {
    try {
      const tools = await this.#listTools();
      const visible = this.#o.gate.catalog(this.session, this.#o.caller, tools);
      this.#o.logger.info({ event: "tools_relisted", identity: this.#o.caller.id, session: this.session.key, tools: tools.length, visible: visible.length }, "tools re-listed after list_changed");
    } catch (e) {
      if (!this.#ended) this.#o.logger.warn({ event: "tools_fetch_failed", identity: this.#o.caller.id, reason: (e as Error).message }, "could not re-list the upstream's tools after list_changed");
    }
  }

  /** A request of the agent's own on this session's channel (never shown to the client). */
  #request(method: string, params: Record<string, unknown>): Promise<JsonRpcResponse> {
    const id = `mcpmesh-${randomUUID()}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#internal.delete(idKey(id));
        reject(new Error(`${method}: no answer within ${INTERNAL_TIMEOUT_MS} ms`));
      }, INTERNAL_TIMEOUT_MS);
      timer.unref();
      this.#internal.set(idKey(id), { resolve, timer });
      this.#channel.send({ jsonrpc: "2.0", id, method, params } as JSONRPCMessage).catch((e) => {
        this.#internal.delete(idKey(id));
        clearTimeout(timer);
        reject(e as Error);
      });
    });
  }

  /** Every page of the upstream's tools. */
  async #listTools(): Promise<Tool[]> {
    const tools: Tool[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 100; page++) {
      const res = await this.#request("tools/list", cursor ? { cursor } : {});
      if (res.error || !Array.isArray(res.result?.tools)) throw new Error(`tools/list failed: ${res.error?.message ?? "no tools in the answer"}`);
      tools.push(...(res.result.tools as Tool[]));
      cursor = typeof res.result.nextCursor === "string" ? res.result.nextCursor : undefined;
      if (!cursor) break;
    }
    return tools;
  }

  /** Ends the session: in-flight requests are answered with an error, the channel and the session are closed. */
  close(reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const key of [...this.#inflight.keys()]) {
      // The id is only kept as a key; rebuild it (numbers are "n:", strings "s:").
      this.#answerClosed(key.startsWith("n:") ? Number(key.slice(2)) : key.slice(2));
    }
    for (const [, w] of this.#internal) {
      clearTimeout(w.timer);
      w.resolve(errorResponse(null, SERVER_ERROR, "session ended"));
    }
    this.#internal.clear();
    this.#o.logger.debug({ event: "bridge_closed", identity: this.#o.caller.id, session: this.session.key, transport: this.#o.transport, reason }, "session bridge closed");
    if (this.#channel) void this.#channel.close().catch(() => {});
    this.#o.sessions.delete(this.session.key);
    this.#o.onEnd(reason);
  }

  #answerClosed(id: JsonRpcId): void {
    try {
      this.#answer(id, errorResponse(id, SERVER_ERROR, "Upstream MCP server unavailable: the session's upstream channel closed"));
    } catch {
      // the client side is gone too
    }
  }
}

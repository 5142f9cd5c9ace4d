import { randomUUID } from "node:crypto";
import { resolve as resolvePath } from "node:path";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { StreamableHTTPClientTransport, StreamableHTTPError } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport, SseError } from "@modelcontextprotocol/sdk/client/sse.js";
import type { JSONRPCMessage, JSONRPCRequest, JSONRPCNotification } from "@modelcontextprotocol/sdk/types.js";
import { InvalidArgumentError, MeshError } from "../lib/errors.ts";
import { silentLogger, type Logger } from "../lib/log.ts";
import { parseSpiffeId } from "../lib/spiffe.ts";
import { createMeshFetch, PeerRejectedError, type MeshFetch } from "./fetch.ts";
import { loadIdentity } from "./store.ts";
import { RenewalScheduler, type RotationOptions } from "./rotation.ts";
import { MeshWebSocketTransport } from "./ws-transport.ts";

export type RemoteTransportKind = "streamable-http" | "sse" | "ws";
export type ConnectTransportKind = "auto" | RemoteTransportKind;
export const CONNECT_TRANSPORTS: readonly ConnectTransportKind[] = ["auto", "streamable-http", "sse", "ws"];

export interface ConnectOptions {
  /** The agent's MCP endpoint: https://HOST:PORT/mcp (Streamable HTTP, SSE fallback), https://…/sse, wss://…/ws. */
  url: string;
  /** An enrolled identity directory (`mcpmesh enroll TOKEN --dir DIR`). */
  identityDir: string;
  /** Require the agent to present exactly this SPIFFE ID. */
  expect?: string;
  transport?: ConnectTransportKind;
  logger?: Logger;
  /** Renew the certificate in-process at half-life (default true); options go to RenewalScheduler. */
  renew?: boolean | Omit<RotationOptions, "dir" | "logger">;
  /** The transport facing the local client; default: stdio of this process. */
  local?: Transport;
  reconnect?: {
    minDelayMs?: number;
    maxDelayMs?: number;
    /** A request still waiting for the agent after this long is answered with an error (default 30 s). */
    requestTimeoutMs?: number;
  };
}

export interface ResolvedConnectOptions {
  url: URL;
  identityDir: string;
  expect?: string;
  transport: ConnectTransportKind;
}

const EXAMPLE_URL = "https://agent.example.org:8443/mcp";

/** Validates every option up front; each error names the option and says how to fix it. */
export function resolveConnectOptions(o: { url?: string; identityDir?: string; expect?: string; transport?: string }): ResolvedConnectOptions {
  if (!o.url) throw new InvalidArgumentError("url", `missing: pass the agent's URL, e.g. ${EXAMPLE_URL}`);
  let url: URL;
  try {
    url = new URL(o.url);
  } catch {
    throw new InvalidArgumentError("url", `"${o.url}" is not a URL; e.g. ${EXAMPLE_URL}`);
  }
  const transport = (o.transport ?? "auto") as ConnectTransportKind;
  if (!CONNECT_TRANSPORTS.includes(transport)) throw new InvalidArgumentError("transport", `"${o.transport}" is not one of ${CONNECT_TRANSPORTS.join(", ")}`);
  if (url.protocol === "http:" || url.protocol === "ws:") {
    throw new InvalidArgumentError("url", `${url.protocol}// is not allowed: the mesh speaks mTLS only; use ${url.protocol === "http:" ? "https" : "wss"}://${url.host}${url.pathname}`);
  }
  if (url.protocol !== "https:" && url.protocol !== "wss:") throw new InvalidArgumentError("url", `scheme ${url.protocol} is not supported; use https:// (Streamable HTTP or SSE) or wss:// (WebSocket)`);
  if (url.username || url.password) throw new InvalidArgumentError("url", "must not carry a user name or password: the identity directory is the credential");
  if (url.hash) throw new InvalidArgumentError("url", `must not have a #fragment ("${url.hash}")`);
  if (transport === "ws" && url.protocol !== "wss:") throw new InvalidArgumentError("url", `--transport ws needs a wss:// URL, e.g. wss://${url.host}/ws`);
  if ((transport === "streamable-http" || transport === "sse") && url.protocol !== "https:") {
    throw new InvalidArgumentError("url", `--transport ${transport} needs an https:// URL, e.g. https://${url.host}${transport === "sse" ? "/sse" : "/mcp"}`);
  }
  if (!o.identityDir) throw new InvalidArgumentError("identity", "missing: pass --identity DIR, the directory `mcpmesh enroll TOKEN --dir DIR` wrote");
  const identityDir = resolvePath(o.identityDir);
  try {
    loadIdentity(identityDir);
  } catch (e) {
    throw new InvalidArgumentError("identity", (e as Error).message, { cause: e });
  }
  if (o.expect !== undefined && !parseSpiffeId(o.expect)) {
    throw new InvalidArgumentError("expect", `"${o.expect}" is not a SPIFFE ID; e.g. spiffe://example.org/agents/weather`);
  }
  return { url, identityDir, expect: o.expect, transport };
}

/** How a run of `connect` ended: `error` is set when it stopped on a failure it cannot recover from. */
export interface ConnectResult {
  error?: MeshError;
}

export interface MeshConnection {
  /** The transport in use once the first message went through (null before). */
  readonly transport: RemoteTransportKind | null;
  readonly scheduler: RenewalScheduler | null;
  /** Settles when the connection ended (local client gone, close(), or a fatal error). */
  readonly closed: Promise<ConnectResult>;
  close(): Promise<void>;
}

/** JSON-RPC error codes `connect` answers with itself (implementation-defined server errors, -32000..-32099). */
export const CONNECT_ERRORS = { unreachable: -32001, lost: -32002, agentHttp: -32003, rejected: -32004, closed: -32005 } as const;

type Id = string | number;
type Queued = { msg: JSONRPCMessage; since: number };
type Classified =
  | { kind: "fatal"; error: MeshError }
  | { kind: "unreachable"; reason: string }
  | { kind: "session-lost" }
  | { kind: "fallback"; status: number }
  | { kind: "http"; status: number; text: string; rpcError?: { code: number; message: string; data?: unknown } }
  | { kind: "lost"; reason: string };

const isRequest = (m: JSONRPCMessage): m is JSONRPCRequest => "method" in m && "id" in m && m.id !== undefined;
const isResponse = (m: JSONRPCMessage): m is JSONRPCMessage & { id: Id } => !("method" in m) && "id" in m;
const CONNECT_CODES = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT", "ECONNABORTED"]);
// OpenSSL's verdicts on the agent's chain: a wrong CA is a configuration (or attack) problem, not a network one.
const TLS_VERIFY_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE", "UNABLE_TO_GET_ISSUER_CERT", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT", "CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID", "CERT_SIGNATURE_FAILURE", "CERT_REVOKED", "CERT_UNTRUSTED",
  "ERR_TLS_CERT_ALTNAME_INVALID", "INVALID_PURPOSE", "CERT_REJECTED",
]);

function causes(e: unknown): any[] {
  const out: any[] = [];
  for (let c: any = e, i = 0; c && i < 8; c = c.cause, i++) {
    out.push(c);
    if (c instanceof AggregateError) out.push(...c.errors);
  }
  return out;
}

function classify(e: unknown, hadSession: boolean): Classified {
  const chain = causes(e);
  const rejected = chain.find((c) => c instanceof PeerRejectedError);
  if (rejected) return { kind: "fatal", error: rejected };
  const tls = chain.find((c) => typeof c?.code === "string" && TLS_VERIFY_CODES.has(c.code));
  if (tls) return { kind: "fatal", error: new MeshError("MCPMESH_PEER_REJECTED", `the agent's certificate was rejected (${tls.code}): ${tls.message}; is --identity's ca.pem the mesh's roots?`) };
  if (e instanceof StreamableHTTPError) {
    const status = e.code ?? 0;
    if (status === 404 && hadSession) return { kind: "session-lost" };
    const text = e.message.replace(/^Streamable HTTP error: (Error POSTing to endpoint: )?/, "");
    let rpcError: { code: number; message: string; data?: unknown } | undefined;
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error?.code === "number" && typeof body.error?.message === "string") rpcError = body.error;
    } catch {
      // not a JSON-RPC body
    }
    if (status === 400 || status === 404 || status === 405) return { kind: "fallback", status };
    return { kind: "http", status, text: text.slice(0, 300), rpcError };
  }
  const status = (e as { status?: number } | null)?.status;
  if (typeof status === "number") return { kind: "http", status, text: (e as Error).message };
  const connectFailure = chain.find((c) => typeof c?.code === "string" && CONNECT_CODES.has(c.code));
  if (connectFailure) return { kind: "unreachable", reason: `${connectFailure.code}${connectFailure.address ? ` ${connectFailure.address}:${connectFailure.port}` : ""}` };
  const msg = chain.map((c) => c?.code ?? c?.message).filter(Boolean).join(": ");
  return { kind: "lost", reason: msg || String(e) };
}

/** The JSON-RPC ids of the requests in a POST body the SDK sends (one message or a batch). */
function requestIds(body: unknown): Id[] {
  if (typeof body !== "string") return [];
  try {
    const parsed = JSON.parse(body);
    return (Array.isArray(parsed) ? parsed : [parsed]).filter((m) => m && typeof m.method === "string" && (typeof m.id === "string" || typeof m.id === "number")).map((m) => m.id);
  } catch {
    return [];
  }
}

class RemoteRpcError extends Error {
  constructor(readonly error: { code: number; message: string }) {
    super(`${error.message} (${error.code})`);
  }
}

/**
 * `mcpmesh connect`: a stdio MCP server for a local client, piped to an agent over mTLS. Messages pass through
 * unchanged (this is a pipe, not a second policy point). What it adds is transport care: the Streamable HTTP → SSE
 * fallback of the MCP spec's backwards-compatibility section, in-process certificate renewal, and reconnection: after
 * a drop it retries with backoff, keeps the session when the agent still knows it, and otherwise re-initializes
 * transparently by replaying the local client's initialize; requests lost with a connection get a JSON-RPC error.
 */
export async function startConnect(opts: ConnectOptions): Promise<MeshConnection> {
  const resolved = resolveConnectOptions(opts);
  const c = new Connector(resolved, opts);
  await c.start();
  return c;
}

class Connector implements MeshConnection {
  readonly #o: ResolvedConnectOptions;
  readonly #log: Logger;
  readonly #local: Transport;
  readonly #fetch: MeshFetch;
  readonly #minDelay: number;
  readonly #maxDelay: number;
  readonly #requestTimeout: number;
  readonly #privatePrefix = `mcpmesh-connect-${randomUUID()}-`;
  readonly scheduler: RenewalScheduler | null = null;
  readonly closed: Promise<ConnectResult>;
  #resolveClosed!: (r: ConnectResult) => void;
  #link: Transport | null = null;
  #kind: RemoteTransportKind | null = null;
  #generation = 0;
  #state: "idle" | "reconnecting" | "up" | "closed" = "idle";
  #queue: Queued[] = [];
  /** The local client's requests the agent has not answered yet, with the link generation they went out on. */
  #inflight = new Map<Id, { generation: number }>();
  #private = new Map<Id, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  #privateSeq = 0;
  #initRequest: JSONRPCRequest | null = null;
  #initialized: JSONRPCNotification | null = null;
  #sessionUp = false;
  #protocolVersion: string | undefined;
  #failures = 0;
  /** When each message first arrived from the local client: a request re-queued after a failed send keeps its age. */
  #firstSeen = new WeakMap<object, number>();
  #timer: NodeJS.Timeout | null = null;
  #stdinEnd: (() => void) | null = null;

  constructor(o: ResolvedConnectOptions, opts: ConnectOptions) {
    this.#o = o;
    this.#log = opts.logger ?? silentLogger();
    this.#local = opts.local ?? new StdioServerTransport();
    this.#fetch = createMeshFetch(o.identityDir, { expect: o.expect });
    this.#minDelay = opts.reconnect?.minDelayMs ?? 250;
    this.#maxDelay = opts.reconnect?.maxDelayMs ?? 5000;
    this.#requestTimeout = opts.reconnect?.requestTimeoutMs ?? 30_000;
    this.closed = new Promise((r) => (this.#resolveClosed = r));
    if (opts.renew !== false) {
      this.scheduler = new RenewalScheduler({ ...(typeof opts.renew === "object" ? opts.renew : {}), dir: o.identityDir, logger: this.#log });
      this.scheduler.on("expired", () => this.#log.alert({ event: "certificate_expired" }, "the certificate expired: calls will fail until the identity is enrolled again"));
    }
    if (!opts.local) {
      // The SDK's stdio transport does not notice the client going away; the end of stdin is that signal.
      this.#stdinEnd = () => void this.close();
      process.stdin.once("end", this.#stdinEnd);
    }
  }

  get transport(): RemoteTransportKind | null {
    return this.#kind;
  }

  async start(): Promise<void> {
    this.#local.onmessage = (m) => this.#fromLocal(m);
    this.#local.onerror = (e) => this.#log.warn({ event: "local_error", reason: e.message }, "bad message from the local client");
    this.#local.onclose = () => void this.close();
    await this.#local.start();
    this.scheduler?.start();
    this.#log.info({ event: "connect_started", url: this.#o.url.href, transport: this.#o.transport, expect: this.#o.expect ?? null }, "waiting for the local client");
  }

  // ---------------------------------------------------------------------------------------------------------------
  // local client → agent

  #fromLocal(msg: JSONRPCMessage): void {
    if (this.#state === "closed") return;
    if (isRequest(msg)) {
      if (msg.method === "initialize") {
        this.#initRequest = structuredClone(msg);
        this.#sessionUp = false;
      }
      this.#inflight.set(msg.id, { generation: -1 });
    } else if ("method" in msg && msg.method === "notifications/initialized") {
      this.#initialized = structuredClone(msg) as JSONRPCNotification;
    }
    if (this.#state === "up") {
      this.#firstSeen.set(msg, Date.now());
      void this.#deliver(msg);
      return;
    }
    this.#firstSeen.set(msg, Date.now());
    this.#queue.push({ msg, since: Date.now() });
    if (this.#state === "idle") this.#startReconnect("first message");
  }

  async #deliver(msg: JSONRPCMessage): Promise<void> {
    const link = this.#link!;
    const generation = this.#generation;
    if (isRequest(msg)) {
      const entry = this.#inflight.get(msg.id);
      if (entry) entry.generation = generation;
    }
    try {
      await link.send(msg);
      this.#failures = 0;
    } catch (e) {
      this.#onSendError(msg, e, generation);
    }
  }

  #onSendError(msg: JSONRPCMessage, e: unknown, generation: number): void {
    if (this.#state === "closed") return;
    const c = classify(e, this.#kind === "streamable-http" && this.#sessionUp);
    switch (c.kind) {
      case "fatal":
        this.#fatal(c.error);
        return;
      case "unreachable":
      case "session-lost":
        // Nothing reached the agent (or the agent no longer knows the session): send it again once reconnected.
        // A refused connection counts as a failure, so a link that opens without touching the network (Streamable
        // HTTP) cannot spin: the next attempt backs off.
        if (c.kind === "unreachable") {
          this.#failures++;
          this.#log.warn({ event: "agent_connect_failed", attempt: this.#failures, reason: c.reason }, "cannot reach the agent; retrying");
        }
        if (isRequest(msg)) {
          const entry = this.#inflight.get(msg.id);
          if (entry) entry.generation = -1; // queued again, not lost with its link
        }
        this.#queue.push({ msg, since: this.#firstSeen.get(msg) ?? Date.now() });
        // Even when a newer link exists: the reconnect's probe finds out whether it works, then flushes the queue.
        this.#startReconnect(c.kind === "unreachable" ? `agent unreachable (${c.reason})` : "the agent no longer knows the session");
        return;
      case "fallback":
      case "http":
        if (isRequest(msg)) {
          const rpc = c.kind === "http" ? c.rpcError : undefined;
          this.#reply(msg.id, rpc ?? { code: CONNECT_ERRORS.agentHttp, message: `the agent answered HTTP ${c.status}${c.kind === "http" && c.text ? `: ${c.text}` : ""}` });
        } else this.#log.warn({ event: "agent_http_error", status: c.status }, "the agent refused a message");
        return;
      case "lost":
        if (isRequest(msg)) this.#reply(msg.id, { code: CONNECT_ERRORS.lost, message: `the connection to the agent was lost while sending (${c.reason}); the request may or may not have run` });
        if (generation === this.#generation) this.#startReconnect(`connection lost (${c.reason})`);
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // agent → local client

  #fromRemote(msg: JSONRPCMessage, generation: number): void {
    if (this.#state === "closed") return;
    if (isResponse(msg)) {
      const p = this.#private.get(msg.id);
      if (p) {
        this.#private.delete(msg.id);
        if ("error" in msg) p.reject(new RemoteRpcError((msg as any).error));
        else p.resolve((msg as any).result);
        return;
      }
      if (!this.#inflight.has(msg.id)) {
        // Already answered with an error when its connection was lost: a second answer would confuse the client.
        this.#log.debug({ event: "late_response_dropped", id: msg.id }, "dropped an answer to a request already failed");
        return;
      }
      this.#inflight.delete(msg.id);
      if (this.#initRequest && msg.id === this.#initRequest.id && "result" in msg) {
        this.#protocolVersion = (msg as any).result?.protocolVersion;
        this.#sessionUp = true;
        if (this.#protocolVersion) (this.#link as StreamableHTTPClientTransport | null)?.setProtocolVersion?.(this.#protocolVersion);
      }
    } else if (generation !== this.#generation) {
      return; // a notification or request from a replaced connection
    }
    this.#local.send(msg).catch((e) => this.#log.warn({ event: "local_send_failed", reason: (e as Error).message }, "cannot write to the local client"));
  }

  #reply(id: Id, error: { code: number; message: string; data?: unknown }): void {
    if (!this.#inflight.delete(id)) return;
    this.#local.send({ jsonrpc: "2.0", id, error } as JSONRPCMessage).catch(() => {});
  }

  // ---------------------------------------------------------------------------------------------------------------
  // links

  async #makeLink(kind: RemoteTransportKind): Promise<Transport> {
    const generation = ++this.#generation;
    let link: Transport;
    if (kind === "streamable-http") {
      link = new StreamableHTTPClientTransport(this.#o.url, {
        fetch: this.#trackedFetch(generation),
        reconnectionOptions: { initialReconnectionDelay: this.#minDelay * 4, maxReconnectionDelay: this.#maxDelay, reconnectionDelayGrowFactor: 1.5, maxRetries: 1000 },
      });
    } else if (kind === "sse") {
      link = new SSEClientTransport(this.#o.url, { fetch: this.#fetch, eventSourceInit: { fetch: this.#fetch } });
    } else {
      link = new MeshWebSocketTransport(this.#o.url, this.#o.identityDir, this.#o.expect);
    }
    link.onmessage = (m) => this.#fromRemote(m, generation);
    link.onerror = (e) => this.#onLinkError(e, kind, generation);
    link.onclose = () => {
      if (generation === this.#generation && this.#state === "up" && kind !== "streamable-http") this.#linkLost(generation, "the agent closed the connection");
    };
    try {
      await link.start();
    } catch (e) {
      link.onclose = undefined;
      await link.close().catch(() => {});
      throw e;
    }
    return link;
  }

  #onLinkError(e: Error, kind: RemoteTransportKind, generation: number): void {
    if (generation !== this.#generation || this.#state === "closed") return;
    this.#log.debug({ event: "link_error", transport: kind, reason: e.message }, "transport error");
    if (kind === "streamable-http" && e instanceof StreamableHTTPError && e.code === 404 && /SSE stream/.test(e.message)) {
      // The standalone GET stream found the session gone (agent restarted): re-initialize without waiting for a call.
      this.#startReconnect("the agent no longer knows the session");
    } else if (kind === "sse" && e instanceof SseError) {
      this.#linkLost(generation, `SSE stream broke: ${e.message}`);
    }
  }

  #linkLost(generation: number, reason: string): void {
    for (const [id, entry] of this.#inflight) {
      if (entry.generation === generation) this.#reply(id, { code: CONNECT_ERRORS.lost, message: `the connection to the agent was lost (${reason}); the request may or may not have run` });
    }
    this.#startReconnect(reason);
  }

  /**
   * The mesh fetch, plus one thing the SDK cannot tell us: when the SSE stream answering a POST breaks before its
   * answer arrived, those requests would wait forever; they get an error instead.
   */
  #trackedFetch(generation: number): typeof fetch {
    return (async (input: any, init?: any) => {
      const res: Response = await this.#fetch(input, init);
      if (init?.method !== "POST" || !res.body || !(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) return res;
      const ids = requestIds(init.body);
      if (ids.length === 0) return res;
      const reader = res.body.getReader();
      const ended = (e: unknown) => {
        // The SDK parses the stream a few steps behind us: give it a moment to deliver a final answer.
        setTimeout(() => {
          if (this.#state === "closed") return;
          const lost = ids.filter((id) => this.#inflight.get(id)?.generation === generation);
          if (lost.length === 0) return;
          const reason = e ? `the answer stream broke: ${causes(e).map((c) => c?.code ?? c?.message).filter(Boolean).join(": ")}` : "the answer stream ended without an answer";
          for (const id of lost) this.#reply(id, { code: CONNECT_ERRORS.lost, message: `the connection to the agent was lost (${reason}); the request may or may not have run` });
          if (e && generation === this.#generation) this.#startReconnect(reason);
        }, 500).unref();
      };
      const body = new ReadableStream<Uint8Array>({
        async pull(ctrl) {
          try {
            const r = await reader.read();
            if (r.done) {
              ctrl.close();
              ended(null);
            } else ctrl.enqueue(r.value);
          } catch (e) {
            ended(e);
            ctrl.error(e);
          }
        },
        cancel: (reason) => reader.cancel(reason),
      });
      return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
    }) as typeof fetch;
  }

  async #privateRequest(link: Transport, method: string, params?: Record<string, unknown>): Promise<any> {
    const id = `${this.#privatePrefix}${++this.#privateSeq}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#private.delete(id);
        reject(new Error(`${method}: no answer from the agent within 15 s`));
      }, 15_000);
      this.#private.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      link.send({ jsonrpc: "2.0", id, method, ...(params ? { params } : {}) } as JSONRPCMessage).catch((e) => {
        clearTimeout(timer);
        this.#private.delete(id);
        reject(e);
      });
    });
  }

  // ---------------------------------------------------------------------------------------------------------------
  // connecting and reconnecting

  #startReconnect(reason: string): void {
    if (this.#state === "closed" || this.#state === "reconnecting") return;
    if (this.#state === "up") this.#log.warn({ event: "agent_connection_lost", reason }, "reconnecting to the agent");
    this.#state = "reconnecting";
    this.#schedule();
  }

  #schedule(): void {
    this.#expireQueued();
    const delay = this.#failures === 0 ? 0 : Math.min(this.#maxDelay, this.#minDelay * 2 ** Math.min(this.#failures - 1, 16)) * (0.8 + Math.random() * 0.4);
    this.#timer = setTimeout(() => void this.#attempt(), delay);
  }

  async #attempt(): Promise<void> {
    this.#timer = null;
    if (this.#state !== "reconnecting") return;
    try {
      await this.#establish();
    } catch (e) {
      if ((this.#state as string) === "closed") return;
      const c = classify(e, false);
      if (c.kind === "fatal") return this.#fatal(c.error);
      this.#failures++;
      const reason = c.kind === "unreachable" || c.kind === "lost" ? c.reason : c.kind === "http" || c.kind === "fallback" ? `HTTP ${c.status}` : (e as Error).message;
      this.#log.warn({ event: "agent_connect_failed", attempt: this.#failures, reason }, "cannot reach the agent; retrying");
      this.#schedule();
      return;
    }
    if ((this.#state as string) !== "reconnecting") return;
    this.#state = "up";
    const queued = this.#queue;
    this.#queue = [];
    for (const { msg } of queued) void this.#deliver(msg);
  }

  /** Opens a link to the agent, re-initializing the session when the agent no longer has it. */
  async #establish(): Promise<void> {
    if (this.#kind === null) return this.#connectFirst();
    if (this.#kind === "streamable-http" && this.#link && this.#sessionUp && (this.#link as StreamableHTTPClientTransport).sessionId) {
      try {
        await this.#privateRequest(this.#link, "ping");
        this.#log.info({ event: "agent_reconnected", session: "kept" }, "reconnected to the agent; the session is still there");
        return;
      } catch (e) {
        const c = classify(e, true);
        if (c.kind !== "session-lost") throw e;
      }
    }
    const link = await this.#makeLink(this.#kind);
    if (this.#sessionUp && this.#initRequest) {
      try {
        const result = await this.#privateRequest(link, "initialize", this.#initRequest.params as Record<string, unknown>);
        if (result?.protocolVersion) (link as StreamableHTTPClientTransport).setProtocolVersion?.(result.protocolVersion);
        if (this.#initialized) await link.send(this.#initialized);
      } catch (e) {
        link.onclose = undefined;
        await link.close().catch(() => {});
        throw e;
      }
      this.#log.warn({ event: "agent_reinitialized", transport: this.#kind }, "the agent had lost the session: re-initialized it with the client's initialize request (server-side session state such as subscriptions starts fresh)");
    }
    await this.#swap(link);
  }

  async #connectFirst(): Promise<void> {
    const kinds: RemoteTransportKind[] = this.#o.transport !== "auto" ? [this.#o.transport] : this.#o.url.protocol === "wss:" ? ["ws"] : ["streamable-http", "sse"];
    for (let i = 0; i < kinds.length; i++) {
      const kind = kinds[i];
      const link = await this.#makeLink(kind);
      const first = this.#queue[0]?.msg;
      const probe = i < kinds.length - 1 && first && isRequest(first) && first.method === "initialize";
      if (probe) {
        // The spec's backwards-compatibility rule: POST initialize; 400/404/405 means an old server: try the SSE GET.
        this.#inflight.set(first.id, { generation: this.#generation });
        try {
          await link.send(first);
        } catch (e) {
          const c = classify(e, false);
          if (c.kind === "fallback") {
            this.#log.info({ event: "transport_fallback", from: kind, to: kinds[i + 1], status: c.status }, "the agent does not speak Streamable HTTP here; trying SSE");
            link.onclose = undefined;
            await link.close().catch(() => {});
            continue;
          }
          link.onclose = undefined;
          await link.close().catch(() => {});
          if (c.kind === "unreachable" || c.kind === "fatal") throw e;
          // An answer that is neither success nor fallback (403, 429, ...) is the initialize's answer.
          this.#queue.shift();
          this.#kind = kind;
          this.#link = link;
          this.#onSendError(first, e, this.#generation);
          return;
        }
        this.#queue.shift();
      }
      this.#kind = kind;
      this.#link = link;
      // An initialize answered as plain JSON came back before the link was ours: tell it the negotiated version now.
      if (this.#protocolVersion) (link as StreamableHTTPClientTransport).setProtocolVersion?.(this.#protocolVersion);
      this.#log.info({ event: "agent_connected", transport: kind, url: this.#o.url.href }, "connected to the agent");
      return;
    }
  }

  async #swap(link: Transport): Promise<void> {
    const old = this.#link;
    this.#link = link;
    if (old) {
      old.onclose = undefined;
      old.onerror = undefined;
      await old.close().catch(() => {});
    }
    // Whatever the old connection still owed is not coming.
    for (const [id, entry] of this.#inflight) {
      if (entry.generation >= 0 && entry.generation < this.#generation) this.#reply(id, { code: CONNECT_ERRORS.lost, message: "the connection to the agent was lost; the request may or may not have run" });
    }
  }

  #expireQueued(): void {
    const now = Date.now();
    const keep: Queued[] = [];
    for (const q of this.#queue) {
      if (now - q.since < this.#requestTimeout) keep.push(q);
      else if (isRequest(q.msg)) this.#reply(q.msg.id, { code: CONNECT_ERRORS.unreachable, message: `the agent at ${this.#o.url.host} has been unreachable for ${Math.round(this.#requestTimeout / 1000)} s` });
    }
    this.#queue = keep;
  }

  #fatal(error: MeshError): void {
    if (this.#state === "closed") return;
    this.#log.error({ event: "agent_rejected", code: error.code, reason: error.message }, "refusing to talk to this agent");
    for (const id of [...this.#inflight.keys()]) this.#reply(id, { code: CONNECT_ERRORS.rejected, message: `mcpmesh connect: ${error.message}` });
    void this.close(error);
  }

  async close(error?: MeshError): Promise<void> {
    if (this.#state === "closed") return;
    this.#state = "closed";
    if (this.#timer) clearTimeout(this.#timer);
    this.scheduler?.stop();
    if (this.#stdinEnd) process.stdin.off("end", this.#stdinEnd);
    for (const id of [...this.#inflight.keys()]) this.#reply(id, { code: CONNECT_ERRORS.closed, message: "mcpmesh connect is shutting down" });
    for (const p of this.#private.values()) p.reject(new Error("closed"));
    const link = this.#link;
    this.#link = null;
    if (link) {
      link.onclose = undefined;
      link.onerror = undefined;
      if (link instanceof StreamableHTTPClientTransport && link.sessionId && !error) {
        // Tell the agent the session is over (best effort, bounded).
        await Promise.race([link.terminateSession().catch(() => {}), new Promise((r) => setTimeout(r, 2000).unref())]);
      }
      await link.close().catch(() => {});
    }
    this.#local.onclose = undefined;
    await this.#local.close().catch(() => {});
    await this.#fetch.close().catch(() => {});
    this.#log.info({ event: "connect_stopped", error: error?.code ?? null }, "mcpmesh connect stopped");
    this.#resolveClosed(error ? { error } : {});
  }
}

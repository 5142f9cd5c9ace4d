import { Agent, fetch as undiciFetch, type Dispatcher } from "undici";
import { SSEClientTransport, SseError } from "@modelcontextprotocol/sdk/client/sse.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import type { Logger } from "../../lib/log.ts";
import type { UpstreamConnector } from "./connector.ts";
import { UpstreamError } from "./http.ts";
import { errorFor, InFlight, isRequest } from "./inflight.ts";

export interface SseConnectorOptions {
  /** The server's SSE URL (the GET that opens the stream), e.g. http://127.0.0.1:3001/sse. */
  url: string;
  /** A unix socket to reach it through; the URL then only gives the path and Host header. */
  socketPath?: string;
  /** Time to get response headers (the stream's and each POST's). */
  timeoutMs: number;
  logger: Logger;
}

/**
 * A legacy HTTP+SSE upstream (MCP 2024-11-05) through the SDK's SSEClientTransport: one SSE stream (one upstream
 * session) per downstream session, X-MCPMesh-Identity on the stream's GET and on every POST. The `endpoint` event must
 * name a URL on the configured origin (the SDK refuses anything else, and so start() fails): an upstream must not send
 * the agent's traffic elsewhere. A stream that ends is not reconnected — the upstream session it carried is gone — so
 * the channel answers its in-flight requests with errors and closes.
 */
export class SseConnector implements UpstreamConnector {
  readonly kind = "sse" as const;
  readonly url: URL;
  readonly #dispatcher: Dispatcher;
  readonly #logger: Logger;
  readonly #channels = new Set<SseChannel>();

  constructor(opts: SseConnectorOptions) {
    this.url = new URL(opts.url);
    this.#logger = opts.logger;
    this.#dispatcher = new Agent({
      keepAliveTimeout: 30_000,
      connect: opts.socketPath ? { socketPath: opts.socketPath } : undefined,
      // The SSE stream stays open as long as the session; the timeout covers getting the headers.
      bodyTimeout: 0,
      headersTimeout: opts.timeoutMs,
    });
  }

  open(ctx: { identity: string; sessionId: string }): Transport {
    const dispatcher = this.#dispatcher;
    const fetchImpl = ((url: string | URL, init?: RequestInit) => undiciFetch(url, { ...(init as any), dispatcher })) as unknown as typeof fetch;
    const inner = new SSEClientTransport(this.url, {
      fetch: fetchImpl,
      requestInit: { headers: { "x-mcpmesh-identity": ctx.identity } },
    });
    const ch = new SseChannel(inner, this.#logger.child({ session: ctx.sessionId, identity: ctx.identity }), () => this.#channels.delete(ch));
    this.#channels.add(ch);
    return ch;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.#channels].map((c) => c.close()));
    await this.#dispatcher.destroy();
  }
}

class SseChannel implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;

  readonly #inner: SSEClientTransport;
  readonly #logger: Logger;
  readonly #forget: () => void;
  readonly #inFlight = new InFlight();
  #started = false;
  #closed = false;

  constructor(inner: SSEClientTransport, logger: Logger, forget: () => void) {
    this.#inner = inner;
    this.#logger = logger;
    this.#forget = forget;
  }

  async start(): Promise<void> {
    this.#inner.onmessage = (m) => {
      this.#inFlight.received(m);
      this.onmessage?.(m);
    };
    this.#inner.onerror = (e) => {
      // An SseError after the stream was up means the stream broke; EventSource would reconnect, but to a new
      // upstream session the client never initialized. Anything else (a bad event, a failed POST) is reported.
      if (e instanceof SseError && this.#started) this.#dropped(e.message);
      else this.onerror?.(e);
    };
    this.#inner.onclose = () => this.#finish();
    try {
      await this.#inner.start();
    } catch (e) {
      this.#logger.warn({ event: "upstream_connect_failed", err: (e as Error).message }, "upstream SSE stream could not be opened");
      await this.#inner.close().catch(() => {});
      throw new UpstreamError(`upstream SSE stream could not be opened: ${(e as Error).message}`, { cause: e });
    }
    this.#started = true;
  }

  async send(message: JSONRPCMessage): Promise<void> {
    if (this.#closed) throw new UpstreamError("upstream SSE channel is closed");
    this.#inFlight.sent(message);
    try {
      await this.#inner.send(message);
    } catch (e) {
      if (!isRequest(message)) throw new UpstreamError(`upstream SSE send failed: ${(e as Error).message}`, { cause: e });
      this.#inFlight.forget(message.id);
      this.onmessage?.(errorFor(message.id, `upstream unavailable: ${(e as Error).message}`));
    }
  }

  /** The negotiated version goes upstream as MCP-Protocol-Version on later POSTs. */
  setProtocolVersion(version: string): void {
    this.#inner.setProtocolVersion(version);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#inner.close();
    this.#finish();
  }

  #dropped(reason: string): void {
    if (this.#closed) return;
    this.#logger.warn({ event: "upstream_stream_ended", inFlight: this.#inFlight.size, err: reason }, "upstream SSE stream ended");
    for (const err of this.#inFlight.failAll(`upstream SSE stream ended (${reason})`)) this.onmessage?.(err);
    void this.#inner.close();
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const err of this.#inFlight.failAll("upstream SSE channel closed")) this.onmessage?.(err);
    this.#forget();
    this.onclose?.();
  }
}

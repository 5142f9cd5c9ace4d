import { Agent, type Dispatcher } from "undici";
import type { EventEmitter } from "node:events";
import type { Readable } from "node:stream";
import { performance } from "node:perf_hooks";
import { MeshError } from "../../lib/errors.ts";

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

export class UpstreamError extends MeshError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("MCPMESH_UPSTREAM", message, options);
  }
}

/**
 * The Streamable HTTP server behind the agent, reached over keep-alive connections (undici), on loopback or a unix
 * socket. Only the headers MCP needs are sent; the caller's identity travels as X-MCPMesh-Identity.
 */
export class HttpUpstream {
  readonly url: URL;
  readonly #dispatcher: Dispatcher;
  readonly #timeoutMs: number;
  readonly #origin: string;
  readonly #path: string;
  /** Sees each request's round trip (to the response headers) and outcome: metrics and upstream health. */
  observe?: (method: string, seconds: number, ok: boolean, error?: string) => void;

  constructor(opts: { url: string; socketPath?: string; timeoutMs: number; connections?: number }) {
    this.url = new URL(opts.url);
    this.#origin = this.url.origin;
    this.#path = `${this.url.pathname}${this.url.search}`;
    this.#timeoutMs = opts.timeoutMs;
    this.#dispatcher = new Agent({
      keepAliveTimeout: 30_000,
      connections: opts.connections ?? 128,
      pipelining: 1,
      connect: opts.socketPath ? { socketPath: opts.socketPath } : undefined,
      // Streams (SSE) may stay open indefinitely; the per-request timeout covers getting the headers.
      bodyTimeout: 0,
      headersTimeout: opts.timeoutMs,
    });
  }

  /** `signal`: an AbortSignal, or an EventEmitter with `aborted` that emits "abort" (cheaper per request; undici takes both). */
  async send(method: "GET" | "POST" | "DELETE", headers: Record<string, string>, body?: Buffer, signal?: AbortSignal | (EventEmitter & { readonly aborted: boolean })): Promise<UpstreamResponse> {
    const t0 = this.observe ? performance.now() : 0;
    try {
      // The dispatcher directly, with the origin and path split once: undici's request(url) re-parses the URL each call.
      const res = await this.#dispatcher.request({ origin: this.#origin, path: this.#path, method, headers, body, signal, headersTimeout: this.#timeoutMs });
      this.observe?.(method, (performance.now() - t0) / 1000, res.statusCode < 500, res.statusCode < 500 ? undefined : `HTTP ${res.statusCode}`);
      return { status: res.statusCode, headers: res.headers, body: res.body as unknown as Readable };
    } catch (e) {
      if (!signal?.aborted) this.observe?.(method, (performance.now() - t0) / 1000, false, (e as Error).message);
      throw new UpstreamError(`upstream ${this.url.origin} unavailable: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    await this.#dispatcher.destroy();
  }
}

import { createRequire } from "node:module";
import type { EventEmitter } from "node:events";
import type { Readable } from "node:stream";
import { performance } from "node:perf_hooks";
import { MeshError } from "../../lib/errors.ts";
import type { Agent as UndiciAgent, Dispatcher } from "undici";

// undici's package entry loads all of undici (fetch, WebSocket, EventSource, caches, mocks, interceptors, proxies):
// ~7 MB of the agent's idle RSS for the one pool class and the one call used here. Those two are loaded alone, from
// the files the entry itself re-exports (undici has no "exports" map). Those paths are not undici's public API and
// package.json allows any 7.x: if they are gone or hold something else, the entry is loaded instead (the same
// objects, more memory). test/agent/undici-slim.test.ts checks both the slim load and the fallback.
type RequestFn = (this: Dispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
export function loadUndiciPool(load: (id: string) => unknown): { Agent: typeof UndiciAgent; request: RequestFn; slim: boolean } {
  try {
    const Agent = load("undici/lib/dispatcher/agent.js");
    const request = load("undici/lib/api/api-request.js");
    if (typeof Agent === "function" && typeof request === "function") return { Agent: Agent as typeof UndiciAgent, request: request as RequestFn, slim: true };
  } catch {
    // moved in this undici version: fall back to the entry below
  }
  const entry = load("undici") as { Agent: typeof UndiciAgent; Dispatcher: { prototype: { request: RequestFn } } };
  return { Agent: entry.Agent, request: entry.Dispatcher.prototype.request, slim: false };
}
const { Agent, request } = loadUndiciPool(createRequire(import.meta.url));

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
 * The Streamable HTTP server behind the agent, reached over keep-alive connections (undici's Agent), on loopback or a
 * unix socket. Only the headers MCP needs are sent; the caller's identity travels as X-MCPMesh-Identity.
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
      const res = await request.call(this.#dispatcher, { origin: this.#origin, path: this.#path, method, headers, body, signal, headersTimeout: this.#timeoutMs });
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

import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { relaySse } from "../edge/sse.ts";
import { errorResponse, SERVER_ERROR, type JsonRpcId } from "../jsonrpc.ts";
import type { HttpUpstream, UpstreamResponse } from "./http.ts";
import type { UpstreamConnector } from "./connector.ts";

/** How long the standalone GET stream waits before it is opened again after the upstream ended it. */
const GET_RETRY_MS = 1_000;

function isRequest(m: any): m is { id: JsonRpcId; method: string } {
  return m !== null && typeof m === "object" && typeof m.method === "string" && (typeof m.id === "string" || typeof m.id === "number");
}

/**
 * One downstream session's Streamable HTTP client towards the upstream, built on the agent's own `HttpUpstream`
 * (its undici pool, unix socket, header timeout and metrics hook) rather than the SDK's client transport: the agent
 * must answer every request it forwarded even when the upstream misbehaves, and that is easiest where every POST's
 * fate is in view. Each message is one POST; JSON and SSE answers are both read; after `notifications/initialized`
 * the standalone GET stream carries the server's own messages (reopened while the channel lives).
 *
 * A request whose POST fails, times out, or whose response stream ends without its response, is answered here with
 * a JSON-RPC error (-32000). An upstream that forgets the session (404) closes the channel.
 */
export class HttpChannel implements Transport {
  onmessage?: (message: JSONRPCMessage) => void;
  onerror?: (error: Error) => void;
  onclose?: () => void;
  sessionId?: string;

  readonly #up: HttpUpstream;
  readonly #identity: string;
  readonly #ac = new AbortController();
  #protocolVersion?: string;
  #closed = false;
  #getOpen = false;
  #getTimer: NodeJS.Timeout | null = null;

  readonly #ended?: () => void;

  constructor(up: HttpUpstream, identity: string, ended?: () => void) {
    this.#up = up;
    this.#identity = identity;
    this.#ended = ended;
  }

  async start(): Promise<void> {}

  setProtocolVersion(version: string): void {
    this.#protocolVersion = version;
  }

  #headers(): Record<string, string> {
    const h: Record<string, string> = { "x-mcpmesh-identity": this.#identity, accept: "application/json, text/event-stream" };
    if (this.sessionId) h["mcp-session-id"] = this.sessionId;
    if (this.#protocolVersion) h["mcp-protocol-version"] = this.#protocolVersion;
    return h;
  }

  async send(message: JSONRPCMessage): Promise<void> {
    if (this.#closed) throw new Error("channel closed");
    const req = isRequest(message) ? message : null;
    let up: UpstreamResponse;
    try {
      up = await this.#up.send("POST", { ...this.#headers(), "content-type": "application/json" }, Buffer.from(JSON.stringify(message)), this.#ac.signal);
    } catch (e) {
      if (this.#closed) return;
      const timedOut = (e as { cause?: { code?: string } }).cause?.code === "UND_ERR_HEADERS_TIMEOUT";
      if (req) this.#answer(req.id, timedOut ? "Upstream MCP server timed out" : "Upstream MCP server unavailable");
      else this.onerror?.(e as Error);
      return;
    }
    if (req?.method === "initialize" && up.status >= 200 && up.status < 300) {
      const sid = up.headers["mcp-session-id"];
      if (typeof sid === "string" && sid.length > 0) this.sessionId = sid;
    }
    if (up.status === 404 && this.sessionId) {
      up.body.resume();
      if (req) this.#answer(req.id, "Upstream session ended");
      void this.close();
      return;
    }
    // Read the answer in the background: the send itself is done once the upstream accepted the POST.
    void this.#read(up, req).catch((e) => {
      if (!this.#closed && req) this.#answer(req.id, `Upstream MCP server failed: ${(e as Error).message}`);
    });
    if (!req && (message as { method?: string }).method === "notifications/initialized" && up.status < 300) this.#openGet();
  }

  /** Delivers what an upstream answer carries; answers the request itself if the answer did not. */
  async #read(up: UpstreamResponse, req: { id: JsonRpcId } | null): Promise<void> {
    let answered = false;
    const deliver = (data: string) => {
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        this.onerror?.(new Error("upstream sent a message that is not JSON"));
        return;
      }
      for (const m of Array.isArray(parsed) ? parsed : [parsed]) {
        if (req && m && typeof m === "object" && (m as { id?: unknown }).id === req.id && !("method" in m)) answered = true;
        this.onmessage?.(m as JSONRPCMessage);
      }
    };
    const type = String(up.headers["content-type"] ?? "").toLowerCase();
    if (type.startsWith("text/event-stream")) {
      this.#ac.signal.addEventListener("abort", () => up.body.destroy(), { once: true });
      await relaySse(up.body, () => {}, (ev) => {
        if (ev.data) deliver(ev.data);
        return null;
      }).catch(() => {});
    } else {
      const chunks: Buffer[] = [];
      for await (const c of up.body) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString("utf8");
      if (text.trim() !== "" && type.startsWith("application/json")) deliver(text);
    }
    if (req && !answered && !this.#closed) this.#answer(req.id, up.status >= 400 ? `Upstream MCP server answered HTTP ${up.status}` : "Upstream MCP server ended the response without answering");
  }

  #answer(id: JsonRpcId, message: string): void {
    this.onmessage?.(errorResponse(id, SERVER_ERROR, message) as JSONRPCMessage);
  }

  /** The standalone stream of server-initiated messages (list_changed, logging outside a request, sampling). */
  #openGet(): void {
    if (this.#closed || this.#getOpen) return;
    this.#getOpen = true;
    void (async () => {
      let again = true;
      try {
        const up = await this.#up.send("GET", { ...this.#headers(), accept: "text/event-stream" }, undefined, this.#ac.signal);
        if (!String(up.headers["content-type"] ?? "").startsWith("text/event-stream")) {
          // 405: the server has no standalone stream; that is allowed.
          up.body.resume();
          again = false;
          return;
        }
        this.#ac.signal.addEventListener("abort", () => up.body.destroy(), { once: true });
        await relaySse(up.body, () => {}, (ev) => {
          try {
            if (ev.data) this.onmessage?.(JSON.parse(ev.data) as JSONRPCMessage);
          } catch {
            this.onerror?.(new Error("upstream sent a message that is not JSON"));
          }
          return null;
        });
      } catch {
        // reopened below
      } finally {
        this.#getOpen = false;
      }
      if (again && !this.#closed) {
        this.#getTimer = setTimeout(() => this.#openGet(), GET_RETRY_MS);
        this.#getTimer.unref();
      }
    })();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#getTimer) clearTimeout(this.#getTimer);
    this.#ac.abort();
    if (this.sessionId) {
      // Best effort: the upstream frees the session now instead of at its own idle timeout.
      await this.#up
        .send("DELETE", this.#headers())
        .then((r) => r.body.resume())
        .catch(() => {});
    }
    this.#ended?.();
    this.onclose?.();
  }
}

/** Streamable HTTP upstream at the message level: one `HttpChannel` per downstream session. */
export class HttpConnector implements UpstreamConnector {
  readonly kind = "http" as const;
  readonly #up: HttpUpstream;
  readonly #open = new Set<HttpChannel>();

  constructor(up: HttpUpstream) {
    this.#up = up;
  }

  open(ctx: { identity: string; sessionId: string }): Transport {
    const ch: HttpChannel = new HttpChannel(this.#up, ctx.identity, () => this.#open.delete(ch));
    this.#open.add(ch);
    return ch;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#open].map((c) => c.close()));
  }
}

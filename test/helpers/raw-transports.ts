/**
 * Raw JSON-RPC clients for the agent's legacy SSE and WebSocket edges, for what the SDK clients cannot express
 * (chosen protocol versions, batches, foreign session ids, oversized or malformed frames). Both collect every message
 * the agent sends and let a test wait for one by predicate.
 */
import WebSocket from "ws";
import { createParser } from "eventsource-parser";
import { loadIdentity } from "../../identity/store.ts";
import type { MeshFetch } from "../../identity/fetch.ts";

class Inbox {
  readonly messages: any[] = [];
  readonly #waiters = new Set<() => void>();
  closed = false;

  push(m: any): void {
    this.messages.push(m);
    for (const w of [...this.#waiters]) w();
  }

  end(): void {
    this.closed = true;
    for (const w of [...this.#waiters]) w();
  }

  /** The first message (from the start) matching `pred`; rejects after `ms` or when the stream ended without one. */
  next(pred: (m: any) => boolean, ms = 20_000): Promise<any> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = this.messages.find(pred);
        if (hit !== undefined) {
          done();
          resolve(hit);
        } else if (this.closed) {
          done();
          reject(new Error(`stream ended without the message; got ${JSON.stringify(this.messages).slice(0, 2000)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`message not seen within ${ms} ms; got ${JSON.stringify(this.messages).slice(0, 2000)}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** The response to request `id`. */
  reply(id: string | number, ms?: number): Promise<any> {
    return this.next((m) => (Array.isArray(m) ? m.some((x) => x?.id === id && !("method" in x)) : m?.id === id && !("method" in m)), ms);
  }
}

export interface RawWs {
  ws: WebSocket;
  inbox: Inbox;
  send(m: unknown): void;
  /** Resolves with the close code once the agent (or the network) closed the socket. */
  closed: Promise<number>;
  close(): Promise<void>;
}

/** A WebSocket to the agent as the identity in `idDir`; rejects with `{status, body}` when the upgrade is refused. */
export function rawWs(url: string, idDir: string, opts: { protocols?: string[]; headers?: Record<string, string> } = {}): Promise<RawWs> {
  const id = loadIdentity(idDir);
  const inbox = new Inbox();
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^https:/, "wss:"), opts.protocols ?? ["mcp"], { cert: id.certPem, key: id.keyPem, ca: id.rootsPem, minVersion: "TLSv1.3", headers: opts.headers });
    const closed = new Promise<number>((r) => ws.on("close", (code) => {
      inbox.end();
      r(code);
    }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString("utf8")));
      res.on("end", () => reject(Object.assign(new Error(`upgrade refused: HTTP ${res.statusCode}`), { status: res.statusCode, body })));
    });
    ws.on("error", (e) => reject(e));
    ws.on("message", (data) => {
      try {
        inbox.push(JSON.parse(data.toString()));
      } catch {
        inbox.push({ unparsed: data.toString() });
      }
    });
    ws.once("open", () =>
      resolve({
        ws,
        inbox,
        closed,
        send: (m) => ws.send(typeof m === "string" ? m : JSON.stringify(m)),
        close: async () => {
          if (ws.readyState <= 1) ws.close();
          await closed;
        },
      }),
    );
  });
}

export interface RawSse {
  /** The `endpoint` event's data, as sent. */
  endpoint: string;
  /** The absolute message URL. */
  messageUrl: string;
  inbox: Inbox;
  /** POSTs a body to the message URL (or `url`) and returns the HTTP status and body text. */
  post(body: unknown, opts?: { url?: string; headers?: Record<string, string>; f?: MeshFetch }): Promise<{ status: number; text: string }>;
  /** Resolves once the agent ended the stream. */
  ended: Promise<void>;
  close(): void;
}

/** Opens the legacy SSE stream at `url` with a mesh fetch and waits for the endpoint event. */
export async function rawSse(url: string, f: MeshFetch): Promise<RawSse> {
  const ac = new AbortController();
  const res = await f(url, { headers: { accept: "text/event-stream" }, signal: ac.signal });
  if (res.status !== 200) throw Object.assign(new Error(`GET ${url}: HTTP ${res.status} ${await res.text()}`), { status: res.status });
  const inbox = new Inbox();
  let endpoint: (v: string) => void;
  const gotEndpoint = new Promise<string>((r) => (endpoint = r));
  const parser = createParser({
    onEvent: (ev) => {
      if (ev.event === "endpoint") endpoint(ev.data);
      else if (ev.event === "message" || ev.event === undefined) inbox.push(JSON.parse(ev.data));
    },
  });
  const ended = (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) parser.feed(decoder.decode(chunk, { stream: true }));
    } catch {
      // aborted or reset: the stream is over either way
    }
    inbox.end();
  })();
  const ep = await Promise.race([gotEndpoint, ended.then(() => Promise.reject(new Error("stream ended before the endpoint event")))]);
  const messageUrl = new URL(ep, url).href;
  return {
    endpoint: ep,
    messageUrl,
    inbox,
    ended,
    async post(body, opts = {}) {
      const r = await (opts.f ?? f)(opts.url ?? messageUrl, { method: "POST", headers: { "content-type": "application/json", ...opts.headers }, body: typeof body === "string" ? body : Buffer.isBuffer(body) ? new Uint8Array(body) : JSON.stringify(body) });
      return { status: r.status, text: await r.text() };
    },
    close: () => ac.abort(),
  };
}

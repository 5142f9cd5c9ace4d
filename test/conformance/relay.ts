import { createServer, type Server } from "node:http";
import type { MeshFetch } from "../../identity/fetch.ts";

// Per-hop headers (and the ones fetch recomputes) are not forwarded.
const HOP = new Set(["connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length", "content-encoding", "proxy-connection", "te", "trailer"]);

export interface Relay {
  url: string;
  close(): Promise<void>;
}

/**
 * A loopback-only plain-HTTP → mTLS relay for tools that only take an HTTP URL (the conformance suite): each request
 * is replayed to the agent with the mesh fetch, and the answer (SSE streams included) is streamed back as it comes.
 */
export async function startRelay(target: string, f: MeshFetch): Promise<Relay> {
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k) && typeof v === "string") headers[k] = v;
    // Like any reverse proxy, the relay translates its own origin into the agent's (whose Origin check compares with
    // its own Host); a foreign Origin goes through unchanged, for the agent to refuse.
    if (headers.origin !== undefined && self.has(req.headers.host ?? "") && headers.origin === `http://${req.headers.host}`) headers.origin = new URL(target).origin;
    const ac = new AbortController();
    res.on("close", () => ac.abort());
    try {
      const url = new URL(req.url ?? "/", target);
      const r = await f(url.href, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined, signal: ac.signal });
      const out: Record<string, string> = {};
      r.headers.forEach((v, k) => {
        if (!HOP.has(k)) out[k] = v;
      });
      res.writeHead(r.status, out);
      res.flushHeaders();
      if (r.body) for await (const chunk of r.body) res.write(chunk);
      res.end();
    } catch (e) {
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" }).end(`relay: ${(e as Error).message}`);
      else res.destroy();
    }
  });
  const self = new Set<string>();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  self.add(`127.0.0.1:${port}`).add(`localhost:${port}`);
  return {
    url: `http://127.0.0.1:${port}${new URL(target).pathname}`,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

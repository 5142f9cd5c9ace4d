/**
 * A bare Node.js mTLS reverse proxy that inspects nothing: the floor a Node.js process sets for the agent. Same TLS
 * settings as the agent (its identity, TLS 1.3, client certificates required and verified by OpenSSL), bodies piped
 * to the upstream through undici's keep-alive pool and back, no parsing, no policy, no audit, no metrics.
 * bench/run.ts measures it next to the agent so that the cost of inspection and the cost of Node.js show apart.
 *
 *   node --import tsx bench/bare-proxy.ts IDENTITY_DIR UPSTREAM_URL     # prints "bare proxy on https://..."
 */
import { createServer } from "node:https";
import { Agent } from "undici";
import { loadIdentity } from "../identity/store.ts";
import { loadTrustBundle, serverTlsOptions } from "../agent/tls-gate.ts";

const [dir, upstreamUrl] = process.argv.slice(2);
const id = loadIdentity(dir);
const up = new URL(upstreamUrl);
const pool = new Agent({ connections: 128, keepAliveTimeout: 30_000, pipelining: 1 });
const FORWARDED = ["content-type", "accept", "mcp-session-id", "mcp-protocol-version", "last-event-id"];
const RELAYED = ["content-type", "mcp-session-id", "cache-control"];

const server = createServer({ ...serverTlsOptions(id, loadTrustBundle(id, []), "TLSv1.3"), rejectUnauthorized: true }, (req, res) => {
  if (req.url !== up.pathname) return void res.writeHead(404).end();
  const headers: Record<string, string> = {};
  for (const h of FORWARDED) {
    const v = req.headers[h];
    if (typeof v === "string") headers[h] = v;
  }
  pool.request({ origin: up.origin, path: up.pathname, method: req.method as "POST", headers, body: req }).then(
    (r) => {
      const out: Record<string, string> = {};
      for (const h of RELAYED) {
        const v = r.headers[h];
        if (typeof v === "string") out[h] = v;
      }
      res.writeHead(r.statusCode, out);
      r.body.pipe(res);
    },
    () => void res.writeHead(502).end(),
  );
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => console.log(`bare proxy on https://127.0.0.1:${(server.address() as { port: number }).port}${up.pathname}`));

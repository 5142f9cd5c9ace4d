import { createServer, type Server } from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import { constants as cryptoConstants, generateKeyPairSync, type KeyObject } from "node:crypto";
import { isMeshError, InvalidArgumentError, MeshError } from "../lib/errors.ts";
import { silentLogger, type Logger } from "../lib/log.ts";
import { pemToDer } from "../lib/x509.ts";
import { BodyIncompleteError, BodyTooLargeError, readBody } from "../lib/body.ts";
import { parseHostPort } from "../lib/net.ts";
import type { Authority, IssuedCertificate } from "./authority.ts";
import type { CertRecord } from "./store.ts";

import { RevocationFeed, WATCH_PATH } from "./watch.ts";

/**
 * The CA's HTTPS API. Each handler runs decode → validate → authorize → sign → render; the core (Authority) does
 * the deciding and knows nothing of HTTP. Errors render as `{ error: { code, message } }` with the core's stable
 * code and caller-facing message; anything unexpected is logged here and answered as a generic 500.
 */
const MAX_BODY = 64 * 1024;
const SERVER_CERT_REFRESH_MS = 12 * 3_600_000;

const STATUS: Record<string, number> = {
  MCPMESH_INVALID_ARGUMENT: 400,
  MCPMESH_BAD_REQUEST: 400,
  MCPMESH_BAD_CSR: 400,
  MCPMESH_WEAK_KEY: 400,
  MCPMESH_TOKEN_UNKNOWN: 403,
  MCPMESH_TOKEN_EXPIRED: 403,
  MCPMESH_TOKEN_USED: 403,
  MCPMESH_NO_CLIENT_CERT: 401,
  MCPMESH_CERT_UNKNOWN: 403,
  MCPMESH_CERT_REVOKED: 403,
  MCPMESH_CERT_EXPIRED: 403,
  MCPMESH_IDENTITY_MISMATCH: 403,
  MCPMESH_FORBIDDEN: 403,
  MCPMESH_NOT_FOUND: 404,
  MCPMESH_METHOD_NOT_ALLOWED: 405,
  MCPMESH_UNSUPPORTED_MEDIA: 415,
  MCPMESH_TOO_LARGE: 413,
  MCPMESH_UPGRADE_REQUIRED: 426,
  MCPMESH_CA_UNAVAILABLE: 503,
};

class BadRequestError extends MeshError {
  constructor(code: string, message: string) {
    super(code, message);
  }
}

/** The part of the Authority the API needs (consumer-owned interface). */
export type ApiAuthority = Pick<Authority, "enroll" | "renew" | "authenticatePeer" | "revokeAsAdmin" | "crlPem" | "rootPem" | "config" | "issueServerCertificate" | "trustDomain">;

export interface CaServerOptions {
  authority: Authority;
  listen?: string;
  logger?: Logger;
  /** How often the live revocation feed looks for revocations written by other processes. Default 150 ms. */
  watchPollMs?: number;
  /** Ping interval of the feed's WebSocket. Default 15 s. */
  watchHeartbeatMs?: number;
}

export interface RunningCaServer {
  server: Server;
  url: string;
  port: number;
  feed: RevocationFeed;
  close(): Promise<void>;
}

type Peer = { leafDer: Uint8Array | null; chainTrusted: boolean };

/**
 * What TLS established about a connection's peer, read once per connection: a renewing client sends many requests
 * over one keep-alive connection, and building the X509Certificate each time cost ~0.1 ms per request. It cannot
 * change under us: TLS 1.3 only, renegotiation off, no post-handshake authentication. The authority still checks the
 * certificate's record (revocation, expiry) on every request.
 */
const peers = new WeakMap<TLSSocket, Peer>();

function peerOf(req: IncomingMessage): Peer {
  const sock = req.socket as TLSSocket;
  let peer = peers.get(sock);
  if (!peer) {
    // getPeerCertificate(false) rather than getPeerX509Certificate(): the raw DER is all that is needed, without
    // building an X509Certificate (as at the agent's TLS gate). No certificate gives an empty object.
    const raw = sock.getPeerCertificate(false)?.raw;
    peer = { leafDer: raw && raw.length > 0 ? raw : null, chainTrusted: sock.authorized === true };
    peers.set(sock, peer);
  }
  return peer;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
  if (type !== "application/json") throw new BadRequestError("MCPMESH_UNSUPPORTED_MEDIA", "content-type: must be application/json");
  const raw = await readBody(req, MAX_BODY);
  let body: unknown;
  try {
    body = JSON.parse(raw.toString("utf8"));
  } catch {
    throw new BadRequestError("MCPMESH_BAD_REQUEST", "body: not valid JSON");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new BadRequestError("MCPMESH_BAD_REQUEST", "body: must be a JSON object");
  return body as Record<string, unknown>;
}

function send(res: ServerResponse, status: number, body: unknown, type = "application/json"): void {
  const data = type === "application/json" ? JSON.stringify(body) : String(body);
  res.writeHead(status, { "content-type": type, "content-length": Buffer.byteLength(data), "cache-control": "no-store" });
  res.end(data);
}

function renderIssued(c: IssuedCertificate) {
  return { identity: c.identity, kind: c.kind, serial: c.serial, notBefore: new Date(c.notBefore).toISOString(), notAfter: new Date(c.notAfter).toISOString(), certificate: c.chainPem, roots: c.rootsPem };
}

function optionalString(body: Record<string, unknown>, field: string): string | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new InvalidArgumentError(field, "must be a string");
  return v;
}

export function createCaHandler(authority: ApiAuthority, log: Logger) {
  const routes: Record<string, (req: IncomingMessage, res: ServerResponse) => Promise<void>> = {
    "GET /v1/roots": async (_req, res) => send(res, 200, authority.rootPem, "application/x-pem-file"),
    "GET /v1/bundle": async (_req, res) => send(res, 200, authority.rootPem, "application/x-pem-file"),
    "GET /v1/crl": async (req, res) => {
      const pem = await authority.crlPem();
      if (new URL(req.url ?? "/", "https://x").searchParams.get("format") === "der") {
        const der = pemToDer(pem);
        res.writeHead(200, { "content-type": "application/pkix-crl", "content-length": der.length, "cache-control": "no-store" });
        res.end(der);
      } else send(res, 200, pem, "application/x-pem-file");
    },
    // The live revocation feed is a WebSocket (see watch.ts); a plain GET is told so.
    [`GET ${WATCH_PATH}`]: async () => {
      throw new BadRequestError("MCPMESH_UPGRADE_REQUIRED", `${WATCH_PATH} is a WebSocket: send Upgrade: websocket with an agent certificate`);
    },
    "GET /healthz": async (_req, res) => send(res, 200, { ok: true, trustDomain: authority.trustDomain }),
    "POST /v1/enroll": async (req, res) => {
      const body = await readJson(req);
      const token = optionalString(body, "token");
      if (!token) throw new InvalidArgumentError("token", "missing");
      const issued = await authority.enroll(token, body.csr);
      log.info({ event: "enroll", identity: issued.identity, serial: issued.serial, kind: issued.kind }, "certificate enrolled");
      send(res, 201, renderIssued(issued));
    },
    "POST /v1/renew": async (req, res) => {
      const body = await readJson(req);
      const issued = await authority.renew(peerOf(req), body.csr, optionalString(body, "identity"));
      log.info({ event: "renew", identity: issued.identity, serial: issued.serial }, "certificate renewed");
      send(res, 201, renderIssued(issued));
    },
    "POST /v1/revoke": async (req, res) => {
      const body = await readJson(req);
      const caller: CertRecord = authority.authenticatePeer(peerOf(req));
      const serials = authority.revokeAsAdmin(caller, { serial: optionalString(body, "serial"), identity: optionalString(body, "identity"), reason: optionalString(body, "reason") });
      log.info({ event: "revoke", by: caller.identity, serials }, "certificates revoked");
      send(res, 200, { revoked: serials });
    },
  };

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? "/").split("?")[0];
    const handler = routes[`${req.method} ${path}`];
    try {
      if (!handler) {
        const known = Object.keys(routes).some((k) => k.endsWith(` ${path}`));
        throw new BadRequestError(known ? "MCPMESH_METHOD_NOT_ALLOWED" : "MCPMESH_NOT_FOUND", known ? `${req.method} is not allowed on ${path}` : `no such endpoint ${path}`);
      }
      await handler(req, res);
    } catch (e) {
      if (isMeshError(e) && STATUS[e.code]) {
        log.warn({ event: "request_refused", path, code: e.code, reason: e.message }, "request refused");
        if (!res.headersSent) {
          // A refused body is not read to its end: the connection closes after the answer, or Node would keep
          // reading (and discarding) whatever length the client declared, for as long as the client sends.
          if (e instanceof BodyTooLargeError || e instanceof BodyIncompleteError) res.setHeader("connection", "close");
          send(res, STATUS[e.code], { error: { code: e.code, message: e.message } });
        }
      } else {
        log.error({ event: "internal_error", path, err: e }, "internal error");
        if (!res.headersSent) send(res, 500, { error: { code: "MCPMESH_INTERNAL", message: "internal error; see the CA log" } });
      }
    }
  };
}

async function serverCredentials(authority: ApiAuthority): Promise<{ key: KeyObject; cert: string; notAfter: number }> {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const issued = await authority.issueServerCertificate(publicKey);
  return { key: privateKey, cert: issued.chainPem, notAfter: issued.notAfter };
}

/** Starts the CA's HTTPS API; its serverAuth certificate comes from the CA itself and is refreshed every 12 h. */
export async function startCaServer(opts: CaServerOptions): Promise<RunningCaServer> {
  const log = opts.logger ?? silentLogger();
  const authority = opts.authority;
  const configured = new URL(authority.config.url);
  const { host, port } = parseHostPort(opts.listen ?? configured.host, "listen");
  const creds = await serverCredentials(authority);
  const tlsOptions = {
    key: creds.key.export({ type: "pkcs8", format: "pem" }) as string,
    cert: creds.cert,
    ca: authority.rootPem,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: "TLSv1.3" as const,
    // As at the agent: no tickets (every connection presents its certificate afresh), no renegotiation, no compression.
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET | cryptoConstants.SSL_OP_NO_RENEGOTIATION | cryptoConstants.SSL_OP_NO_COMPRESSION,
  };
  const server = createServer({ ...tlsOptions, handshakeTimeout: 10_000, requestTimeout: 30_000, headersTimeout: 10_000, keepAliveTimeout: 5_000 }, createCaHandler(authority, log));
  server.on("tlsClientError", (err, sock) => {
    log.warn({ event: "tls_error", remote: sock.remoteAddress, reason: err.message }, "TLS handshake failed");
  });
  const feed = new RevocationFeed({ authority, logger: log, pollMs: opts.watchPollMs, heartbeatMs: opts.watchHeartbeatMs, watchFile: authority.storeWalPath });
  server.on("upgrade", (req: IncomingMessage, socket, head: Buffer) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== WATCH_PATH || req.method !== "GET") {
      const body = JSON.stringify({ error: { code: "MCPMESH_NOT_FOUND", message: `no WebSocket endpoint ${path} (the feed is ${WATCH_PATH})` } });
      socket.end(`HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    feed.handleUpgrade(req, socket, head);
  });
  const refresh = setInterval(() => {
    serverCredentials(authority).then(
      (c) => server.setSecureContext({ ...tlsOptions, key: c.key.export({ type: "pkcs8", format: "pem" }) as string, cert: c.cert }),
      (e) => log.error({ event: "server_cert_refresh_failed", err: e }, "could not refresh the CA's server certificate"),
    );
  }, SERVER_CERT_REFRESH_MS);
  refresh.unref();
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => {
      clearInterval(refresh);
      feed.close();
      // A busy or forbidden address is the operator's to fix: say so plainly rather than as an internal error.
      const why = e.code === "EADDRINUSE" ? "the address is already in use (EADDRINUSE)" : e.code === "EACCES" ? "permission denied (EACCES)" : e.code === "EADDRNOTAVAIL" ? "no such local address (EADDRNOTAVAIL)" : e.message;
      reject(new InvalidArgumentError("listen", `cannot listen on ${host}:${port}: ${why}`, { cause: e }));
    });
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const actualPort = (server.address() as { port: number }).port;
  const urlHost = host.includes(":") ? `[${host}]` : host;
  log.info({ event: "listening", url: `https://${urlHost}:${actualPort}`, trustDomain: authority.trustDomain }, "CA API listening");
  return {
    server,
    url: `https://${urlHost}:${actualPort}`,
    port: actualPort,
    feed,
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(refresh);
        feed.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

import { createServer, type Server, type ServerOptions } from "node:https";
import type { Socket } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";
import { MeshError } from "../lib/errors.ts";
import { silentLogger, type Logger } from "../lib/log.ts";
import { isLoopbackHost } from "../lib/net.ts";
import { parseSpiffeId } from "../lib/spiffe.ts";
import { splitPemCertificates } from "../lib/x509.ts";
import { loadIdentity, type Identity } from "../identity/store.ts";
import { RenewalScheduler } from "../identity/rotation.ts";
import { caRequest } from "../identity/ca-client.ts";
import { isWildcardHost, loadAgentConfig, type AgentConfig, type EndpointConfig } from "./config.ts";
import { Policy } from "./policy.ts";
import { PinStore } from "./pinning.ts";
import { ArgumentValidator } from "./schema.ts";
import { AuditLog, type AuditSink } from "./audit.ts";
import { Gatekeeper } from "./gatekeeper.ts";
import { SessionTable } from "./session.ts";
import { HttpUpstream } from "./upstream/http.ts";
import { StreamableHttpEdge, sendJson } from "./edge/streamable-http.ts";
import { TlsGate, loadTrustBundle, serverTlsOptions, type PeerIdentity } from "./tls-gate.ts";
import { RevocationList } from "./revocation.ts";
import { errorResponse, SERVER_ERROR } from "./jsonrpc.ts";

export interface AgentOptions {
  logger?: Logger;
  /** Replaces the audit log (tests). */
  audit?: AuditSink;
}

export interface RunningAgent {
  /** The first endpoint's URL. */
  url: string;
  /** Every endpoint's URL by endpoint id. */
  urls: Record<string, string>;
  /** The first listener's port. */
  port: number;
  server: Server;
  servers: Server[];
  /** Re-reads config, identity and trust bundle; keeps the old state if anything is broken. */
  reload(): Promise<void>;
  /** Fetches the CA's CRL now (it is also polled every 30 s). */
  refreshRevocation(): Promise<void>;
  /** Closes every connection of an identity (revocation). */
  disconnect(identity: string): number;
  close(): Promise<void>;
}

export class AgentStartError extends MeshError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("MCPMESH_AGENT_START", message, options);
  }
}

/** TLS handshakes that take longer are dropped (slowloris on the handshake). */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
const CRL_POLL_MS = 30_000;

function trustDomainsOf(cfg: AgentConfig, identity: Identity): string[] {
  if (cfg.trustDomains && cfg.trustDomains.length > 0) return cfg.trustDomains;
  const own = parseSpiffeId(identity.id);
  if (!own) throw new AgentStartError(`the agent's identity ${identity.id} is not a SPIFFE ID`);
  return [own.trustDomain];
}

function upstreamOf(cfg: AgentConfig): HttpUpstream {
  if (!cfg.upstream.url) {
    throw new AgentStartError("upstream: only `url` (Streamable HTTP) is supported by this version of the agent");
  }
  const u = new URL(cfg.upstream.url);
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new AgentStartError(`upstream.url: ${u.protocol} is not supported (http or https)`);
  if (!cfg.upstream.socket && !cfg.upstream.unsafeUpstream && !isLoopbackHost(u.hostname)) {
    throw new AgentStartError(`upstream.url: ${u.hostname} is not a loopback address; the server must not be reachable around the agent (set upstream.unsafeUpstream: true to override)`);
  }
  return new HttpUpstream({ url: cfg.upstream.url, socketPath: cfg.upstream.socket, timeoutMs: cfg.upstream.timeoutMs });
}

/** The compiled, swappable part of the agent: everything a config or identity reload replaces at once. */
interface State {
  cfg: AgentConfig;
  identity: Identity;
  bundle: string[];
  trustDomains: string[];
  /** One compiled policy per endpoint id. */
  policies: Map<string, Policy>;
}

function buildState(cfg: AgentConfig): State {
  const identity = loadIdentity(cfg.identity);
  const trustDomains = trustDomainsOf(cfg, identity);
  const bundle = loadTrustBundle(identity, cfg.trustBundles);
  const withTd = { ...cfg, trustDomains };
  const policies = new Map(cfg.endpoints.map((ep) => [ep.id, Policy.forEndpoint(withTd, ep)] as const));
  return { cfg, identity, bundle, trustDomains, policies };
}

/** Endpoints are fixed for the life of the process: a reload may change their rules, not their doors. */
function doorsOf(cfg: AgentConfig): string {
  return cfg.endpoints.map((e) => `${e.id}@${e.listen.host}:${e.listen.port}${e.path}`).join(",");
}

/** One endpoint at run time: its own sessions, gatekeeper and edge; the upstream is shared. */
interface LiveEndpoint {
  id: string;
  path: string;
  sessions: SessionTable;
  gate: Gatekeeper;
  edge: StreamableHttpEdge;
  url?: string;
}

/** How long `close()` waits for in-flight calls before it cuts the remaining connections. */
const DRAIN_MS = 10_000;

/**
 * Starts the agent: TLS gate → identity → session → policy → upstream. Everything is validated before the port
 * opens; a broken config, identity or bundle refuses to start with an error naming it.
 */
export async function startAgent(config: AgentConfig, opts: AgentOptions = {}): Promise<RunningAgent> {
  const log = opts.logger ?? silentLogger();
  if (config.endpoints.length === 0) throw new AgentStartError("listen: the agent has no endpoint (configure listen + rules, or endpoints)");
  if (!config.listenAnyAddress) {
    for (const ep of config.endpoints) {
      if (isWildcardHost(ep.listen.host)) throw new AgentStartError(`listen: ${ep.listen.host} is a wildcard address; set listenAnyAddress: true to listen on every interface`);
    }
  }
  let state = buildState(config);
  const upstream = upstreamOf(config);
  const pins = PinStore.fromConfig(config);
  const audit = opts.audit ?? new AuditLog({ file: config.audit.file });
  const endpoints = new Map<string, LiveEndpoint>();
  for (const ep of config.endpoints) {
    const sessions = new SessionTable();
    const gate = new Gatekeeper({ policy: state.policies.get(ep.id)!, validator: new ArgumentValidator(), pins, tools: config.tools, limits: config.limits, audit, logger: log.child({ endpoint: ep.id }) });
    const edge = new StreamableHttpEdge({ gate, sessions, upstream, limits: config.limits, logger: log.child({ endpoint: ep.id }), audit });
    endpoints.set(ep.id, { id: ep.id, path: ep.path, sessions, gate, edge });
  }
  const allSessions = () => [...endpoints.values()].map((e) => e.sessions);

  const peers = new WeakMap<TLSSocket, PeerIdentity>();
  const byIdentity = new Map<string, Set<TLSSocket>>();
  // Revocation: with a CA configured the gate fails closed until a valid CRL is held, and again once it is stale.
  let revocation: RevocationList | null = null;
  const crlIssuers = () => [...state.bundle, ...splitPemCertificates(state.identity.certPem).slice(1)];
  const refreshCrl = async (): Promise<void> => {
    if (!config.ca) return;
    try {
      const res = await caRequest({ baseUrl: config.ca, method: "GET", path: "/v1/crl", ca: state.identity.rootsPem, cert: state.identity.certPem, key: state.identity.keyPem });
      if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
      const next = revocation ? revocation.withCrl(res.body.toString("utf8"), crlIssuers()) : RevocationList.fromCrl(res.body.toString("utf8"), crlIssuers());
      revocation = next;
      log.debug({ event: "crl_loaded", entries: next.size }, "CRL loaded");
      // A revocation reaches connections that are already open, not only the next handshake.
      for (const [id, set] of byIdentity) {
        for (const socket of set) {
          const peer = peers.get(socket);
          if (peer && next.isRevoked(peer.serial, peer.issuer)) {
            log.warn({ event: "connection_revoked", identity: id, serial: peer.serial }, "certificate revoked; connection and sessions closed");
            socket.destroy();
            for (const t of allSessions()) t.closeIdentity(id);
          }
        }
      }
    } catch (e) {
      log.warn({ event: "crl_refresh_failed", reason: (e as Error).message }, "could not refresh the CRL; keeping the last one until its nextUpdate");
    }
  };
  await refreshCrl();
  const crlTimer = config.ca ? setInterval(() => void refreshCrl(), CRL_POLL_MS) : null;
  crlTimer?.unref();
  const revocationNow = () => {
    if (!config.ca) return null;
    // No CRL, or a stale one: every serial counts as revoked (fail closed).
    if (!revocation || revocation.isStale()) return FAIL_CLOSED;
    return revocation;
  };

  // One TLS listener per distinct address; endpoints on the same address are told apart by path.
  const groups = new Map<string, EndpointConfig[]>();
  for (const ep of config.endpoints) {
    const key = `${ep.listen.host}|${ep.listen.port}`;
    groups.set(key, [...(groups.get(key) ?? []), ep]);
  }
  let tlsOptions = serverTlsOptions(state.identity, state.bundle, config.tls.minVersion);
  const servers: Server[] = [];
  const gates: TlsGate[] = [];
  let openConnections = 0;
  let inFlight = 0;
  let draining = false;
  const drained = new Set<() => void>();
  const limits = () => state.cfg.limits;

  for (const group of groups.values()) {
    const ids = group.map((e) => e.id);
    const tlsGate = new TlsGate({
      trustDomains: state.trustDomains,
      // The connection-level gate of a listener: some endpoint on it must admit the identity.
      admits: (id) => ids.some((e) => state.policies.get(e)!.admits(id)),
      logger: log,
      revocation: revocationNow,
    });
    gates.push(tlsGate);
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      const peer = peers.get(req.socket as TLSSocket);
      if (!peer) {
        req.socket.destroy();
        return;
      }
      const path = (req.url ?? "/").split("?")[0];
      const ep = group.find((e) => e.path === path);
      if (!ep) return sendJson(res, 404, errorResponse(null, SERVER_ERROR, `Not found: the MCP endpoint is ${group.map((e) => e.path).join(" or ")}`));
      if (!state.policies.get(ep.id)!.admits(peer.id)) {
        log.warn({ event: "endpoint_refused", endpoint: ep.id, identity: peer.id }, "identity not admitted on this endpoint");
        return sendJson(res, 403, errorResponse(null, SERVER_ERROR, "Forbidden"));
      }
      if (draining) res.setHeader("connection", "close");
      // In-flight calls are what a graceful stop waits for; long-lived GET streams are not.
      const counted = req.method === "POST";
      if (counted) inFlight++;
      res.once("close", () => {
        if (!counted) return;
        inFlight--;
        if (inFlight === 0) for (const f of drained) f();
      });
      void endpoints.get(ep.id)!.edge.handle(req, res, { id: peer.id, notBefore: peer.notBefore });
    };
    const server = createServer({ ...tlsOptions, handshakeTimeout: HANDSHAKE_TIMEOUT_MS, connectionsCheckingInterval: 1_000 } as ServerOptions, onRequest);
    server.headersTimeout = 10_000;
    server.requestTimeout = 60_000;
    server.keepAliveTimeout = 10_000;
    // Total connections, counted from the TCP accept (before the handshake), across every listener.
    server.on("connection", (socket: Socket) => {
      if (openConnections >= limits().maxConnections) {
        log.warn({ event: "connection_limit", limit: "maxConnections", remote: `${socket.remoteAddress}:${socket.remotePort}` }, "too many connections; new one closed");
        socket.destroy();
        return;
      }
      openConnections++;
      socket.once("close", () => openConnections--);
    });
    // Decide the peer before the HTTP parser sees a byte: this listener runs first on every connection.
    server.prependListener("secureConnection", (socket: TLSSocket) => {
      const peer = tlsGate.check(socket);
      if (!peer) {
        socket.destroy();
        return;
      }
      let set = byIdentity.get(peer.id);
      if (set && set.size >= limits().maxConnectionsPerIdentity) {
        log.warn({ event: "connection_limit", limit: "maxConnectionsPerIdentity", identity: peer.id }, "too many connections from one identity; new one closed");
        socket.destroy();
        return;
      }
      peers.set(socket, peer);
      if (!set) byIdentity.set(peer.id, (set = new Set()));
      set.add(socket);
      // No connection outlives its certificate: close it at notAfter.
      const expiry = setTimeout(() => {
        log.info({ event: "connection_expired", identity: peer.id, serial: peer.serial }, "client certificate reached notAfter; connection closed");
        socket.destroy();
      }, Math.max(0, Math.min(peer.notAfter - Date.now(), 2 ** 31 - 1)));
      expiry.unref();
      socket.on("close", () => {
        clearTimeout(expiry);
        set!.delete(socket);
        if (set!.size === 0) byIdentity.delete(peer.id);
      });
    });
    server.on("tlsClientError", (err, socket) => {
      log.warn({ event: "handshake_failed", remote: `${socket.remoteAddress}:${socket.remotePort}`, reason: err.message }, "TLS handshake failed");
    });
    servers.push(server);
  }

  // The agent renews its own certificate and swaps it in without dropping connections.
  let renewal: RenewalScheduler | null = null;
  if (config.ca) {
    renewal = new RenewalScheduler({ dir: config.identity, logger: log });
    renewal.on("renewed", () => void reload().catch(() => {}));
    renewal.start();
  }

  const reload = async (): Promise<void> => {
    let next: State;
    try {
      const cfg = config.file ? loadAgentConfig(config.file) : state.cfg;
      if (doorsOf(cfg) !== doorsOf(config)) throw new AgentStartError("endpoints: ids, listen addresses and paths cannot change on reload; restart the agent");
      next = buildState(cfg);
    } catch (e) {
      log.error({ event: "reload_failed", reason: (e as Error).message }, "reload failed; keeping the current configuration and certificates");
      throw e;
    }
    state = next;
    tlsOptions = serverTlsOptions(next.identity, next.bundle, next.cfg.tls.minVersion);
    for (const server of servers) server.setSecureContext(tlsOptions);
    for (const g of gates) g.update({ trustDomains: next.trustDomains });
    for (const ep of endpoints.values()) {
      ep.gate.update({ policy: next.policies.get(ep.id)!, tools: next.cfg.tools, limits: next.cfg.limits });
      ep.edge.update({ limits: next.cfg.limits });
    }
    log.info({ event: "reloaded", identity: next.identity.id, serial: next.identity.serial }, "configuration and certificates reloaded");
  };

  const disconnect = (identity: string): number => {
    const set = byIdentity.get(identity);
    const n = set?.size ?? 0;
    for (const s of set ?? []) s.destroy();
    for (const t of allSessions()) t.closeIdentity(identity);
    return n;
  };

  const urls: Record<string, string> = {};
  let first = 0;
  try {
    let i = 0;
    for (const group of groups.values()) {
      const server = servers[i++];
      const at = group[0].listen;
      await new Promise<void>((resolve, reject) => {
        server.once("error", (e) => reject(new AgentStartError(`cannot listen on ${at.host}:${at.port}: ${e.message}`, { cause: e })));
        server.listen(at.port, at.host, () => resolve());
      });
      const bound = server.address() as { address: string; port: number };
      // A host name can resolve to the wildcard too: judge the address actually bound.
      if (!config.listenAnyAddress && isWildcardHost(bound.address)) {
        throw new AgentStartError(`listen: ${at.host} resolved to the wildcard address ${bound.address}; set listenAnyAddress: true to listen on every interface`);
      }
      const port = bound.port;
      if (first === 0) first = port;
      const host = at.host.includes(":") ? `[${at.host}]` : at.host;
      for (const ep of group) {
        urls[ep.id] = `https://${host}:${port}${ep.path}`;
        endpoints.get(ep.id)!.url = urls[ep.id];
      }
    }
  } catch (e) {
    for (const s of servers) if (s.listening) s.close();
    await upstream.close();
    throw e;
  }
  const url = urls[config.endpoints[0].id];
  log.info({ event: "listening", url, endpoints: urls, identity: state.identity.id, upstream: config.upstream.url, trustDomains: state.trustDomains }, "agent listening");

  const sweep = setInterval(() => {
    for (const t of allSessions()) t.sweep();
  }, 60_000);
  sweep.unref();
  return {
    url,
    urls,
    port: first,
    server: servers[0],
    servers,
    reload,
    disconnect,
    refreshRevocation: refreshCrl,
    close: async () => {
      clearInterval(sweep);
      if (crlTimer) clearInterval(crlTimer);
      renewal?.stop();
      // Graceful stop: no new connections, idle ones closed, in-flight calls get up to DRAIN_MS to finish.
      draining = true;
      const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      for (const s of servers) s.closeIdleConnections();
      if (inFlight > 0) {
        log.info({ event: "draining", inFlight }, "stopping: waiting for in-flight calls");
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, DRAIN_MS);
          const tick = setInterval(() => {
            for (const s of servers) s.closeIdleConnections();
          }, 200);
          function done() {
            clearTimeout(timer);
            clearInterval(tick);
            drained.delete(done);
            resolve();
          }
          drained.add(done);
        });
      }
      for (const t of allSessions()) for (const s of [...t.all()]) t.delete(s.key);
      for (const s of servers) s.closeAllConnections();
      for (const set of byIdentity.values()) for (const s of set) s.destroy();
      await closed;
      await upstream.close();
      if (audit instanceof AuditLog) audit.close();
      log.info({ event: "stopped", inFlight }, "agent stopped");
    },
  };
}

/** Stands in for the revocation list when none valid is held: everything is revoked. */
const FAIL_CLOSED = { isRevoked: () => true } as unknown as RevocationList;

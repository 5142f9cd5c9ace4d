import { createServer, type Server, type ServerOptions } from "node:https";
import type { Socket } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createSecureContext, type TLSSocket } from "node:tls";
import { watch, type FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
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
import { StreamableMessageEdge } from "./edge/streamable-bridge.ts";
import { LegacySseEdge } from "./edge/legacy-sse.ts";
import { WebSocketEdge, refuseUpgrade } from "./edge/websocket.ts";
import { HttpConnector } from "./upstream/http-channel.ts";
import type { UpstreamConnector } from "./upstream/connector.ts";
import { TlsGate, loadTrustBundle, serverTlsOptions, type PeerIdentity } from "./tls-gate.ts";
import { RevocationList } from "./revocation.ts";
import { RevocationFeedClient, type PushedRevocation } from "./feed.ts";
import { errorResponse, SERVER_ERROR } from "./jsonrpc.ts";
import { Limiter } from "./limits.ts";
import type { AgentMetrics, startAdminServer } from "./metrics.ts";
import { AlertEngine, WebhookSender } from "./alerts.ts";
import type { RateSpec } from "./config.ts";
import type { DecisionEvent } from "./gatekeeper.ts";

export interface AgentOptions {
  logger?: Logger;
  /** Replaces the audit log (tests). */
  audit?: AuditSink;
  /** The clock of limits and alerts (tests). */
  now?: () => number;
}

export interface RunningAgent {
  /** The first endpoint's URL. */
  url: string;
  /** Every endpoint's URL by endpoint id. */
  urls: Record<string, string>;
  /** The first listener's port. */
  port: number;
  server: Server;
  /** The admin listener's base URL (`/metrics`, `/status`), when `admin:` is configured. */
  adminUrl?: string;
  metrics?: AgentMetrics;
  servers: Server[];
  /** Re-reads config, identity and trust bundle; keeps the old state if anything is broken. */
  reload(trigger?: string): Promise<void>;
  /** Fetches the CA's CRL now (it is also polled every `revocation.pollInterval` and before its nextUpdate). */
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

/** While no current CRL is held, retry this often (at most). */
const CRL_RETRY_MS = 5_000;
/** CRLs whose thisUpdate is up to this far ahead of our clock still load (a CA clock ahead by minutes). */
const CRL_MAX_SKEW_MS = 5 * 60_000;
/** TLS handshakes that take longer are dropped (slowloris on the handshake). */
export const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * `limits.idleTimeout` on a listener. Node closes a connection that sent no byte after its handshake, or whose request
 * headers did not finish, at `headersTimeout` (checked every `connectionsCheckingInterval`), and one idle between
 * requests at `keepAliveTimeout`; neither runs while a response is being written, so an SSE stream is not cut.
 * `requestTimeout` (whole request received, body included) also runs from the connection's start when no byte came
 * (measured on Node 20: a silent connection is closed at requestTimeout if that is the shorter), so it is at least the
 * idle timeout: raising idleTimeout above 60 s raises the slow-body bound with it.
 */
function applyIdleTimeout(server: Server, ms: number): void {
  server.headersTimeout = ms;
  server.keepAliveTimeout = ms;
  server.requestTimeout = Math.max(REQUEST_TIMEOUT_MS, ms);
}
const REQUEST_TIMEOUT_MS = 60_000;

function trustDomainsOf(cfg: AgentConfig, identity: Identity): string[] {
  if (cfg.trustDomains && cfg.trustDomains.length > 0) return cfg.trustDomains;
  const own = parseSpiffeId(identity.id);
  if (!own) throw new AgentStartError(`the agent's identity ${identity.id} is not a SPIFFE ID`);
  return [own.trustDomain];
}

/**
 * The upstream: a Streamable HTTP server (`url`) is reached both through the byte-forwarding fast path (`HttpUpstream`,
 * for the Streamable HTTP edge) and through message channels (`HttpConnector`, for the SSE and WebSocket edges); a
 * legacy SSE server (`sse`) or a stdio child (`command`) only through message channels.
 */
async function upstreamOf(cfg: AgentConfig, log: Logger): Promise<{ http: HttpUpstream | null; connector: UpstreamConnector }> {
  if (!cfg.upstream.url) {
    if (!cfg.upstream.sse && !cfg.upstream.command) throw new AgentStartError("upstream: one of url, sse or command is required");
    // Loaded only when needed: the SSE and stdio connectors pull in the SDK's client transports.
    const { createMessageConnector } = await import("./upstream/index.ts");
    return { http: null, connector: createMessageConnector(cfg.upstream, { logger: log.child({ upstream: cfg.upstream.sse ? "sse" : "stdio" }) }) };
  }
  const u = new URL(cfg.upstream.url);
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new AgentStartError(`upstream.url: ${u.protocol} is not supported (http or https)`);
  if (!cfg.upstream.socket && !cfg.upstream.unsafeUpstream && !isLoopbackHost(u.hostname)) {
    throw new AgentStartError(`upstream.url: ${u.hostname} is not a loopback address; the server must not be reachable around the agent (set upstream.unsafeUpstream: true to override)`);
  }
  const http = new HttpUpstream({ url: cfg.upstream.url, socketPath: cfg.upstream.socket, timeoutMs: cfg.upstream.timeoutMs });
  return { http, connector: new HttpConnector(http) };
}

/**
 * The paths of an endpoint's transports. The Streamable HTTP path is the endpoint's `path`; legacy SSE and WebSocket
 * sit next to it: a path ending in `/mcp` has that segment replaced (`/mcp` → `/sse`, `/sse/message`, `/ws`;
 * `/team/mcp` → `/team/sse`, ...), any other path gets them appended (`/ro` → `/ro/sse`, `/ro/sse/message`, `/ro/ws`).
 */
export function transportPaths(path: string): { mcp: string; sse: string; sseMessage: string; ws: string } {
  const base = path.endsWith("/mcp") ? path.slice(0, -4) : path.replace(/\/+$/, "");
  return { mcp: path, sse: `${base}/sse`, sseMessage: `${base}/sse/message`, ws: `${base}/ws` };
}

type RouteKind = "mcp" | "sse" | "sseMessage" | "ws";

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
  edge: StreamableHttpEdge | StreamableMessageEdge;
  sse: LegacySseEdge;
  ws: WebSocketEdge;
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
  // Metrics only when there is an admin listener to read them (prom-client is loaded only then: `admin` needs a
  // restart). Loaded before anything is opened, so a failed load leaves nothing to close.
  const metricsModule = config.admin ? await import("./metrics.ts") : undefined;
  const { http: upstream, connector } = await upstreamOf(config, log);
  const closeUpstream = async () => {
    await connector.close().catch(() => {});
    await upstream?.close();
  };
  const pins = PinStore.fromConfig(config);
  const audit = opts.audit ?? new AuditLog({ file: config.audit.file, maxBytes: config.audit.maxBytes, keep: config.audit.keep, chain: config.audit.chain });
  const limiter = new Limiter(config.limits, { now: opts.now });
  const endpoints = new Map<string, LiveEndpoint>();
  const allSessions = () => [...endpoints.values()].map((e) => e.sessions);

  const peers = new WeakMap<TLSSocket, PeerIdentity>();
  const byIdentity = new Map<string, Set<TLSSocket>>();
  let connections = 0;
  const metrics = metricsModule
    ? new metricsModule.AgentMetrics({
        connections: () => connections,
        sessions: () => allSessions().reduce((n, t) => n + t.size, 0),
        certs: () => metricsModule.certLifetimes(state.identity.certPem, state.identity.rootsPem),
        coolingDown: () => limiter.coolingDown(),
      })
    : undefined;
  const webhook = config.alerts.webhook
    ? new WebhookSender({ url: config.alerts.webhook, queue: config.alerts.queue, attempts: config.alerts.attempts, retryMs: config.alerts.retryMs, logger: log, onDrop: () => metrics?.webhookDropped(), onFail: () => metrics?.webhookFailed() })
    : undefined;
  const alerts = new AlertEngine(config.alerts, {
    logger: log,
    now: opts.now,
    onAlert: (a) => {
      metrics?.alert(a.alert);
      webhook?.push(a);
    },
  });
  const onDecision = (ev: DecisionEvent) => {
    metrics?.decision(ev);
    alerts.decision(ev);
  };
  if (metrics && upstream) upstream.observe = (method, seconds, ok, error) => metrics.upstream(method, seconds, ok, error);
  for (const ep of config.endpoints) {
    const sessions = new SessionTable();
    const epLog = log.child({ endpoint: ep.id });
    const gate = new Gatekeeper({ policy: state.policies.get(ep.id)!, validator: new ArgumentValidator(), pins, tools: config.tools, limits: config.limits, audit, logger: epLog, limiter, ruleRates: ruleRates(config, ep.id), onDecision });
    const bridged = { gate, sessions, connector, limits: config.limits, logger: epLog, audit, timeoutMs: config.upstream.timeoutMs };
    // Streamable HTTP → Streamable HTTP keeps the byte-forwarding fast path; every other pair is bridged by message.
    const edge = upstream ? new StreamableHttpEdge({ gate, sessions, upstream, limits: config.limits, logger: epLog, audit }) : new StreamableMessageEdge(bridged);
    endpoints.set(ep.id, { id: ep.id, path: ep.path, sessions, gate, edge, sse: new LegacySseEdge(bridged), ws: new WebSocketEdge(bridged) });
  }

  // Revocation: with a CA configured the gate fails closed until a valid CRL is held, and again once it is stale.

  // Revocation: the live feed (pushes within a second of a revocation) plus the signed CRL, polled before its
  // nextUpdate. With a CA configured and no current CRL, `revocation.onStale` decides: fail closed (default) or serve
  // on the last list with an alert.
  let revocation: RevocationList | null = null;
  let staleSince: number | null = null;
  const crlIssuers = () => [...state.bundle, ...splitPemCertificates(state.identity.certPem).slice(1)];

  /** Closes connections whose certificate the list revokes, and the sessions of identities left with none valid. */
  const closeRevoked = (list: RevocationList, source: string): number => {
    let closed = 0;
    for (const [id, set] of [...byIdentity]) {
      let hit = false;
      let valid = false;
      for (const socket of [...set]) {
        const peer = peers.get(socket);
        if (peer && list.isRevoked(peer.serial, peer.issuer)) {
          log.warn({ event: "connection_revoked", identity: id, serial: peer.serial, source, remote: `${socket.remoteAddress}:${socket.remotePort}` }, "certificate revoked; connection closed");
          socket.destroy();
          hit = true;
          closed++;
        } else valid = true;
      }
      // A session is bound to the identity, not to one certificate: it survives only if the identity still holds a
      // valid connection (a renewed certificate while an older one is revoked as superseded).
      if (hit && !valid) {
        const n = allSessions().reduce((k, t) => k + t.closeIdentity(id), 0);
        if (n > 0) log.warn({ event: "sessions_revoked", identity: id, sessions: n, source }, "sessions of a revoked identity closed");
      }
    }
    return closed;
  };

  const loadCrl = (pem: string, source: "poll" | "feed"): void => {
    // A CRL made seconds ago by a CA whose clock is ahead of ours must still load (see docs: clock skew).
    const opts = { maxClockSkewMs: CRL_MAX_SKEW_MS };
    const next = revocation ? revocation.withCrl(pem, crlIssuers(), opts) : RevocationList.fromCrl(pem, crlIssuers(), opts);
    revocation = next;
    if (staleSince !== null) log.info({ event: "crl_current", staleForMs: Date.now() - staleSince }, "a current CRL is held again");
    staleSince = null;
    log.debug({ event: "crl_loaded", entries: next.size, source, nextUpdate: new Date(next.nextUpdate() ?? 0).toISOString() }, "CRL loaded");
    closeRevoked(next, source);
  };

  /** Notes (once per episode, with an alert) that no current CRL is held. */
  const checkStale = (): void => {
    if (!config.ca) return;
    const missing = !revocation || revocation.crls().length === 0;
    if (!missing && !revocation!.isStale()) return;
    if (staleSince !== null) return;
    staleSince = Date.now();
    const failClosed = state.cfg.revocation.onStale === "fail-closed";
    const what = missing ? "no CRL could be fetched from the CA" : `the CRL passed its nextUpdate (${new Date(revocation!.nextUpdate()!).toISOString()}) and the CA is unreachable`;
    log.alert({ event: "revocation_stale", alert: "revocation_stale", missing, onStale: state.cfg.revocation.onStale },
      failClosed ? `${what}; refusing every new connection until a current CRL is held (revocation.onStale: fail-closed)` : `${what}; still admitting clients on the last revocation list (revocation.onStale: serve-with-alert)`);
  };

  let crlTimer: NodeJS.Timeout | null = null;
  let closing = false;
  const refreshCrl = async (): Promise<void> => {
    if (!config.ca) return;
    try {
      const res = await caRequest({ baseUrl: config.ca, method: "GET", path: "/v1/crl", ca: state.identity.rootsPem, cert: state.identity.certPem, key: state.identity.keyPem });
      if (res.status !== 200) throw new Error(`the CA answered HTTP ${res.status}`);
      loadCrl(res.body.toString("utf8"), "poll");
    } catch (e) {
      log.warn({ event: "crl_refresh_failed", reason: (e as Error).message }, "could not refresh the CRL; keeping the last one until its nextUpdate");
      checkStale();
    }
  };
  /** The next poll: every pollInterval, and before the held CRL's nextUpdate; sooner while failing. */
  const schedulePoll = (): void => {
    if (!config.ca || closing) return;
    const now = Date.now();
    let delay = state.cfg.revocation.pollIntervalMs;
    const nextUpdate = revocation?.nextUpdate();
    if (nextUpdate !== undefined) delay = Math.min(delay, Math.max(1000, (nextUpdate - now) - Math.min(60_000, (nextUpdate - now) / 10)));
    if (!revocation || revocation.crls().length === 0 || staleSince !== null) delay = Math.min(delay, CRL_RETRY_MS);
    crlTimer = setTimeout(() => void refreshCrl().finally(schedulePoll), delay);
    crlTimer.unref();
  };
  await refreshCrl();
  schedulePoll();

  let feed: RevocationFeedClient | null = null;
  if (config.ca && config.revocation.feed) {
    feed = new RevocationFeedClient({
      caUrl: config.ca,
      logger: log,
      credentials: () => ({ ca: state.identity.rootsPem, cert: state.identity.certPem, key: state.identity.keyPem }),
    });
    feed.on("crl", (pem: string) => {
      try {
        loadCrl(pem, "feed");
      } catch (e) {
        log.warn({ event: "crl_refresh_failed", source: "feed", reason: (e as Error).message }, "the CRL sent on the feed was refused; keeping the last one");
      }
    });
    feed.on("revoked", (r: PushedRevocation) => {
      const list = revocation ?? new RevocationList();
      try {
        for (const s of r.serials) list.addSerial(s);
      } catch (e) {
        log.warn({ event: "feed_bad_message", reason: (e as Error).message }, "ignored a malformed revocation from the feed");
        return;
      }
      revocation = list;
      const closed = closeRevoked(list, "feed");
      log.warn({ event: "revocation_received", identity: r.identity, serials: r.serials, reason: r.reason, revokedAt: r.at, connectionsClosed: closed }, "revocation pushed by the CA applied");
    });
    feed.start();
  }

  const revocationNow = () => {
    if (!config.ca) return null;
    const missing = !revocation || revocation.crls().length === 0;
    if (!missing && !revocation!.isStale()) return revocation;
    checkStale();
    if (state.cfg.revocation.onStale === "serve-with-alert") return revocation;
    return missing
      ? { refuse: "revocation_unavailable" as const, detail: "no CRL has been fetched from the CA yet (fail closed)" }
      : { refuse: "revocation_stale" as const, detail: `the CRL passed its nextUpdate ${new Date(revocation!.nextUpdate()!).toISOString()} (fail closed)` };
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
  const countClosed = () => openConnections--;
  const debug = log.isLevelEnabled?.("debug") ?? true;
  /**
   * No connection outlives its certificate: closed at notAfter. One timer per distinct notAfter (all connections of
   * one certificate share it), not one per connection: a Timeout and its timer list per idle connection add up.
   */
  const expiries = new Map<number, { timer: NodeJS.Timeout; sockets: Set<TLSSocket> }>();
  const expiryFor = (notAfter: number) => {
    let e = expiries.get(notAfter);
    if (e) return e;
    const sockets = new Set<TLSSocket>();
    const timer = setTimeout(() => {
      expiries.delete(notAfter);
      const left = new Set<string>();
      for (const socket of [...sockets]) {
        const peer = peers.get(socket)!;
        log.info({ event: "connection_expired", identity: peer.id, serial: peer.serial, notAfter: new Date(notAfter).toISOString() }, "client certificate reached notAfter; connection closed");
        socket.destroy();
        left.add(peer.id);
      }
      // Sessions of an identity left without any live connection end with it (its streams are gone already).
      for (const id of left) if (!byIdentity.get(id)?.size) for (const t of allSessions()) t.closeIdentity(id);
    }, Math.max(0, Math.min(notAfter - Date.now(), 2 ** 31 - 1)));
    timer.unref();
    expiries.set(notAfter, (e = { timer, sockets }));
    return e;
  };

  for (const group of groups.values()) {
    const ids = group.map((e) => e.id);
    // Every transport path of every endpoint on this listener, which must not collide.
    const routes = new Map<string, { ep: EndpointConfig; kind: RouteKind }>();
    for (const ep of group) {
      for (const [kind, p] of Object.entries(transportPaths(ep.path)) as [RouteKind, string][]) {
        const other = routes.get(p);
        if (other) throw new AgentStartError(`endpoints: ${p} (${kind} of endpoint ${ep.id}) collides with the ${other.kind} path of endpoint ${other.ep.id} on ${ep.listen.host}:${ep.listen.port}; choose other paths`);
        routes.set(p, { ep, kind });
      }
    }
    const admitted = (ep: EndpointConfig, peer: PeerIdentity): boolean => {
      if (state.policies.get(ep.id)!.admits(peer.id)) return true;
      log.warn({ event: "endpoint_refused", endpoint: ep.id, identity: peer.id }, "identity not admitted on this endpoint");
      return false;
    };
    const tlsGate = new TlsGate({
      trustDomains: state.trustDomains,
      // The connection-level gate of a listener: some endpoint on it must admit the identity.
      admits: (id) => ids.some((e) => state.policies.get(e)!.admits(id)),
      logger: log,
      onRefuse: (reason, remote) => {
        metrics?.handshakeFailure(reason);
        alerts.handshakeFailure(remote, reason);
      },
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
      const route = routes.get(path);
      if (!route) return sendJson(res, 404, errorResponse(null, SERVER_ERROR, `Not found: the MCP endpoint is ${group.map((e) => e.path).join(" or ")}`));
      const ep = route.ep;
      if (!admitted(ep, peer)) return sendJson(res, 403, errorResponse(null, SERVER_ERROR, "Forbidden"));
      if (route.kind === "ws") return sendJson(res, 426, errorResponse(null, SERVER_ERROR, "Upgrade Required: this path speaks WebSocket (subprotocol mcp)"), { upgrade: "websocket" });
      if (draining) res.setHeader("connection", "close");
      // In-flight calls are what a graceful stop waits for; long-lived GET streams are not.
      const counted = req.method === "POST";
      if (counted) inFlight++;
      res.once("close", () => {
        if (!counted) return;
        inFlight--;
        if (inFlight === 0) for (const f of drained) f();
      });
      const live = endpoints.get(ep.id)!;
      const caller = { id: peer.id, notBefore: peer.notBefore };
      if (route.kind === "sse") {
        if (draining) return sendJson(res, 503, errorResponse(null, SERVER_ERROR, "The agent is stopping"));
        return void live.sse.handleStream(req, res, caller, transportPaths(ep.path).sseMessage).catch(() => res.destroy());
      }
      if (route.kind === "sseMessage") return void live.sse.handleMessage(req, res, caller).catch(() => res.destroy());
      void live.edge.handle(req, res, caller);
    };
    /** WebSocket upgrades: the same TLS gate decided the peer at the handshake; paths and endpoint admission as for HTTP. */
    const onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const peer = peers.get(socket as TLSSocket);
      if (!peer) return void socket.destroy();
      const route = routes.get((req.url ?? "/").split("?")[0]);
      if (!route || route.kind !== "ws") return refuseUpgrade(socket, 404, "Not found: WebSocket is served at " + group.map((e) => transportPaths(e.path).ws).join(" or "));
      if (!admitted(route.ep, peer)) return refuseUpgrade(socket, 403, "Forbidden");
      if (draining) return refuseUpgrade(socket, 503, "The agent is stopping");
      void endpoints.get(route.ep.id)!.ws.handleUpgrade(req, socket, head, { id: peer.id, notBefore: peer.notBefore }).catch(() => socket.destroy());
    };
    const server = createServer({ ...tlsOptions, handshakeTimeout: HANDSHAKE_TIMEOUT_MS, connectionsCheckingInterval: 1_000 } as ServerOptions, onRequest);
    server.on("upgrade", onUpgrade);
    applyIdleTimeout(server, limits().idleTimeoutMs);
    // Total connections, counted from the TCP accept (before the handshake), across every listener.
    server.on("connection", (socket: Socket) => {
      if (openConnections >= limits().maxConnections) {
        log.warn({ event: "connection_limit", limit: "maxConnections", remote: `${socket.remoteAddress}:${socket.remotePort}` }, "too many connections; new one closed");
        socket.destroy();
        return;
      }
      openConnections++;
      socket.once("close", countClosed);
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
      // The remote address is kept for the debug lines only (a string per connection otherwise held for its life).
      const remote = debug ? `${socket.remoteAddress}:${socket.remotePort}` : undefined;
      if (debug) log.debug({ event: "connection_accepted", identity: peer.id, serial: peer.serial, remote }, "client connection accepted");
      if (!set) byIdentity.set(peer.id, (set = new Set()));
      set.add(socket);
      connections++;
      const expiry = expiryFor(peer.notAfter);
      expiry.sockets.add(socket);
      socket.on("close", () => {
        connections--;
        if (debug) log.debug({ event: "connection_closed", identity: peer.id, serial: peer.serial, remote }, "client connection closed");
        expiry.sockets.delete(socket);
        if (expiry.sockets.size === 0 && expiries.get(peer.notAfter) === expiry) {
          clearTimeout(expiry.timer);
          expiries.delete(peer.notAfter);
        }
        set!.delete(socket);
        if (set!.size === 0) byIdentity.delete(peer.id);
      });
    });
    server.on("tlsClientError", (err, socket) => {
      const remote = `${socket.remoteAddress}:${socket.remotePort}`;
      log.warn({ event: "handshake_failed", remote, reason: err.message }, "TLS handshake failed");
      const reason = (err as NodeJS.ErrnoException).code ?? "tls_error";
      metrics?.handshakeFailure(reason);
      alerts.handshakeFailure(remote, reason);
    });
    servers.push(server);
  }

  // The agent renews its own certificate and swaps it in without dropping connections.
  let renewal: RenewalScheduler | null = null;
  if (config.ca) {
    renewal = new RenewalScheduler({ dir: config.identity, logger: log });
    renewal.on("renewed", () => void reload("renewal").catch(() => {}));
    renewal.start();
  }

  let reloading: Promise<void> = Promise.resolve();
  const reload = (trigger = "sighup"): Promise<void> => {
    const run = reloading.then(() => doReload(trigger));
    reloading = run.catch(() => {});
    return run;
  };
  const doReload = async (trigger: string): Promise<void> => {
    let next: State;
    let nextTls: ReturnType<typeof serverTlsOptions>;
    try {
      const cfg = config.file ? loadAgentConfig(config.file) : state.cfg;
      if (doorsOf(cfg) !== doorsOf(config)) throw new AgentStartError("endpoints: ids, listen addresses and paths cannot change on reload; restart the agent");
      next = buildState(cfg);
      nextTls = serverTlsOptions(next.identity, next.bundle, next.cfg.tls.minVersion);
      // Everything the swap needs is built (and can fail) before anything is swapped.
      createSecureContext(nextTls);
    } catch (e) {
      log.error({ event: "reload_failed", trigger, reason: (e as Error).message }, "reload failed; keeping the current configuration, certificates and trust bundle");
      throw e;
    }
    const fixed = (c: AgentConfig) => JSON.stringify([c.listen, c.upstream, c.ca ?? null, c.audit, c.pinning, c.revocation.feed, c.reload.watch, c.admin ?? null]);
    if (fixed(next.cfg) !== fixed(state.cfg)) {
      log.warn({ event: "reload_partial", trigger }, "listen, upstream, ca, audit, pinning, revocation.feed, reload.watch and admin changes take effect on restart only");
    }
    const identityChanged = next.identity.serial !== state.identity.serial;
    state = next;
    tlsOptions = nextTls;
    for (const server of servers) {
      server.setSecureContext(tlsOptions);
      applyIdleTimeout(server, next.cfg.limits.idleTimeoutMs);
    }
    for (const g of gates) g.update({ trustDomains: next.trustDomains });
    for (const ep of endpoints.values()) {
      ep.gate.update({ policy: next.policies.get(ep.id)!, tools: next.cfg.tools, limits: next.cfg.limits, ruleRates: ruleRates(next.cfg, ep.id) });
      ep.edge.update({ limits: next.cfg.limits });
      ep.sse.update({ limits: next.cfg.limits });
      ep.ws.update({ limits: next.cfg.limits });
    }
    limiter.update(next.cfg.limits);
    alerts.update(next.cfg.alerts);
    // The feed authenticates with the agent's certificate: use the new one from now on.
    if (identityChanged) feed?.reconnect();
    log.info({ event: "reloaded", trigger, identity: next.identity.id, serial: next.identity.serial, bundle: next.bundle.length }, "configuration and certificates reloaded");
  };

  // Reload on file change: the config file, the identity directory and the extra bundle files, debounced.
  const watchers: FSWatcher[] = [];
  let debounce: NodeJS.Timeout | null = null;
  const onChange = (what: string) => {
    if (debounce) clearTimeout(debounce);
    debounce = setTimeout(() => {
      debounce = null;
      void reload(`file:${what}`).catch(() => {});
    }, state.cfg.reload.debounceMs);
    debounce.unref();
  };
  if (config.reload.watch) {
    // Directories are watched, not files: an atomic replace (rename over) would orphan a watch on the old inode.
    const targets = new Map<string, Set<string> | null>();
    const addFile = (file: string) => {
      const d = dirname(file);
      const cur = targets.get(d);
      if (cur === null) return;
      targets.set(d, new Set([...(cur ?? []), basename(file)]));
    };
    if (config.file) addFile(config.file);
    for (const f of config.trustBundles) addFile(f);
    targets.set(config.identity, null);
    for (const [d, names] of targets) {
      try {
        const w = watch(d, { persistent: false }, (_type, name) => {
          if (names === null || (name !== null && names.has(String(name)))) onChange(names === null ? `${d}/${name ?? ""}` : String(name));
        });
        w.on("error", (e) => log.warn({ event: "watch_failed", dir: d, reason: e.message }, "file watching stopped; SIGHUP still reloads"));
        watchers.push(w);
      } catch (e) {
        log.warn({ event: "watch_failed", dir: d, reason: (e as Error).message }, "cannot watch for changes; SIGHUP still reloads");
      }
    }
  }

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
    await closeUpstream();
    throw e;
  }
  const url = urls[config.endpoints[0].id];
  let admin: Awaited<ReturnType<typeof startAdminServer>> | undefined;
  if (config.admin && metricsModule && metrics) {
    try {
      admin = await metricsModule.startAdminServer(config.admin.listen, metrics);
    } catch (e) {
      await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
      await closeUpstream();
      throw new AgentStartError(`cannot listen on admin.listen ${config.admin.listen.host}:${config.admin.listen.port}: ${(e as Error).message}`, { cause: e });
    }
  }
  log.info({ event: "listening", url, endpoints: urls, admin: admin?.url, identity: state.identity.id, upstream: config.upstream.url ?? config.upstream.sse ?? config.upstream.command?.[0], upstreamKind: connector.kind, trustDomains: state.trustDomains }, "agent listening");

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
    adminUrl: admin?.url,
    metrics,
    reload,
    disconnect,
    refreshRevocation: refreshCrl,
    close: async () => {
      closing = true;
      clearInterval(sweep);
      if (crlTimer) clearTimeout(crlTimer);
      if (debounce) clearTimeout(debounce);
      for (const w of watchers) w.close();
      feed?.stop();
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
      await closeUpstream();
      await admin?.close();
      await webhook?.drain(2000);
      webhook?.close();
      if (audit instanceof AuditLog) await audit.close();
      log.info({ event: "stopped", inFlight }, "agent stopped");
    },
  };
}

/** The rate limits that allow rules of one endpoint carry, by rule id (ids are unique within an endpoint). */
function ruleRates(cfg: AgentConfig, endpointId: string): Map<string, RateSpec> {
  const m = new Map<string, RateSpec>();
  for (const r of cfg.endpoints.find((e) => e.id === endpointId)?.rules ?? []) if (r.rate) m.set(r.id, r.rate);
  return m;
}

import { createServer, type Server } from "node:https";
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
import { loadAgentConfig, type AgentConfig } from "./config.ts";
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
import { Limiter } from "./limits.ts";
import { AgentMetrics, certLifetimes, startAdminServer } from "./metrics.ts";
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
  url: string;
  port: number;
  server: Server;
  /** The admin listener's base URL (`/metrics`, `/status`), when `admin:` is configured. */
  adminUrl?: string;
  metrics?: AgentMetrics;
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

const MCP_PATH = "/mcp";
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
  policy: Policy;
}

function buildState(cfg: AgentConfig): State {
  const identity = loadIdentity(cfg.identity);
  const trustDomains = trustDomainsOf(cfg, identity);
  const bundle = loadTrustBundle(identity, cfg.trustBundles);
  const policy = Policy.compile({ ...cfg, trustDomains });
  return { cfg, identity, bundle, trustDomains, policy };
}

/**
 * Starts the agent: TLS gate → identity → session → policy → upstream. Everything is validated before the port
 * opens; a broken config, identity or bundle refuses to start with an error naming it.
 */
export async function startAgent(config: AgentConfig, opts: AgentOptions = {}): Promise<RunningAgent> {
  const log = opts.logger ?? silentLogger();
  let state = buildState(config);
  const upstream = upstreamOf(config);
  const pins = PinStore.fromConfig(config);
  const audit = opts.audit ?? new AuditLog({ file: config.audit.file, maxBytes: config.audit.maxBytes, keep: config.audit.keep, chain: config.audit.chain });
  const sessions = new SessionTable();
  const limiter = new Limiter(config.limits, { now: opts.now });
  const peers = new WeakMap<TLSSocket, PeerIdentity>();
  const byIdentity = new Map<string, Set<TLSSocket>>();
  let connections = 0;
  // Metrics only when there is an admin listener to read them.
  const metrics = config.admin
    ? new AgentMetrics({
        connections: () => connections,
        sessions: () => sessions.size,
        certs: () => certLifetimes(state.identity.certPem, state.identity.rootsPem),
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
  const gate = new Gatekeeper({ policy: state.policy, validator: new ArgumentValidator(), pins, tools: config.tools, limits: config.limits, audit, logger: log, limiter, ruleRates: ruleRates(config), onDecision });
  if (metrics) upstream.observe = (method, seconds, ok, error) => metrics.upstream(method, seconds, ok, error);
  const edge = new StreamableHttpEdge({ gate, sessions, upstream, maxBodyBytes: config.limits.maxBodyBytes, logger: log, audit });

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
            sessions.closeIdentity(id);
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
  const tlsGate = new TlsGate({
    trustDomains: state.trustDomains,
    admits: (id) => state.policy.admits(id),
    logger: log,
    onRefuse: (reason, remote) => {
      metrics?.handshakeFailure(reason);
      alerts.handshakeFailure(remote, reason);
    },
    revocation: () => {
      if (!config.ca) return null;
      // No CRL, or a stale one: every serial counts as revoked (fail closed).
      if (!revocation || revocation.isStale()) return FAIL_CLOSED;
      return revocation;
    },
  });

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const peer = peers.get(req.socket as TLSSocket);
    if (!peer) {
      req.socket.destroy();
      return;
    }
    const path = (req.url ?? "/").split("?")[0];
    if (path !== MCP_PATH) return sendJson(res, 404, errorResponse(null, SERVER_ERROR, `Not found: the MCP endpoint is ${MCP_PATH}`));
    void edge.handle(req, res, { id: peer.id, notBefore: peer.notBefore });
  };
  let tlsOptions = serverTlsOptions(state.identity, state.bundle, config.tls.minVersion);
  const server = createServer({ ...tlsOptions, handshakeTimeout: 10_000 }, onRequest);
  server.headersTimeout = 10_000;
  server.requestTimeout = 60_000;
  server.keepAliveTimeout = 10_000;
  // Decide the peer before the HTTP parser sees a byte: this listener runs first on every connection.
  server.prependListener("secureConnection", (socket: TLSSocket) => {
    const peer = tlsGate.check(socket);
    if (!peer) {
      socket.destroy();
      return;
    }
    peers.set(socket, peer);
    let set = byIdentity.get(peer.id);
    if (!set) byIdentity.set(peer.id, (set = new Set()));
    set.add(socket);
    connections++;
    // No connection outlives its certificate: close it at notAfter.
    const expiry = setTimeout(() => {
      log.info({ event: "connection_expired", identity: peer.id, serial: peer.serial }, "client certificate reached notAfter; connection closed");
      socket.destroy();
    }, Math.max(0, Math.min(peer.notAfter - Date.now(), 2 ** 31 - 1)));
    expiry.unref();
    socket.on("close", () => {
      connections--;
      clearTimeout(expiry);
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
      next = buildState(cfg);
    } catch (e) {
      log.error({ event: "reload_failed", reason: (e as Error).message }, "reload failed; keeping the current configuration and certificates");
      throw e;
    }
    state = next;
    tlsOptions = serverTlsOptions(next.identity, next.bundle, next.cfg.tls.minVersion);
    server.setSecureContext(tlsOptions);
    tlsGate.update({ trustDomains: next.trustDomains });
    gate.update({ policy: next.policy, tools: next.cfg.tools, limits: next.cfg.limits, ruleRates: ruleRates(next.cfg) });
    limiter.update(next.cfg.limits);
    alerts.update(next.cfg.alerts);
    log.info({ event: "reloaded", identity: next.identity.id, serial: next.identity.serial }, "configuration and certificates reloaded");
  };

  const disconnect = (identity: string): number => {
    const set = byIdentity.get(identity);
    const n = set?.size ?? 0;
    for (const s of set ?? []) s.destroy();
    sessions.closeIdentity(identity);
    return n;
  };

  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new AgentStartError(`cannot listen on ${config.listen.host}:${config.listen.port}: ${e.message}`, { cause: e })));
    server.listen(config.listen.port, config.listen.host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const host = config.listen.host.includes(":") ? `[${config.listen.host}]` : config.listen.host;
  const url = `https://${host}:${port}${MCP_PATH}`;
  let admin: Awaited<ReturnType<typeof startAdminServer>> | undefined;
  if (config.admin && metrics) {
    try {
      admin = await startAdminServer(config.admin.listen, metrics);
    } catch (e) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      throw new AgentStartError(`cannot listen on admin.listen ${config.admin.listen.host}:${config.admin.listen.port}: ${(e as Error).message}`, { cause: e });
    }
  }
  log.info({ event: "listening", url, admin: admin?.url, identity: state.identity.id, upstream: config.upstream.url, trustDomains: state.trustDomains }, "agent listening");

  const sweep = setInterval(() => sessions.sweep(), 60_000);
  sweep.unref();
  return {
    url,
    port,
    server,
    adminUrl: admin?.url,
    metrics,
    reload,
    disconnect,
    refreshRevocation: refreshCrl,
    close: async () => {
      clearInterval(sweep);
      if (crlTimer) clearInterval(crlTimer);
      renewal?.stop();
      for (const s of [...sessions.all()]) sessions.delete(s.key);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const set of byIdentity.values()) for (const s of set) s.destroy();
      });
      await upstream.close();
      await admin?.close();
      await webhook?.drain(2000);
      webhook?.close();
      if (audit instanceof AuditLog) await audit.close();
    },
  };
}

function ruleRates(cfg: AgentConfig): Map<string, RateSpec> {
  const m = new Map<string, RateSpec>();
  for (const r of cfg.rules) if (r.rate) m.set(r.id, r.rate);
  return m;
}

/** Stands in for the revocation list when none valid is held: everything is revoked. */
const FAIL_CLOSED = { isRevoked: () => true } as unknown as RevocationList;

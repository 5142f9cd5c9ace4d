import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { X509Certificate } from "node:crypto";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ListenAddress } from "./config.ts";
import type { DecisionEvent } from "./gatekeeper.ts";
import { splitPemCertificates } from "../lib/x509.ts";

/**
 * The agent's Prometheus metrics (prom-client, one registry per agent) and the admin listener that serves them,
 * with a JSON `/status` summary for `mcpmesh agent status`. Label values are identities, tool names and fixed
 * reasons; never arguments.
 */

export interface CertInfo {
  role: "own" | "intermediate" | "root";
  subject: string;
  notAfter: number;
}

/** The subject DN, or for SVIDs (empty subject) the SAN. */
function nameOf(c: X509Certificate): string {
  return (c.subject ?? "").replace(/\n/g, ", ") || (c.subjectAltName ?? "");
}

/** Own certificate (leaf), the chain's intermediates and the trust roots, with their notAfter. */
export function certLifetimes(certPem: string, rootsPem: string): CertInfo[] {
  const out: CertInfo[] = [];
  const chain = splitPemCertificates(certPem);
  chain.forEach((pem, i) => {
    const c = new X509Certificate(pem);
    out.push({ role: i === 0 ? "own" : "intermediate", subject: nameOf(c), notAfter: Date.parse(c.validTo) });
  });
  for (const pem of splitPemCertificates(rootsPem)) {
    const c = new X509Certificate(pem);
    out.push({ role: "root", subject: nameOf(c), notAfter: Date.parse(c.validTo) });
  }
  return out;
}

/** Upstream health from recent outcomes: down after `downAfter` consecutive failures, up again on the first success. */
export class UpstreamHealth {
  #failures = 0;
  #up = true;
  #lastError: string | null = null;
  #lastChange = Date.now();
  constructor(readonly downAfter = 3) {}

  record(ok: boolean, error?: string): void {
    if (ok) {
      this.#failures = 0;
      if (!this.#up) this.#lastChange = Date.now();
      this.#up = true;
      return;
    }
    this.#failures++;
    this.#lastError = error ?? "error";
    if (this.#up && this.#failures >= this.downAfter) {
      this.#up = false;
      this.#lastChange = Date.now();
    }
  }

  get up(): boolean {
    return this.#up;
  }

  state(): { up: boolean; consecutiveFailures: number; lastError: string | null; since: string } {
    return { up: this.#up, consecutiveFailures: this.#failures, lastError: this.#lastError, since: new Date(this.#lastChange).toISOString() };
  }
}

export interface MetricsSources {
  connections: () => number;
  sessions: () => number;
  certs: () => CertInfo[];
  coolingDown: () => { identity: string; leftMs: number }[];
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly health = new UpstreamHealth();
  readonly #calls: Counter<"identity" | "method" | "tool" | "decision">;
  readonly #limited: Counter<"identity" | "scope">;
  readonly #decision: Histogram<"method">;
  readonly #upstream: Histogram<"method" | "outcome">;
  readonly #handshakes: Counter<"reason">;
  readonly #alerts: Counter<"kind">;
  readonly #webhookDropped: Counter;
  readonly #webhookFailed: Counter;
  readonly #sources: MetricsSources;
  readonly #started = Date.now();
  /**
   * mcpmesh_calls_total is counted here, per label set, and handed to prom-client when the metric is read (scrape or
   * status): prom-client hashes the label object on every inc(), which is per-request work a plain map lookup avoids.
   * The map holds one entry per label set, exactly what the counter itself holds.
   */
  readonly #pendingCalls = new Map<string, { labels: { identity: string; method: string; tool: string; decision: string }; n: number }>();

  constructor(sources: MetricsSources) {
    this.#sources = sources;
    const registers = [this.registry];
    const pending = this.#pendingCalls;
    this.#calls = new Counter({ name: "mcpmesh_calls_total", help: "Client messages decided by the agent, by identity, method, tool and decision", labelNames: ["identity", "method", "tool", "decision"], registers, collect() {
      for (const c of pending.values()) {
        if (c.n > 0) this.inc(c.labels, c.n);
        c.n = 0;
      }
    } });
    this.#limited = new Counter({ name: "mcpmesh_rate_limited_total", help: "Calls refused by a rate, concurrency or cool-down limit", labelNames: ["identity", "scope"], registers });
    this.#decision = new Histogram({
      name: "mcpmesh_decision_seconds", help: "Time the agent spent deciding one message", labelNames: ["method"], registers,
      buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
    });
    this.#upstream = new Histogram({
      name: "mcpmesh_upstream_seconds", help: "Upstream round trip (request sent to response headers)", labelNames: ["method", "outcome"], registers,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    });
    this.#handshakes = new Counter({ name: "mcpmesh_handshake_failures_total", help: "Refused or failed TLS handshakes, by reason", labelNames: ["reason"], registers });
    this.#alerts = new Counter({ name: "mcpmesh_alerts_total", help: "Anomaly alerts raised, by kind", labelNames: ["kind"], registers });
    this.#webhookDropped = new Counter({ name: "mcpmesh_alert_webhook_dropped_total", help: "Alerts dropped because the webhook queue was full or delivery kept failing", registers });
    this.#webhookFailed = new Counter({ name: "mcpmesh_alert_webhook_failures_total", help: "Failed webhook delivery attempts", registers });
    new Gauge({ name: "mcpmesh_open_connections", help: "Open mTLS client connections", registers, collect() {
      this.set(sources.connections());
    } });
    new Gauge({ name: "mcpmesh_sessions", help: "MCP sessions tracked by the agent", registers, collect() {
      this.set(sources.sessions());
    } });
    new Gauge({ name: "mcpmesh_cooldowns", help: "Identities in a rate-limit cool-down", registers, collect() {
      this.set(sources.coolingDown().length);
    } });
    const health = this.health;
    new Gauge({ name: "mcpmesh_upstream_up", help: "1 if the upstream answered recently, 0 after consecutive failures", registers, collect() {
      this.set(health.up ? 1 : 0);
    } });
    new Gauge({ name: "mcpmesh_certificate_expiry_timestamp_seconds", help: "notAfter of the agent's certificate, its chain and trust roots", labelNames: ["role", "subject"], registers, collect() {
      this.reset();
      for (const c of sources.certs()) this.set({ role: c.role, subject: c.subject }, c.notAfter / 1000);
    } });
  }

  decision(ev: DecisionEvent): void {
    const tool = ev.tool ?? "";
    // Length-prefixed, so no tool name can make two label sets share a key.
    const key = `${ev.identity.length}:${ev.identity}${ev.method.length}:${ev.method}${tool.length}:${tool}${ev.decision}`;
    const c = this.#pendingCalls.get(key);
    if (c) c.n++;
    else this.#pendingCalls.set(key, { labels: { identity: ev.identity, method: ev.method, tool, decision: ev.decision }, n: 1 });
    this.#decision.observe({ method: ev.method }, ev.seconds);
    if (ev.failure === "rate") this.#limited.inc({ identity: ev.identity, scope: ev.limitScope ?? "" });
  }

  upstream(method: string, seconds: number, ok: boolean, error?: string): void {
    this.#upstream.observe({ method, outcome: ok ? "ok" : "error" }, seconds);
    this.health.record(ok, error);
  }

  handshakeFailure(reason: string): void {
    this.#handshakes.inc({ reason });
  }

  alert(kind: string): void {
    this.#alerts.inc({ kind });
  }

  webhookDropped(): void {
    this.#webhookDropped.inc();
  }

  webhookFailed(): void {
    this.#webhookFailed.inc();
  }

  /** The human-oriented summary behind `/status`. */
  async status(): Promise<AgentStatus> {
    const calls = (await this.#calls.get()).values;
    const byIdentity = new Map<string, { allowed: number; denied: number }>();
    const byTool = new Map<string, { allowed: number; denied: number }>();
    let allowed = 0;
    let denied = 0;
    for (const v of calls) {
      const l = v.labels as Record<string, string>;
      const deny = l.decision === "deny";
      if (deny) denied += v.value;
      else allowed += v.value;
      const add = (m: Map<string, { allowed: number; denied: number }>, k: string) => {
        const e = m.get(k) ?? { allowed: 0, denied: 0 };
        if (deny) e.denied += v.value;
        else e.allowed += v.value;
        m.set(k, e);
      };
      add(byIdentity, l.identity);
      if (l.tool) add(byTool, l.tool);
    }
    const top = (m: Map<string, { allowed: number; denied: number }>) =>
      [...m.entries()].map(([name, c]) => ({ name, ...c })).sort((a, b) => b.allowed + b.denied - (a.allowed + a.denied)).slice(0, 10);
    const handshakes = (await this.#handshakes.get()).values.map((v) => ({ reason: String(v.labels.reason), count: v.value }));
    const limited = (await this.#limited.get()).values.reduce((n, v) => n + v.value, 0);
    const alerts = (await this.#alerts.get()).values.map((v) => ({ kind: String(v.labels.kind), count: v.value }));
    return {
      uptimeSeconds: Math.round((Date.now() - this.#started) / 1000),
      connections: this.#sources.connections(),
      sessions: this.#sources.sessions(),
      calls: { allowed, denied, rateLimited: limited },
      topIdentities: top(byIdentity),
      topTools: top(byTool),
      handshakeFailures: handshakes,
      coolingDown: this.#sources.coolingDown(),
      alerts,
      certificates: this.#sources.certs().map((c) => ({ ...c, notAfter: new Date(c.notAfter).toISOString(), secondsLeft: Math.round((c.notAfter - Date.now()) / 1000) })),
      upstream: this.health.state(),
    };
  }
}

export interface AgentStatus {
  uptimeSeconds: number;
  connections: number;
  sessions: number;
  calls: { allowed: number; denied: number; rateLimited: number };
  topIdentities: { name: string; allowed: number; denied: number }[];
  topTools: { name: string; allowed: number; denied: number }[];
  handshakeFailures: { reason: string; count: number }[];
  coolingDown: { identity: string; leftMs: number }[];
  alerts: { kind: string; count: number }[];
  certificates: { role: string; subject: string; notAfter: string; secondsLeft: number }[];
  upstream: { up: boolean; consecutiveFailures: number; lastError: string | null; since: string };
}

/** The admin listener: GET /metrics (Prometheus text), /status (JSON), /healthz. Loopback only (config enforces it). */
export async function startAdminServer(listen: ListenAddress, metrics: AgentMetrics): Promise<{ server: Server; url: string; close(): Promise<void> }> {
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const path = (req.url ?? "/").split("?")[0];
      if (req.method !== "GET") return void res.writeHead(405, { allow: "GET" }).end();
      try {
        if (path === "/metrics") {
          const body = await metrics.registry.metrics();
          res.writeHead(200, { "content-type": metrics.registry.contentType }).end(body);
        } else if (path === "/status") {
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(await metrics.status()));
        } else if (path === "/healthz") {
          const up = metrics.health.up;
          res.writeHead(up ? 200 : 503, { "content-type": "text/plain" }).end(up ? "ok\n" : "upstream down\n");
        } else res.writeHead(404, { "content-type": "text/plain" }).end("not found: /metrics, /status, /healthz\n");
      } catch (e) {
        res.writeHead(500, { "content-type": "text/plain" }).end(`${(e as Error).message}\n`);
      }
    })();
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const host = listen.host.includes(":") ? `[${listen.host}]` : listen.host;
  return {
    server,
    url: `http://${host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

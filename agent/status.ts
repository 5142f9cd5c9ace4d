import { MeshError } from "../lib/errors.ts";
import { formatDuration } from "../lib/duration.ts";
import type { AgentStatus } from "./metrics.ts";

/** Reads `/status` from an agent's admin listener. */
export async function fetchStatus(base: string): Promise<AgentStatus> {
  const url = new URL("/status", base);
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    throw new MeshError("MCPMESH_ADMIN", `cannot reach the agent's admin listener at ${url.origin}: ${((e as Error).cause as Error)?.message ?? (e as Error).message}`);
  }
  if (res.status !== 200) throw new MeshError("MCPMESH_ADMIN", `${url.href} answered HTTP ${res.status}`);
  return (await res.json()) as AgentStatus;
}

const left = (s: number) => (s <= 0 ? "EXPIRED" : `${formatDuration(Math.max(1000, Math.round(s / 60) * 60_000))} left`);

/** The human summary `mcpmesh agent status` prints. */
export function formatStatus(st: AgentStatus): string {
  const out: string[] = [];
  out.push(`upstream      ${st.upstream.up ? "UP" : "DOWN"}${st.upstream.lastError && !st.upstream.up ? ` (${st.upstream.consecutiveFailures} failures; last: ${st.upstream.lastError})` : ""} since ${st.upstream.since}`);
  out.push(`uptime        ${formatDuration(Math.max(1, st.uptimeSeconds) * 1000)}; ${st.connections} connections, ${st.sessions} sessions`);
  out.push(`calls         ${st.calls.allowed} allowed, ${st.calls.denied} denied (${st.calls.rateLimited} by rate limits)`);
  if (st.coolingDown.length) out.push(`cool-down     ${st.coolingDown.map((c) => `${c.identity} (${Math.ceil(c.leftMs / 1000)} s)`).join(", ")}`);
  const table = (title: string, rows: { name: string; allowed: number; denied: number }[]) => {
    out.push("", `${title.padEnd(48)} ${"allowed".padStart(8)} ${"denied".padStart(8)}`);
    if (rows.length === 0) out.push("  (none)");
    for (const r of rows) out.push(`  ${r.name.padEnd(46)} ${String(r.allowed).padStart(8)} ${String(r.denied).padStart(8)}`);
  };
  table("top identities", st.topIdentities);
  table("top tools", st.topTools);
  if (st.handshakeFailures.length) out.push("", "handshake failures", ...st.handshakeFailures.map((h) => `  ${h.reason.padEnd(46)} ${h.count}`));
  if (st.alerts.length) out.push("", "alerts", ...st.alerts.map((a) => `  ${a.kind.padEnd(46)} ${a.count}`));
  out.push("", "certificates");
  for (const c of st.certificates) out.push(`  ${c.role.padEnd(13)} ${c.notAfter}  ${left(c.secondsLeft).padEnd(12)} ${c.subject}`);
  return out.join("\n");
}

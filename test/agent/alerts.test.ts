/** Anomaly detection on an injected clock: each alert kind fires on its pattern, once per window, and not on normal use. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { AlertEngine, type Alert } from "../../agent/alerts.ts";
import { DEFAULT_ALERTS, type AlertsConfig } from "../../agent/config.ts";
import { silentLogger } from "../../lib/log.ts";
import type { DecisionEvent } from "../../agent/gatekeeper.ts";

function engine(cfg: Partial<AlertsConfig>, clock: { now: number }): { e: AlertEngine; fired: Alert[] } {
  const fired: Alert[] = [];
  const e = new AlertEngine({ ...DEFAULT_ALERTS, windowMs: 60_000, ...cfg }, { logger: silentLogger(), now: () => clock.now, onAlert: (a) => fired.push(a) });
  return { e, fired };
}
const callEv = (identity: string, tool: string, access = "read"): DecisionEvent => ({ identity, method: "tools/call", tool, access, decision: "allow", seconds: 0 });

test("spike against the EWMA baseline: steady traffic never fires, a jump does (once per window)", () => {
  const clock = { now: 0 };
  const { e, fired } = engine({ spikeFactor: 4, spikeMinCalls: 10, ewmaAlpha: 0.5 }, clock);
  // Ten windows of 8 calls each: steady, well above spikeMinCalls over time but never 4x the baseline.
  for (let w = 0; w < 10; w++) {
    clock.now = w * 60_000;
    for (let i = 0; i < 8; i++) e.decision(callEv("spiffe://t/a", "echo"));
  }
  assert.equal(fired.length, 0);
  clock.now = 10 * 60_000;
  for (let i = 0; i < 40; i++) e.decision(callEv("spiffe://t/a", "echo"));
  assert.equal(fired.length as number, 1);
  assert.equal(fired[0].alert, "call_spike");
  assert.equal(fired[0].identity, "spiffe://t/a");
  assert.equal(fired[0].tool, "echo");
  assert.equal(fired[0].baseline, 8);
  assert.equal(fired[0].count, 33, "fires at the first call above 4 × 8");
  assert.equal(fired[0].window, "1m");
});

test("repeated failures, write bursts, first use after learning, volume and handshake failures", () => {
  const clock = { now: 0 };
  const { e, fired } = engine({ failures: 3, writeBurst: 3, firstUseAfter: 5, maxCalls: 8, handshakeFailures: 2, spikeMinCalls: 1000 }, clock);
  for (let i = 0; i < 5; i++) e.decision({ identity: "x", method: "tools/call", tool: "secret", decision: "deny", failure: "authorization", seconds: 0 });
  for (let i = 0; i < 5; i++) e.decision(callEv("w", "delete-file", "write"));
  for (let i = 0; i < 5; i++) e.decision(callEv("u", "echo"));
  e.decision(callEv("u", "add"));
  for (let i = 0; i < 4; i++) e.decision(callEv("v", "echo"));
  e.handshakeFailure("10.0.0.9:1234", "no_client_certificate");
  e.handshakeFailure("10.0.0.9:1235", "no_client_certificate");
  e.decision({ identity: "r", method: "tools/call", tool: "echo", decision: "deny", failure: "rate", limitScope: "tool", seconds: 0 });
  const kinds = fired.map((a) => `${a.alert}:${a.identity ?? a.remote}`);
  assert.deepEqual(kinds.sort(), ["first_tool_use:u", "handshake_failures:10.0.0.9", "repeated_failures:x", "unanticipated_volume:r", "write_burst:w"].sort());
  const first = fired.find((a) => a.alert === "first_tool_use")!;
  assert.equal(first.tool, "add");
  assert.deepEqual(first.detail?.knownTools, ["echo"]);
  // maxCalls: "v" made 4 (fine); 9 calls fire.
  for (let i = 0; i < 5; i++) e.decision(callEv("v", "echo"));
  assert.equal(fired.filter((a) => a.alert === "unanticipated_volume" && a.identity === "v").length, 1);
  // Next window: counts start over, the same subjects can fire again.
  clock.now = 60_000;
  for (let i = 0; i < 3; i++) e.decision({ identity: "x", method: "tools/call", tool: "secret", decision: "deny", failure: "validation", seconds: 0 });
  assert.equal(fired.filter((a) => a.alert === "repeated_failures").length, 2);
});

/** The limiter's bookkeeping on an injected clock: buckets, refill, scopes, concurrency and cool-down. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Limiter } from "../../agent/limits.ts";
import { DEFAULT_LIMITS, parseRate, type LimitsConfig, type RateSpec } from "../../agent/config.ts";

const rate = (t: string) => parseRate(t) as RateSpec;
function limits(over: Partial<Omit<LimitsConfig, "rate">> & { rate?: Partial<LimitsConfig["rate"]> } = {}): LimitsConfig {
  return { ...DEFAULT_LIMITS, coolDown: null, concurrency: 0, ...over, rate: { perIdentity: null, perTool: null, perClass: {}, ...over.rate } };
}

test("a bucket allows exactly N, refuses with a retry hint, and refills one token per period/N", () => {
  let now = 1_000_000;
  const l = new Limiter(limits({ rate: { perIdentity: rate("3/s") } }), { now: () => now });
  const call = () => l.check({ identity: "a", tool: "echo", access: "read" });
  for (let i = 0; i < 3; i++) assert.equal(call().ok, true);
  const r = call();
  assert.equal(r.ok, false);
  if (!r.ok) {
    assert.equal(r.scope, "identity");
    assert.equal(r.retryAfterMs, 334);
    assert.match(r.reason, /rate limit per identity \(3\/s\) exceeded/);
  }
  now += 333;
  assert.equal(call().ok, false, "not yet a whole token");
  now += 1;
  assert.equal(call().ok, true, "one token after 1/3 s");
  assert.equal(call().ok, false);
  assert.equal(l.check({ identity: "b", tool: "echo", access: "read" }).ok, true, "other identities have their own bucket");
});

test("per tool, per rule and per class buckets are separate; a refused call costs no token", () => {
  const now = 0;
  const l = new Limiter(limits({ rate: { perTool: rate("2/m"), perClass: { write: rate("1/m") } } }), { now: () => now });
  assert.equal(l.check({ identity: "a", tool: "echo", access: "read" }).ok, true);
  assert.equal(l.check({ identity: "a", tool: "echo", access: "read" }).ok, true);
  const r = l.check({ identity: "a", tool: "echo", access: "read" });
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.scope, "tool");
  assert.equal(l.check({ identity: "a", tool: "add", access: "read" }).ok, true);
  assert.equal(l.check({ identity: "a", tool: "del", access: "write" }).ok, true);
  const w = l.check({ identity: "a", tool: "del2", access: "write" });
  assert.equal(!w.ok && w.scope, "class");
  // The rule's own rate replaces perTool for the calls it allows.
  for (let i = 0; i < 5; i++) assert.equal(l.check({ identity: "a", tool: "echo", access: "read", rule: { id: "r", rate: rate("5/m") } }).ok, true);
  const rr = l.check({ identity: "a", tool: "echo", access: "read", rule: { id: "r", rate: rate("5/m") } });
  assert.equal(!rr.ok && rr.scope, "rule");
});

test("concurrency: N in flight, the next refused until one is released", () => {
  const l = new Limiter(limits({ concurrency: 2 }));
  const a = l.check({ identity: "a", tool: "t", access: "read" });
  const b = l.check({ identity: "a", tool: "t", access: "read" });
  assert.ok(a.ok && b.ok);
  const c = l.check({ identity: "a", tool: "t", access: "read" });
  assert.equal(!c.ok && c.scope, "concurrency");
  if (a.ok) {
    a.release();
    a.release(); // idempotent
  }
  assert.equal(l.inFlight("a"), 1);
  assert.equal(l.check({ identity: "a", tool: "t", access: "read" }).ok, true);
});

test("cool-down: `after` violations within the window refuse everything for `for`, then it ends", () => {
  let now = 0;
  const l = new Limiter(limits({ rate: { perIdentity: rate("1/h") }, coolDown: { after: 3, withinMs: 60_000, forMs: 300_000 } }), { now: () => now });
  assert.equal(l.check({ identity: "a", tool: "t", access: "read" }).ok, true);
  const v = [1, 2, 3].map(() => l.check({ identity: "a", tool: "t", access: "read" }));
  assert.deepEqual(v.map((x) => !x.ok && x.coolDown), [false, false, true]);
  assert.equal(l.coolDownLeft("a"), 300_000);
  now += 299_999;
  assert.equal(l.coolDownLeft("a"), 1);
  now += 1;
  assert.equal(l.coolDownLeft("a"), 0);
  assert.deepEqual(l.coolingDown(), []);
});

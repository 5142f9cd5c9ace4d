/** The differential conformance test's verdict logic, on made-up outcomes (runs without Node 24). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { unexplainedDifferences, type Baseline, type Outcome } from "./compare.ts";

const ok: Outcome = { pass: true, failed: [] };
const bad = (...failed: string[]): Outcome => ({ pass: false, failed });
const runs = (o: Record<string, Outcome>) => new Map(Object.entries(o));

test("differences: same outcomes pass; a new difference, a stale or wrong baseline entry, a missing reason all fail", () => {
  const none: Baseline = { scenarios: {} };
  assert.deepEqual(unexplainedDifferences(runs({ ping: ok, x: bad("c") }), runs({ ping: ok, x: bad("c") }), none), [], "failing both ways is not a difference");
  assert.deepEqual(unexplainedDifferences(runs({ ping: ok }), runs({ ping: bad("ping") }), none), ["ping: pass directly, fail through the mesh (failed checks: ping)"]);
  assert.deepEqual(unexplainedDifferences(runs({ ping: ok }), runs({}), none), ["ping: pass directly, missing through the mesh (failed checks: -)"]);
  const listed: Baseline = { scenarios: { ping: { direct: "pass", mesh: "fail", reason: "known" } } };
  assert.deepEqual(unexplainedDifferences(runs({ ping: ok }), runs({ ping: bad("ping") }), listed), []);
  assert.deepEqual(unexplainedDifferences(runs({ ping: ok }), runs({ ping: ok }), listed), ["ping: listed in baseline.json but now pass both ways: remove the entry"]);
  assert.deepEqual(unexplainedDifferences(runs({ ping: bad("p") }), runs({ ping: ok }), listed), ["ping: baseline says pass/fail, saw fail/pass"]);
  assert.deepEqual(unexplainedDifferences(runs({}), runs({}), listed), ["ping: in baseline.json but the suite no longer runs it"]);
  assert.deepEqual(unexplainedDifferences(runs({ ping: ok }), runs({ ping: bad("ping") }), { scenarios: { ping: { direct: "pass", mesh: "fail", reason: " " } } }), ["ping: baseline entry has no reason"]);
});

test("baseline.json is well formed: every entry has direct, mesh and a reason", () => {
  const b = JSON.parse(readFileSync(join(import.meta.dirname, "baseline.json"), "utf8")) as Baseline;
  assert.equal(typeof b.scenarios, "object");
  for (const [s, e] of Object.entries(b.scenarios)) {
    assert.ok(["pass", "fail", "missing"].includes(e.direct) && ["pass", "fail", "missing"].includes(e.mesh), s);
    assert.ok(e.reason.trim().length > 10, `${s}: reason`);
  }
});

/** Per-scenario outcome of one conformance run: passed, and the ids of the checks that failed. */
export type Outcome = { pass: boolean; failed: string[] };
export type Baseline = { scenarios: Record<string, { direct: string; mesh: string; reason: string }> };

/**
 * The differences between the direct run and the run through the mesh that the baseline does not explain, plus the
 * baseline entries that no longer match what was seen (so the list of known differences stays true).
 */
export function unexplainedDifferences(direct: Map<string, Outcome>, viaMesh: Map<string, Outcome>, baseline: Baseline): string[] {
  const problems: string[] = [];
  const outcome = (o?: Outcome) => (o ? (o.pass ? "pass" : "fail") : "missing");
  for (const s of new Set([...direct.keys(), ...viaMesh.keys()])) {
    const d = outcome(direct.get(s));
    const m = outcome(viaMesh.get(s));
    const known = baseline.scenarios[s];
    if (d === m && known) problems.push(`${s}: listed in baseline.json but now ${d} both ways: remove the entry`);
    else if (d !== m && !known) problems.push(`${s}: ${d} directly, ${m} through the mesh (failed checks: ${viaMesh.get(s)?.failed.join(", ") || direct.get(s)?.failed.join(", ") || "-"})`);
    else if (d !== m && known && (known.direct !== d || known.mesh !== m)) problems.push(`${s}: baseline says ${known.direct}/${known.mesh}, saw ${d}/${m}`);
    if (known && !known.reason?.trim()) problems.push(`${s}: baseline entry has no reason`);
  }
  for (const s of Object.keys(baseline.scenarios)) if (!direct.has(s) && !viaMesh.has(s)) problems.push(`${s}: in baseline.json but the suite no longer runs it`);
  return problems;
}

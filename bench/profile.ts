/**
 * Reads the .cpuprofile files Node writes under --cpu-prof and prints where the time went: self time by package or
 * area, and the top functions by self time (idle excluded).
 *
 *   node --import tsx bench/profile.ts DIR [N]
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fmt, table } from "./lib.ts";

interface CpuProfile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
  samples: number[];
  timeDeltas: number[];
}

export function summarizeProfiles(dir: string, n = 30): string {
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
  if (files.length === 0) return "(no CPU profile found)";
  const self = new Map<string, number>();
  const byPackage = new Map<string, number>();
  let totalUs = 0;
  for (const f of files) {
    const prof = JSON.parse(readFileSync(join(dir, f), "utf8")) as CpuProfile;
    const nodes = new Map(prof.nodes.map((x) => [x.id, x]));
    prof.samples.forEach((id, i) => {
      const dt = prof.timeDeltas[i] ?? 0;
      const cf = nodes.get(id)?.callFrame;
      if (!cf || cf.functionName === "(idle)") return;
      totalUs += dt;
      const url = cf.url.replace(/^file:\/\//, "");
      const short = url.includes("/node_modules/") ? url.slice(url.lastIndexOf("/node_modules/") + 14) : url.replace(/^.*?\/(agent|lib|identity|ca|cli|bench)\//, "$1/");
      const key = `${cf.functionName || "(anonymous)"}  ${short ? `${short}:${cf.lineNumber + 1}` : ""}`;
      self.set(key, (self.get(key) ?? 0) + dt);
      const pkg = !url ? cf.functionName || "(native)" : url.startsWith("node:") ? "node: internals" : url.includes("/node_modules/") ? (short.startsWith("@") ? short.split("/").slice(0, 2).join("/") : short.split("/")[0]) : `mcpmesh ${short.split("/")[0]}/`;
      byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + dt);
    });
  }
  const top = (m: Map<string, number>, k: number) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, k).map(([key, us]) => [key, fmt(us / 1000, 0), fmt((us / totalUs) * 100, 1)]);
  return [
    `${fmt(totalUs / 1e6, 2)} s busy (not idle) in ${files.length} profile(s); self time`,
    table(["by package / area", "self ms", "%"], top(byPackage, 15)),
    "",
    table(["top functions by self time", "self ms", "%"], top(self, n)),
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(summarizeProfiles(process.argv[2] ?? ".", Number(process.argv[3] ?? 30)));
}

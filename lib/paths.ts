import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

let root: string | undefined;

/**
 * The package's own folder. Modules run either from the sources (`<root>/cli/x.ts` under tsx) or compiled
 * (`<root>/dist/cli/x.js`), so a path relative to `import.meta.dirname` would differ between the two; the nearest
 * folder up whose package.json names this package is the same in both.
 */
export function packageRoot(): string {
  if (root) return root;
  let dir = import.meta.dirname;
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, "utf8")) as { name?: unknown }).name === "mcpmesh") return (root = dir);
      } catch {
        // an unreadable package.json is not ours: keep walking up
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error(`package.json of mcpmesh not found above ${import.meta.dirname}`);
    dir = up;
  }
}

/** The `mcpmesh` launcher (bin/mcpmesh.js), as desktop clients and printed commands must start it. */
export function binPath(): string {
  return join(packageRoot(), "bin", "mcpmesh.js");
}

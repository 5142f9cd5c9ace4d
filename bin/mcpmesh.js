#!/usr/bin/env node
// Runs the compiled CLI (dist/, written by `npm run build`, which `npm install` and `npm ci` run through `prepare`):
// it starts in a fraction of the time and memory that compiling TypeScript on load takes. When dist/ is missing or
// older than any source file (an edited checkout), the sources run through tsx instead, so stale code never runs.
// MCPMESH_FROM_SOURCE=1 forces the sources.
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..");
const SOURCE_DIRS = ["agent", "ca", "cli", "identity", "lib", "examples"];
const STAMP = join(ROOT, "dist", "build-stamp.json");

function mtimeMs(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
}

/** Whether any .ts source is newer than the last complete build (a few hundred stats: about a millisecond). */
function sourcesNewerThan(stamp) {
  const stack = SOURCE_DIRS.map((d) => join(ROOT, d));
  while (stack.length > 0) {
    const dir = stack.pop();
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== "node_modules") stack.push(p);
      } else if (e.name.endsWith(".ts") && mtimeMs(p) > stamp) {
        return true;
      }
    }
  }
  return false;
}

const stamp = mtimeMs(STAMP);
const compiled = process.env.MCPMESH_FROM_SOURCE !== "1" && stamp >= 0 && !sourcesNewerThan(stamp);
let main;
if (compiled) {
  ({ main } = await import("../dist/cli/main.js"));
} else {
  const { register } = await import("tsx/esm/api");
  register();
  ({ main } = await import("../cli/main.ts"));
}
const code = await main(process.argv.slice(2));
// Servers and daemons keep the event loop alive; one-shot commands simply end.
if (code !== 0) process.exit(code);

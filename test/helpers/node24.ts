/**
 * Tools that need Node >= 22 (the conformance suite, the MCP Inspector CLI) run on the Node 24 that `.ci/run`
 * provides (MCPMESH_NODE24: a binary, or a folder holding bin/node) and are installed by `.ci/run` into a cache
 * folder (MCPMESH_NODE24_TOOLS, default ~/.cache/mcpmesh-ci/node24-tools), never into the project's node_modules.
 * Without them the tests skip and say why.
 */
import { existsSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export function node24Binary(): string | null {
  const v = process.env.MCPMESH_NODE24;
  if (!v) return null;
  if (existsSync(v) && statSync(v).isFile()) return v;
  for (const p of [join(v, "bin", "node"), join(v, "node")]) if (existsSync(p)) return p;
  return null;
}

export function node24ToolsDir(): string {
  return process.env.MCPMESH_NODE24_TOOLS ?? join(homedir(), ".cache", "mcpmesh-ci", "node24-tools");
}

/** The path of a tool's entry point, or a skip message saying what is missing and how to get it. */
export function node24Tool(pkg: string, entry: string): { node: string; script: string } | string {
  const node = node24Binary();
  if (!node) return `needs Node >= 22: set MCPMESH_NODE24 to a Node 24 binary or folder (.ci/run exports it)`;
  const script = join(node24ToolsDir(), "node_modules", pkg, entry);
  if (!existsSync(script)) return `${pkg} is not installed in ${node24ToolsDir()} (.ci/run installs it; or: npm install --prefix ${node24ToolsDir()} ${pkg})`;
  return { node, script };
}

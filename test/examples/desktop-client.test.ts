/**
 * examples/desktop-client/run.ts end to end: the Claude Desktop, Cursor and VS Code snippets started as those clients
 * start them (stdio `mcpmesh connect`), `--print-config` against them, and the SDK app with createMeshFetch.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runExample, passed } from "./run-example.ts";

test("examples/desktop-client runs end to end", async (t) => {
  const out = await runExample("desktop-client", t);
  for (const check of ["claude_desktop_config.json: through mcpmesh connect", "cursor-mcp.json: through mcpmesh connect", "vscode-mcp.json: through mcpmesh connect", "--print-config claude", "--print-config vscode", "app.ts: tools:", "refuses an agent that is not the expected"]) {
    assert.ok(passed(out, check), check);
  }
});

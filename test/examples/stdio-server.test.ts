/**
 * examples/stdio-server/run.ts end to end: @modelcontextprotocol/server-filesystem run by the agent as a stdio child,
 * exposed only over mTLS (the child holds no listening socket).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runExample, passed } from "./run-example.ts";

test("examples/stdio-server runs end to end", async (t) => {
  const out = await runExample("stdio-server", t);
  for (const check of ["reads a shared file through the agent", "write_file is refused", "stays out of reach", "writes a file", "holds no listening socket"]) {
    assert.ok(passed(out, check), check);
  }
});

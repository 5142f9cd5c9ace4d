/** examples/notes-server/run.ts end to end: the real CLI, the notes server behind an agent, reader and writer rules. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runExample, passed } from "./run-example.ts";

test("examples/notes-server runs end to end", async (t) => {
  const out = await runExample("notes-server", t);
  for (const check of ["sees only the read tools: list-notes, read-note", "add-note is refused", "adds a note", "rejected by the operator's schema", "nobody-deletes wins", "the audit chain verifies"]) {
    assert.ok(passed(out, check), check);
  }
});

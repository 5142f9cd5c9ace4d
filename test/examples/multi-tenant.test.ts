/** examples/multi-tenant/run.ts end to end: one rule with a {tenant} capture confines each tenant to its own data. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runExample, passed } from "./run-example.ts";

test("examples/multi-tenant runs end to end", async (t) => {
  const out = await runExample("multi-tenant", t);
  for (const check of ["acme lists its own invoices", "acme listing globex's invoices is refused", "acme adding an invoice to globex is refused", "nothing acme tried to add", "globex listing acme's invoices is refused"]) {
    assert.ok(passed(out, check), check);
  }
});

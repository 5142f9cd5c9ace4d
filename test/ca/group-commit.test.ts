/**
 * CaStore.groupCommit: writes queued in one turn of the event loop share one IMMEDIATE transaction, each in its own
 * savepoint; a throwing item undoes only its own writes; every promise settles only after the shared COMMIT.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { CaStore } from "../../ca/store.ts";
import { Cleanups, tmpdir } from "../helpers/cli.ts";

const cleanup = new Cleanups();
after(() => cleanup.run());

test("one shared transaction, savepoint per item, answers after the commit", async () => {
  const store = CaStore.open(join(tmpdir(cleanup.add), "ca.db"), { create: true });
  cleanup.add(() => store.close());
  let firstSettled = false;
  const seenByThird: boolean[] = [];
  const first = store.groupCommit(() => {
    store.addEvent("gc.first", {});
    return "one";
  });
  void first.then(() => (firstSettled = true));
  const second = store.groupCommit(() => {
    store.addEvent("gc.second", {});
    throw new Error("second fails after writing");
  });
  const third = store.groupCommit(() => {
    // Same transaction: the first item's write is visible, and its caller has not been answered yet.
    seenByThird.push(store.events().some((e) => e.type === "gc.first"), firstSettled);
    store.addEvent("gc.third", {});
    return 3;
  });
  assert.equal(await first, "one");
  await assert.rejects(second, { message: "second fails after writing" });
  assert.equal(await third, 3);
  assert.deepEqual(seenByThird, [true, false]);
  assert.deepEqual(store.events().map((e) => e.type).filter((t) => t.startsWith("gc.")), ["gc.first", "gc.third"], "the failed item's write was rolled back alone");

  // A later turn starts a new group.
  assert.equal(await store.groupCommit(() => 4), 4);
});

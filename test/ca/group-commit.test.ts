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

test("an announced write holds the group open across turns until every intent commits or cancels", async () => {
  // A wait bound far beyond the test's length: only commit/cancel can release the group here.
  const store = CaStore.open(join(tmpdir(cleanup.add), "ca.db"), { create: true, groupWaitMs: 600_000 });
  cleanup.add(() => store.close());
  const a = store.intent();
  const b = store.intent();
  const c = store.intent();
  let aSettled = false;
  const pa = a.commit(() => {
    store.addEvent("in.a", {});
    return "a";
  });
  void pa.then(() => (aSettled = true));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  assert.equal(aSettled, false, "a waits for b and c");
  const seenByB: boolean[] = [];
  const pb = b.commit(() => {
    // Queued turns later, yet the same transaction as a: its write is visible and a's caller is not answered yet.
    seenByB.push(store.events().some((e) => e.type === "in.a"), aSettled);
    store.addEvent("in.b", {});
    return "b";
  });
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  assert.equal(aSettled, false, "c is still outstanding");
  c.cancel(); // c's issuance failed: the group commits now
  c.cancel(); // settling twice changes nothing
  assert.deepEqual(await Promise.all([pa, pb]), ["a", "b"]);
  assert.deepEqual(seenByB, [true, false]);
  // With no intent outstanding, a commit goes out in its own turn again.
  assert.equal(await store.groupCommit(() => 1), 1);
});

test("an intent that never settles delays a commit only by the wait bound (no hang)", async () => {
  const store = CaStore.open(join(tmpdir(cleanup.add), "ca.db"), { create: true, groupWaitMs: 20 });
  cleanup.add(() => store.close());
  store.intent(); // lost: neither committed nor cancelled
  assert.equal(await store.groupCommit(() => "committed"), "committed");
  assert.equal(await store.intent().commit(() => "again"), "again");
});

test("closing the store with commits still queued: each fails as 'shutting down' (503), nothing is written, no stray error", async () => {
  const file = join(tmpdir(cleanup.add), "ca.db");
  const store = CaStore.open(file, { create: true, groupWaitMs: 600_000 });
  const waiting = store.intent(); // holds the group open: the commit below stays queued
  const queued = store.groupCommit(() => store.addEvent("closed.queued", {}));
  store.close();
  await assert.rejects(queued, { code: "MCPMESH_CA_UNAVAILABLE", message: /shutting down/ });
  await assert.rejects(waiting.commit(() => store.addEvent("closed.late", {})), { code: "MCPMESH_CA_UNAVAILABLE" });
  await assert.rejects(store.groupCommit(() => 1), { code: "MCPMESH_CA_UNAVAILABLE" });
  // Nothing was written: the database holds no trace of either.
  const again = CaStore.open(file);
  cleanup.add(() => again.close());
  assert.deepEqual(again.events().filter((e) => e.type.startsWith("closed.")), []);
});

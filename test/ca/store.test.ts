/**
 * The CA's SQLite store, as the real processes use it: WAL mode, tokens kept only as hashes, nothing issued lost when
 * `ca serve` is killed, and a corrupted database file refused with a clear error by every command, without being
 * modified further.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { retainSqlite } from "../../ca/store.ts";
import { decodeToken, hashTokenSecret } from "../../ca/token.ts";
import { Cleanups, inParallel } from "../helpers/cli.ts";
import { cliList, fileState, startTestCa, type TestCa } from "../helpers/ca.ts";

describe("CA store", () => {
  const cleanup = new Cleanups();
  let ca: TestCa;
  after(() => cleanup.run());
  before(async () => {
    ca = await startTestCa(cleanup.add, { init: "library" });
  });

  test("WAL journal; tokens are stored as hashes only, never the secret", () => {
    const token = ca.token("store/alice");
    const { secret } = decodeToken(token);
    const db = retainSqlite(new Database(join(ca.dir, "ca.db"), { readonly: true, fileMustExist: true }));
    try {
      assert.equal(retainSqlite(db.prepare("PRAGMA journal_mode")).pluck().get(), "wal");
      const rows = retainSqlite(db.prepare("SELECT * FROM tokens")).all() as Record<string, unknown>[];
      assert.ok(rows.some((r) => r.hash === hashTokenSecret(secret)));
      for (const r of rows) assert.ok(!Object.values(r).some((v) => typeof v === "string" && v.includes(secret)));
    } finally {
      db.close();
    }
    for (const f of ["ca.db", "ca.db-wal"]) {
      const p = join(ca.dir, f);
      if (existsSync(p)) assert.equal(readFileSync(p).includes(secret), false, `${f} does not contain the token secret`);
    }
  });

  test("nothing issued is lost when `ca serve` is killed (SIGKILL) right after answering", async () => {
    const issued = [await ca.enroll("store/bob"), await ca.enroll("store/carol"), await ca.enroll("store/dave")];
    ca.server!.child.kill("SIGKILL");
    const { signal } = await ca.server!.exited;
    assert.equal(signal, "SIGKILL");
    const list = await cliList(ca);
    for (const i of issued) {
      const row = list.find((c) => c.serial === i.serial);
      assert.ok(row, `${i.serial} survived the crash`);
      assert.equal(row.identity, i.identity);
      assert.equal(row.status, "valid");
      assert.ok(ca.tokenRow(i.token)?.usedAt, "its token is recorded as used");
    }
    const db = retainSqlite(new Database(join(ca.dir, "ca.db"), { readonly: true, fileMustExist: true }));
    try {
      const events = retainSqlite(db.prepare("SELECT type, serial FROM events WHERE type = 'cert.enrolled'")).all() as { serial: string }[];
      for (const i of issued) assert.ok(events.some((e) => e.serial === i.serial), "audit event recorded");
    } finally {
      db.close();
    }
  });

  // Every command on the first; `ca list` alone on the second (each CLI start costs a second or more).
  const corruptions: { name: string; make: (original: Buffer) => Buffer; detail: RegExp; commands: (dir: string) => string[][] }[] = [
    {
      name: "garbage over the whole file", make: (o) => Buffer.alloc(o.length, "this is not a database\n"), detail: /file is not a database/,
      commands: (dir) => [
        ["ca", "list", "--dir", dir, "--json"],
        ["ca", "token", "--dir", dir, "--identity", "store/erin"],
        ["ca", "serve", "--dir", dir],
      ],
    },
    {
      name: "valid header, garbage pages", make: (o) => Buffer.concat([o.subarray(0, 100), Buffer.alloc(o.length - 100, 0xa5)]), detail: /malformed|not a database|corrupt/,
      commands: (dir) => [["ca", "list", "--dir", dir, "--json"]],
    },
  ];
  for (const c of corruptions) {
    test(`a corrupted database (${c.name}) is refused by every command and not modified further`, async () => {
      // The crash test above left the database closed; remove any leftover WAL so only ca.db speaks.
      const dbPath = join(ca.dir, "ca.db");
      for (const f of ["ca.db-wal", "ca.db-shm"]) rmSync(join(ca.dir, f), { force: true });
      writeFileSync(dbPath, c.make(readFileSync(dbPath)));
      const before = fileState(ca.dir);
      const commands = c.commands(ca.dir);
      const results = await inParallel(commands, 2, (args) => ca.cli(args));
      results.forEach((r, i) => {
        const what = commands[i].slice(0, 2).join(" ");
        assert.equal(r.code, 1, `${what}: exit ${r.code}\n${r.stderr}`);
        const msg = r.stderr.trim();
        assert.ok(msg.startsWith(`mcpmesh: the CA database ${dbPath} cannot be opened (corrupt or not a database): `), `${what}: ${msg}`);
        assert.match(msg, c.detail, what);
        assert.equal(msg.split("\n").length, 1, `${what}: one clear line, no stack trace`);
        assert.equal(r.stdout, "", what);
      });
      assert.deepEqual(fileState(ca.dir), before, "ca.db (and every other file) unchanged, no WAL files created");
    });
  }
});

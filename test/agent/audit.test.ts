/**
 * The hash-chained audit log: a real AuditLog writing real files (with rotation), checked by `verifyAuditFiles` and by
 * the `mcpmesh audit verify` CLI; then edited, deleted and reordered records are each caught at the right line.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog, GENESIS, verifyAuditFiles, type AuditRecord } from "../../agent/audit.ts";
import { runCli } from "../helpers/cli.ts";

const dir = mkdtempSync(join(tmpdir(), "mcpmesh-audit-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const rec = (i: number): AuditRecord => ({ identity: `spiffe://example.org/u${i % 3}`, session: "s", method: "tools/call", tool: "echo", decision: i % 4 ? "allow" : "deny", rule: "r", reason: `reason ${i} "quoted" ✓`, decisionUs: i });

async function writeLog(file: string, n: number, opts: { maxBytes?: number; keep?: number } = {}): Promise<void> {
  const log = new AuditLog({ file, ...opts });
  for (let i = 1; i <= n; i++) log.record(rec(i));
  await log.close();
}

const lines = (f: string) => readFileSync(f, "utf8").split("\n").filter(Boolean);

test("a written log verifies; the chain starts at GENESIS and continues across a restart", async () => {
  const f = join(dir, "plain.log");
  await writeLog(f, 20);
  await writeLog(f, 5); // a restart: the chain continues from the file's last record
  const r = verifyAuditFiles([f]);
  assert.equal(r.ok, true, JSON.stringify(r.problem));
  assert.equal(r.records, 25);
  assert.equal(r.anchoredAt, GENESIS);
  assert.equal(r.lastSeq, 25);
  const first = JSON.parse(lines(f)[0]);
  assert.equal(first.log, "audit");
  assert.equal(first.seq, 1);
  assert.equal(first.prev, GENESIS);
  assert.match(first.hash, /^[0-9a-f]{64}$/);
  const cli = await runCli(["audit", "verify", f]);
  assert.equal(cli.code, 0, cli.stderr);
  assert.match(cli.stdout, /^OK: 25 records in 1 file/);
});

test("rotation by size keeps the chain: files verify together, oldest first; each alone is anchored", async () => {
  const f = join(dir, "rot.log");
  await writeLog(f, 200, { maxBytes: 4096, keep: 50 });
  const rotated = readdirSync(dir).filter((n) => n.startsWith("rot.log.")).map((n) => Number(n.slice("rot.log.".length))).sort((a, b) => b - a);
  assert.ok(rotated.length >= 3, `rotated into ${rotated.length} files`);
  const files = [...rotated.map((i) => `${f}.${i}`), f];
  for (const x of files) assert.ok(readFileSync(x).length <= 4096, `${x} stays within maxBytes`);
  const r = verifyAuditFiles(files);
  assert.equal(r.ok, true, JSON.stringify(r.problem));
  assert.equal(r.records, 200);
  // The newest file alone verifies too, anchored at the last record of the file before it.
  const alone = verifyAuditFiles([f]);
  assert.equal(alone.ok, true);
  assert.equal(alone.anchoredAt, JSON.parse(lines(`${f}.1`).at(-1)!).hash);
  // Files out of order break at the first record of the misplaced file.
  const swapped = verifyAuditFiles([files[1], files[0], ...files.slice(2)]);
  assert.equal(swapped.ok, false);
  assert.equal(swapped.problem!.file, files[0]);
  assert.equal(swapped.problem!.line, 1);
  // `keep` bounds the number of rotated files.
  await writeLog(join(dir, "keep.log"), 200, { maxBytes: 2048, keep: 2 });
  assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith("keep.log")).sort(), ["keep.log", "keep.log.1", "keep.log.2"]);
});

test("an edited, a deleted and a reordered record are each reported at their line", async () => {
  const f = join(dir, "tamper.log");
  await writeLog(f, 10);
  const orig = lines(f);
  const put = (name: string, ls: string[]) => {
    const p = join(dir, name);
    writeFileSync(p, ls.join("\n") + "\n");
    return p;
  };

  const edited = [...orig];
  edited[4] = edited[4].replace('"decision":"deny"', '"decision":"allow"').replace('"decision":"allow","rule"', '"decision":"allow","rule"');
  edited[4] = edited[4].replace(/"reason":"reason 5/, '"reason":"reason 6');
  let r = verifyAuditFiles([put("edited.log", edited)]);
  assert.equal(r.ok, false);
  assert.equal(r.problem!.line, 5);
  assert.match(r.problem!.reason, /seq 5 was modified/);

  const deleted = orig.filter((_, i) => i !== 6);
  r = verifyAuditFiles([put("deleted.log", deleted)]);
  assert.equal(r.problem!.line, 7);
  assert.match(r.problem!.reason, /record seq 8 1 record\(s\) missing before it \(seq 7\)/);

  const reordered = [...orig];
  [reordered[2], reordered[3]] = [reordered[3], reordered[2]];
  r = verifyAuditFiles([put("reordered.log", reordered)]);
  assert.equal(r.problem!.line, 3);
  assert.match(r.problem!.reason, /record seq 4 is out of order: seq 3 should come here and appears later, at line 4/);

  const lastDropped = put("truncated.log", orig.slice(0, -1));
  assert.equal(verifyAuditFiles([lastDropped]).ok, true, "a tail cut cleanly is not detectable from the file alone (compare lastSeq with the metrics)");

  // Editing the record AND recomputing its own hash still breaks the link to the next one.
  const rehashed = [...orig];
  const { chainHash } = await import("../../agent/audit.ts");
  const body = rehashed[1].replace(/,"hash":"[0-9a-f]{64}"\}$/, "}").replace('"reason 2', '"reason X');
  rehashed[1] = `${body.slice(0, -1)},"hash":"${chainHash(body)}"}`;
  r = verifyAuditFiles([put("rehashed.log", rehashed)]);
  assert.equal(r.problem!.line, 3);
  assert.match(r.problem!.reason, /does not link/);

  const cli = await runCli(["audit", "verify", join(dir, "deleted.log")]);
  assert.equal(cli.code, 1);
  assert.match(cli.stderr, /BROKEN: .*deleted\.log:7: record seq 8/);
});

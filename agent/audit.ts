import { hash } from "node:crypto";
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, write } from "node:fs";
import { dirname } from "node:path";

/** One line per decision. Argument values never appear: a hash of them does, enough to correlate, not to read. */
export interface AuditRecord {
  identity: string;
  session: string | null;
  method: string;
  tool?: string;
  target?: string;
  decision: "allow" | "deny";
  rule: string | null;
  reason: string;
  /** Time the agent spent deciding, in microseconds. */
  decisionUs: number;
  argsHash?: string;
  transport?: string;
}

export interface AuditSink {
  record(r: AuditRecord): void;
  flush(): Promise<void>;
}

export function hashArguments(args: unknown): string | undefined {
  if (args === undefined) return undefined;
  // crypto.hash (one shot) rather than createHash: about half the cost per call, and this runs on every tools/call.
  return hash("sha256", JSON.stringify(args) ?? "", "base64url").slice(0, 22);
}

/**
 * The hash chain, precisely. Every line is one JSON object, written by the agent as
 *
 *     {"level":30,"time":"<ISO>","log":"audit","seq":<n>,...record fields...,"prev":"<64 hex>","hash":"<64 hex>"}\n
 *
 * `hash` is the SHA-256 (lower-case hex) of the line's own bytes (UTF-8) from its first byte up to, not including,
 * the `,"hash":"` that precedes the hash, followed by `}`: i.e. of the exact JSON text the record had before its
 * hash was appended, so verification never re-serializes anything. `prev` is the `hash` of the record before it
 * (across rotated files), or GENESIS for the very first record; `seq` counts records from 1 without gaps. The chain
 * continues across agent restarts (the last line of the file is read at start) and across rotations.
 */
export const GENESIS = "0".repeat(64);

/**
 * Records are written in batches: after AUDIT_BATCH_MS, or at once when AUDIT_BATCH_RECORDS are queued, one
 * asynchronous write per batch (a write per request would cost more than the request). `flush()` and `close()`
 * (agent shutdown) write everything queued.
 */
const AUDIT_BATCH_MS = 10;
const AUDIT_BATCH_RECORDS = 512;
const HASH_SUFFIX = /,"hash":"([0-9a-f]{64})"\}$/;

export function chainHash(textWithoutHash: string): string {
  return hash("sha256", textWithoutHash, "hex");
}

export interface AuditLogOptions {
  /** Append to this file; absent = stdout. */
  file?: string;
  /** Rotate the file before it grows beyond this many bytes. Default: never. */
  maxBytes?: number;
  /** Rotated files kept: FILE.1 (newest) ... FILE.<keep>. Default 10. */
  keep?: number;
  /** Hash-chain the records. Default true. */
  chain?: boolean;
}

/**
 * The audit log: JSON lines, hash-chained, to a file (appended, rotated by size) or stdout. `record()` only queues;
 * serialization, hashing (in record order) and the write happen in batches (every 10 ms at most), with asynchronous
 * writes, so auditing never blocks the request path.
 */
export class AuditLog implements AuditSink {
  readonly #o: Required<Omit<AuditLogOptions, "file">> & { file?: string };
  #fd: number;
  #size = 0;
  #prev = GENESIS;
  #seq = 0;
  #queue: { time: number; r: AuditRecord }[] = [];
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(opts: AuditLogOptions = {}) {
    this.#o = { maxBytes: opts.maxBytes ?? Infinity, keep: opts.keep ?? 10, chain: opts.chain ?? true, file: opts.file };
    if (opts.file) {
      mkdirSync(dirname(opts.file), { recursive: true });
      this.#fd = openSync(opts.file, "a", 0o600);
      this.#size = fstatSync(this.#fd).size;
      const tail = lastRecord(opts.file) ?? lastRecord(`${opts.file}.1`);
      if (tail) {
        this.#prev = tail.hash;
        this.#seq = tail.seq;
      }
    } else this.#fd = 1;
  }

  record(r: AuditRecord): void {
    if (this.#closed) return;
    this.#queue.push({ time: Date.now(), r });
    if (this.#queue.length >= AUDIT_BATCH_RECORDS) this.#kick();
    else if (!this.#timer) this.#timer = setTimeout(this.#kick, AUDIT_BATCH_MS);
  }

  /** Chains a drain of what is queued behind the writes already started (one writer, so records stay in order). */
  #kick = (): void => {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    this.#writing = this.#writing.then(() => this.#drain());
  };

  #serialize(item: { time: number; r: AuditRecord }): string {
    // The same bytes as JSON.stringify({ level, time, log, seq, ...record }) without building the merged object.
    const rec = JSON.stringify(item.r);
    const body = `{"level":30,"time":"${new Date(item.time).toISOString()}","log":"audit","seq":${++this.#seq}${rec === "{}" ? "" : ","}${rec.slice(1)}`;
    if (!this.#o.chain) return `${body}\n`;
    const pre = `${body.slice(0, -1)},"prev":"${this.#prev}"}`;
    const hash = chainHash(pre);
    this.#prev = hash;
    return `${pre.slice(0, -1)},"hash":"${hash}"}\n`;
  }

  /** Serializes and writes what is queued, in order; rotates between lines when the file would outgrow maxBytes. */
  async #drain(): Promise<void> {
    while (this.#queue.length > 0) {
      const items = this.#queue;
      this.#queue = [];
      let chunk = "";
      for (const item of items) {
        const line = this.#serialize(item);
        const bytes = Buffer.byteLength(line);
        if (this.#o.file && this.#size + Buffer.byteLength(chunk) + bytes > this.#o.maxBytes && this.#size + chunk.length > 0) {
          await this.#write(chunk);
          chunk = "";
          this.#rotate();
        }
        chunk += line;
      }
      await this.#write(chunk);
    }
  }

  #write(text: string): Promise<void> {
    if (text === "") return Promise.resolve();
    const buf = Buffer.from(text, "utf8");
    this.#size += buf.length;
    return new Promise((resolve) => {
      const step = (off: number) => {
        write(this.#fd, buf, off, buf.length - off, null, (err, n) => {
          if (err) {
            if (err.code === "EAGAIN") return void setTimeout(() => step(off), 1);
            process.emitWarning(`audit log write failed: ${err.message}`);
            return resolve();
          }
          if (off + n < buf.length) step(off + n);
          else resolve();
        });
      };
      step(0);
    });
  }

  /** FILE → FILE.1 → FILE.2 ...; the oldest beyond `keep` is removed. The chain simply continues in the new file. */
  #rotate(): void {
    const file = this.#o.file!;
    closeSync(this.#fd);
    rmSync(`${file}.${this.#o.keep}`, { force: true });
    for (let i = this.#o.keep - 1; i >= 1; i--) if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
    renameSync(file, `${file}.1`);
    this.#fd = openSync(file, "a", 0o600);
    this.#size = 0;
  }

  /** Resolves once everything recorded so far is written. */
  async flush(): Promise<void> {
    this.#kick();
    await this.#writing;
  }

  async close(): Promise<void> {
    await this.flush();
    this.#closed = true;
    if (this.#fd !== 1) closeSync(this.#fd);
  }
}

/** The last complete record of a file (hash and seq), or null. Reads only the file's tail. */
function lastRecord(file: string): { hash: string; seq: number } | null {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch {
    return null;
  }
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, 256 * 1024);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString("utf8").split("\n").filter((l) => l.length > 0);
    for (let i = lines.length - 1; i >= 0; i--) {
      const m = HASH_SUFFIX.exec(lines[i]);
      if (!m) continue;
      try {
        const seq = JSON.parse(lines[i]).seq;
        if (typeof seq === "number") return { hash: m[1], seq };
      } catch {
        // a torn line (crash mid-write): look further back
      }
    }
    return null;
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// verification

export interface VerifyProblem {
  file: string;
  /** 1-based line number within `file`. */
  line: number;
  reason: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Records checked (up to the first problem). */
  records: number;
  files: number;
  /** The first record's `prev`: GENESIS when the log starts at its beginning, else the hash of a removed rotated file's last record. */
  anchoredAt: string | null;
  lastHash: string | null;
  lastSeq: number | null;
  problem?: VerifyProblem;
}

/**
 * Verifies audit files given oldest first (e.g. `audit.log.3 audit.log.2 audit.log.1 audit.log`): every line parses,
 * its hash matches its bytes, its `prev` is the previous record's hash and `seq` is the previous plus one. Stops at
 * the first problem and names it: an edited record fails its own hash; a deleted one breaks `prev` and `seq` at the
 * record after the gap; a reordered one breaks `prev` where the order changes.
 */
export function verifyAuditFiles(files: string[]): VerifyResult {
  let prev: string | null = null;
  let seq: number | null = null;
  let records = 0;
  let anchoredAt: string | null = null;
  const fail = (file: string, line: number, reason: string): VerifyResult => ({
    ok: false, records, files: files.length, anchoredAt, lastHash: prev, lastSeq: seq, problem: { file, line, reason },
  });
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      return fail(file, 0, `cannot read: ${(e as Error).message}`);
    }
    const lines = text.split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    else if (lines.length > 0) return fail(file, lines.length, "the last line is incomplete (no newline): a torn or truncated write");
    for (let i = 0; i < lines.length; i++) {
      const ln = i + 1;
      const line = lines[i];
      const m = HASH_SUFFIX.exec(line);
      if (!m) return fail(file, ln, "not a chained audit record (no trailing \"hash\")");
      const pre = `${line.slice(0, m.index)}}`;
      let rec: { prev?: unknown; seq?: unknown; hash?: unknown };
      try {
        rec = JSON.parse(line);
      } catch {
        return fail(file, ln, "not valid JSON");
      }
      if (typeof rec.prev !== "string" || !/^[0-9a-f]{64}$/.test(rec.prev)) return fail(file, ln, "no valid \"prev\"");
      if (typeof rec.seq !== "number" || !Number.isInteger(rec.seq)) return fail(file, ln, "no valid \"seq\"");
      if (chainHash(pre) !== m[1]) return fail(file, ln, `record seq ${rec.seq} was modified: its hash does not match its content`);
      if (prev === null) {
        anchoredAt = rec.prev;
        if (rec.prev === GENESIS && rec.seq !== 1) return fail(file, ln, `the log starts at GENESIS but with seq ${rec.seq}, not 1`);
      } else if (rec.prev !== prev) {
        // A gap in seq is a deletion, unless the missing record turns up later in the file: then records were moved.
        const want = `,"seq":${seq! + 1},`;
        const later = rec.seq > seq! + 1 ? lines.findIndex((l, j) => j > i && l.includes(want)) : -1;
        const why =
          rec.seq === seq! + 1 ? "does not link to the record before it"
          : later >= 0 ? `is out of order: seq ${seq! + 1} should come here and appears later, at line ${later + 1}`
          : rec.seq > seq! + 1 ? `${rec.seq - seq! - 1} record(s) missing before it (seq ${seq! + 1}${rec.seq - seq! > 2 ? `..${rec.seq - 1}` : ""})`
          : `is out of order (seq ${rec.seq} after seq ${seq})`;
        return fail(file, ln, `record seq ${rec.seq} ${why}: prev ${rec.prev.slice(0, 12)}… ≠ ${prev.slice(0, 12)}…`);
      } else if (rec.seq !== seq! + 1) {
        return fail(file, ln, `seq ${rec.seq} follows seq ${seq} (expected ${seq! + 1})`);
      }
      prev = m[1];
      seq = rec.seq;
      records++;
    }
  }
  return { ok: true, records, files: files.length, anchoredAt, lastHash: prev, lastSeq: seq };
}

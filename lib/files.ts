import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, statSync, unlinkSync, writeSync, chmodSync } from "node:fs";
import { dirname, basename, join } from "node:path";

/**
 * Writes a file atomically: a temporary file in the same directory, fsync, rename over the target, fsync the
 * directory. A crash leaves either the old or the new content, never a torn file. Private files are created 0600
 * from the start (not chmod'ed afterwards), so a secret is never readable by others even for an instant.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, "wx", mode);
  try {
    const buf = typeof data === "string" ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try { unlinkSync(tmp); } catch { /* already gone */ }
    throw e;
  }
  closeSync(fd);
  // open() honours the umask; make the mode exact.
  chmodSync(tmp, mode);
  renameSync(tmp, path);
  try {
    const dfd = openSync(dir, "r");
    try { fsyncSync(dfd); } finally { closeSync(dfd); }
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic.
  }
}

export function writePrivateFileAtomic(path: string, data: string | Uint8Array): void {
  writeFileAtomic(path, data, 0o600);
}

/** Creates a directory 0700 (or tightens an existing empty-handed one). */
export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
}

export function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

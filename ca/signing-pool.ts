import { Worker } from "node:worker_threads";
import { availableParallelism } from "node:os";
import { CsrRejectedError, CaUnavailableError } from "./errors.ts";
import type { LeafRequest, LeafSigner, SignedLeaf } from "./profile.ts";
import type { SignReply, SignTask } from "./signing-worker.ts";

/** Default number of signing threads: the cores left over by the main thread, at least one, at most four. */
export function defaultSigningThreads(): number {
  return Math.min(4, Math.max(1, availableParallelism() - 1));
}

interface Pending {
  resolve: (leaf: SignedLeaf) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
}

/**
 * Worker threads that check CSRs and sign leaves (ca/signing-worker.ts), so that the CA's main thread spends its time
 * on TLS, HTTP and the store: per certificate the CSR's key import and signature check plus the leaf's DER and
 * signature are about half of the CA's CPU. Each thread gets the issuer's signing key once, at start. A thread that
 * dies fails its requests with CaUnavailableError (HTTP 503, nothing issued) and is replaced on the next request.
 * Idle threads do not keep the process alive.
 */
export class SigningPool {
  readonly #issuer: LeafSigner;
  readonly #slots: (Slot | undefined)[];
  readonly #onFailure: (e: Error) => void;
  #ids = 0;
  #closed = false;

  constructor(issuer: LeafSigner, threads: number, onFailure: (e: Error) => void = () => {}) {
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads: ${threads} is not a positive integer`);
    this.#issuer = issuer;
    this.#slots = Array.from({ length: threads }, () => undefined);
    this.#onFailure = onFailure;
  }

  /** Starts every thread now rather than on the first requests (which would otherwise wait for a thread to load). */
  warm(): this {
    for (let i = 0; i < this.#slots.length; i++) if (!this.#closed && !this.#slots[i]) this.#slots[i] = this.#start(i);
    return this;
  }

  get threads(): number {
    return this.#slots.length;
  }

  /** Threads currently running (started lazily, replaced after a failure). */
  get running(): Worker[] {
    return this.#slots.flatMap((s) => (s ? [s.worker] : []));
  }

  checkAndSign(csrPem: unknown, leaf: Omit<LeafRequest, "spki">): Promise<SignedLeaf> {
    if (this.#closed) return Promise.reject(new CaUnavailableError("the CA is shutting down; retry against a running CA"));
    const slot = this.#pick();
    const id = ++this.#ids;
    return new Promise<SignedLeaf>((resolve, reject) => {
      if (slot.pending.size === 0) slot.worker.ref();
      slot.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ id, csrPem, leaf } satisfies SignTask);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const slots = this.#slots.splice(0).filter((s): s is Slot => s !== undefined);
    for (const s of slots) this.#fail(s, new CaUnavailableError("the CA is shutting down; nothing was issued"));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  /** The running thread with the fewest requests in hand, or a new one in an empty slot. */
  #pick(): Slot {
    let best = -1;
    for (let i = 0; i < this.#slots.length; i++) {
      const s = this.#slots[i];
      if (!s) return (this.#slots[i] = this.#start(i));
      if (best < 0 || s.pending.size < this.#slots[best]!.pending.size) best = i;
    }
    return this.#slots[best]!;
  }

  #start(index: number): Slot {
    const worker = spawnWorker(this.#issuer);
    const slot: Slot = { worker, pending: new Map() };
    worker.on("message", (r: SignReply) => {
      const p = slot.pending.get(r.id);
      if (!p) return;
      slot.pending.delete(r.id);
      if (slot.pending.size === 0) worker.unref();
      if ("ok" in r) p.resolve({ ...r.ok, der: Buffer.from(r.ok.der.buffer, r.ok.der.byteOffset, r.ok.der.byteLength) });
      else if ("rejected" in r) p.reject(new CsrRejectedError(r.rejected.code, r.rejected.message));
      else p.reject(new CaUnavailableError("the CA could not sign this request; retry", { cause: new Error(r.failed) }));
    });
    let reason: Error | undefined;
    worker.on("error", (e) => (reason = e));
    worker.on("exit", (code) => {
      if (this.#slots[index] === slot) this.#slots[index] = undefined;
      if (this.#closed) return;
      const e = reason ?? new Error(`signing thread exited with code ${code}`);
      this.#onFailure(e);
      this.#fail(slot, new CaUnavailableError("the CA's signing thread stopped; nothing was issued, retry", { cause: e }));
    });
    // After the listeners: adding a "message" listener refs the worker again.
    worker.unref();
    return slot;
  }

  #fail(slot: Slot, e: Error): void {
    const pending = [...slot.pending.values()];
    slot.pending.clear();
    for (const p of pending) p.reject(e);
  }
}

/**
 * Compiled, the worker is dist/ca/signing-worker.js. From the sources (tsx registered in this thread only), the new
 * thread registers tsx itself before importing the .ts entry.
 */
function spawnWorker(issuer: LeafSigner): Worker {
  const fromSource = import.meta.url.endsWith(".ts");
  const entry = new URL(fromSource ? "./signing-worker.ts" : "./signing-worker.js", import.meta.url);
  const workerData: LeafSigner = { signer: issuer.signer, nameDer: issuer.nameDer, akiExtension: issuer.akiExtension };
  if (!fromSource) return new Worker(entry, { workerData });
  const tsx = import.meta.resolve("tsx/esm/api");
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

/**
 * A CA signing thread: checks a CSR and signs the leaf (ca/profile.ts, unchanged) off the main thread, which keeps
 * TLS, HTTP and the store. It holds the intermediate's signing key (sent by the pool that started it) and nothing
 * else: no store, no tokens, no decisions; the main thread has authorized the request before it gets here.
 */
import { parentPort, workerData } from "node:worker_threads";
import { acceptCsr, signLeaf, type LeafRequest, type LeafSigner } from "./profile.ts";
import { CsrRejectedError } from "./errors.ts";

export interface SignTask {
  id: number;
  csrPem: unknown;
  leaf: Omit<LeafRequest, "spki">;
}

export type SignReply =
  | { id: number; ok: { der: Uint8Array; pem: string; serial: string; notBefore: number; notAfter: number } }
  | { id: number; rejected: { code: "MCPMESH_BAD_CSR" | "MCPMESH_WEAK_KEY"; message: string } }
  | { id: number; failed: string };

const issuer = workerData as LeafSigner;
issuer.nameDer = Buffer.from(issuer.nameDer);
issuer.akiExtension = Buffer.from(issuer.akiExtension);

parentPort!.on("message", (task: SignTask) => {
  void (async (): Promise<SignReply> => {
    try {
      // Inline: this thread is the off-main-thread place; the libuv pool would add a hop each way.
      const spki = await acceptCsr(task.csrPem, { inline: true });
      const cert = await signLeaf(issuer, { ...task.leaf, spki }, { inline: true });
      return { id: task.id, ok: { der: cert.der, pem: cert.pem, serial: cert.serial, notBefore: cert.notBefore, notAfter: cert.notAfter } };
    } catch (e) {
      if (e instanceof CsrRejectedError) return { id: task.id, rejected: { code: e.code as "MCPMESH_BAD_CSR" | "MCPMESH_WEAK_KEY", message: e.message } };
      return { id: task.id, failed: e instanceof Error ? e.message : String(e) };
    }
  })().then((reply) => parentPort!.postMessage(reply));
});

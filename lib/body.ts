import type { IncomingMessage } from "node:http";
import { MeshError } from "./errors.ts";

/** The request body (declared or as it arrived) is larger than the caller's limit. */
export class BodyTooLargeError extends MeshError {
  readonly limit: number;
  constructor(limit: number) {
    super("MCPMESH_TOO_LARGE", `body: larger than ${limit} bytes`);
    this.limit = limit;
  }
}

/** The client closed or reset the connection before its request body ended: the client's doing, not an internal fault. */
export class BodyIncompleteError extends MeshError {
  constructor() {
    super("MCPMESH_BAD_REQUEST", "body: the connection closed before the request body ended");
  }
}

/**
 * An HTTP request body, at most `limit` bytes, for the CA's API and every agent edge. A declared Content-Length over
 * the limit is refused before a byte is read; a body that grows past it is refused as soon as it does (the rest is
 * drained, not buffered, so the answer can go out at once). Plain stream events rather than `for await`: the async
 * iterator cost ~20 µs per request, a few percent of an issuance. A client gone mid-body shows as "error" (ECONNRESET
 * "aborted") and/or "close" before "end"; either settles the promise, so no reader is left waiting for ever. A client
 * that resets its connection right after sending a whole body, before the handler read it, is refused the same way:
 * Node has destroyed the request by then (a fire-and-close notification can be lost; it could not be answered anyway).
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? "-1");
  if (declared > limit) return Promise.reject(new BodyTooLargeError(limit));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        req.resume();
        reject(new BodyTooLargeError(limit));
      } else chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
    };
    const onGone = () => {
      cleanup();
      reject(new BodyIncompleteError());
    };
    const cleanup = () => {
      req.off("data", onData).off("end", onEnd).off("error", onGone).off("close", onGone);
    };
    req.on("data", onData).on("end", onEnd).on("error", onGone).on("close", onGone);
  });
}

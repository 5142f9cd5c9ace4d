import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { SERVER_ERROR, idKey, type JsonRpcId } from "../jsonrpc.ts";

/**
 * The client's requests a channel has sent upstream and not yet seen answered: what must get an error response when
 * the upstream dies, so no caller hangs.
 */
export class InFlight {
  readonly #pending = new Map<string, JsonRpcId>();

  get size(): number {
    return this.#pending.size;
  }

  /** Notes a message going upstream: a request is now pending; a cancellation means no answer will come. */
  sent(m: JSONRPCMessage): void {
    const msg = m as any;
    if (typeof msg.method === "string") {
      if (msg.id !== undefined && msg.id !== null) this.#pending.set(idKey(msg.id), msg.id);
      else if (msg.method === "notifications/cancelled" && msg.params?.requestId !== undefined) this.#pending.delete(idKey(msg.params.requestId));
    }
  }

  /** Notes a message coming from upstream: a response settles its request. */
  received(m: JSONRPCMessage): void {
    const msg = m as any;
    if (msg.method === undefined && msg.id !== undefined && msg.id !== null) this.#pending.delete(idKey(msg.id));
  }

  forget(id: JsonRpcId): void {
    this.#pending.delete(idKey(id));
  }

  /** Empties the set, returning one JSON-RPC error response per pending request. */
  failAll(message: string): JSONRPCMessage[] {
    const out: JSONRPCMessage[] = [];
    for (const id of this.#pending.values()) out.push(errorFor(id, message));
    this.#pending.clear();
    return out;
  }
}

export function errorFor(id: JsonRpcId, message: string): JSONRPCMessage {
  // -32000, as every other path that answers for an upstream that failed (HTTP 502/504, a channel that closed, a
  // timeout): a client sees one code for "the upstream failed this request", whatever the upstream transport.
  return { jsonrpc: "2.0", id, error: { code: SERVER_ERROR, message } } as JSONRPCMessage;
}

export function isRequest(m: JSONRPCMessage): m is JSONRPCMessage & { id: JsonRpcId; method: string } {
  const msg = m as any;
  return typeof msg.method === "string" && msg.id !== undefined && msg.id !== null;
}

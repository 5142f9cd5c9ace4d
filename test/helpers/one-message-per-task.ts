import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";

/**
 * Hands a transport's inbound messages to the SDK one per macrotask, in order. The SDK's Protocol runs notification
 * handlers (progress included) in a microtask but handles responses synchronously, and drops the progress handler
 * with the response: when a progress notification and its response arrive in the same network read (EventSource and
 * `ws` dispatch them in one loop), the progress is lost in the client. That race is the SDK client's own — it is the
 * same against a server directly — so the matrix test takes it out of the picture here and checks the order the agent
 * sends in with raw clients (e2e-legacy-sse / e2e-websocket).
 */
export class OneMessagePerTask implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  readonly inner: Transport;

  constructor(inner: Transport) {
    this.inner = inner;
  }

  get sessionId(): string | undefined {
    return this.inner.sessionId;
  }

  setProtocolVersion(version: string): void {
    this.inner.setProtocolVersion?.(version);
  }

  start(): Promise<void> {
    this.inner.onmessage = (m) => setImmediate(() => this.onmessage?.(m));
    this.inner.onerror = (e) => this.onerror?.(e);
    this.inner.onclose = () => setImmediate(() => this.onclose?.());
    return this.inner.start();
  }

  send(message: JSONRPCMessage, options?: Parameters<Transport["send"]>[1]): Promise<void> {
    return this.inner.send(message, options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

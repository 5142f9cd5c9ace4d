import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";

/**
 * How the agent reaches the MCP server behind it, at the level of JSON-RPC messages. Every upstream kind
 * (Streamable HTTP, legacy SSE, a supervised stdio child) implements it, so downstream edges and the gatekeeper never
 * see upstream bytes. Streamable HTTP downstream → Streamable HTTP upstream keeps its byte-forwarding fast path
 * (`HttpUpstream`); every other pair goes through a channel opened here.
 */
export interface UpstreamConnector {
  readonly kind: "http" | "sse" | "stdio";
  /**
   * One channel per downstream MCP session, opened for `identity` (sent upstream as X-MCPMesh-Identity where the
   * transport has headers). The Transport is returned unstarted; the caller sets its handlers, then `start()`s it.
   * A channel whose upstream dies answers each of its in-flight requests with a JSON-RPC error (never hangs) through
   * `onmessage`; whether it then closes or recovers is the connector's documented choice.
   */
  open(ctx: { identity: string; sessionId: string }): Transport;
  /** Closes every open channel and whatever the connector started (child processes, connection pools). */
  close(): Promise<void>;
}

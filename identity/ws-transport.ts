import WebSocket from "ws";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { JSONRPCMessageSchema, type JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { loadIdentity } from "./store.ts";
import { meshTlsOptions } from "./fetch.ts";

/** The WebSocket subprotocol the agent's `/ws` edge speaks (one JSON-RPC message per text frame). */
export const MCP_WS_SUBPROTOCOL = "mcp";

/**
 * An MCP client transport over `wss://` with the mesh's mTLS (the SDK's WebSocket transport uses the platform
 * WebSocket, which cannot present a client certificate). The identity is read when the socket opens, so a transport
 * made after a renewal uses the new certificate.
 */
export class MeshWebSocketTransport implements Transport {
  onmessage?: (message: JSONRPCMessage) => void;
  onerror?: (error: Error) => void;
  onclose?: () => void;
  #socket: WebSocket | null = null;
  #closed = false;

  constructor(
    readonly url: URL,
    readonly identityDir: string,
    readonly expect?: string,
  ) {}

  start(): Promise<void> {
    const tls = meshTlsOptions(loadIdentity(this.identityDir), this.expect);
    const socket = new WebSocket(this.url, MCP_WS_SUBPROTOCOL, { ...tls, handshakeTimeout: 15_000, maxPayload: 16 * 1024 * 1024 } as unknown as WebSocket.ClientOptions);
    this.#socket = socket;
    return new Promise((resolve, reject) => {
      let open = false;
      socket.on("open", () => {
        if (socket.protocol !== MCP_WS_SUBPROTOCOL) {
          socket.terminate();
          reject(new Error(`the agent did not accept the "${MCP_WS_SUBPROTOCOL}" WebSocket subprotocol`));
          return;
        }
        open = true;
        resolve();
      });
      socket.on("unexpected-response", (_req, res) => {
        reject(Object.assign(new Error(`WebSocket upgrade refused: HTTP ${res.statusCode}`), { status: res.statusCode }));
        res.resume();
        socket.terminate();
      });
      socket.on("error", (e) => {
        if (!open) reject(e);
        else this.onerror?.(e);
      });
      socket.on("message", (data, isBinary) => {
        if (isBinary) {
          this.onerror?.(new Error("binary WebSocket frame ignored: MCP frames are text"));
          return;
        }
        let msg: JSONRPCMessage;
        try {
          msg = JSONRPCMessageSchema.parse(JSON.parse(data.toString()));
        } catch (e) {
          this.onerror?.(e as Error);
          return;
        }
        this.onmessage?.(msg);
      });
      socket.on("close", () => {
        if (!open) reject(new Error("WebSocket closed before it opened"));
        if (this.#closed) return;
        this.#closed = true;
        this.onclose?.();
      });
    });
  }

  send(message: JSONRPCMessage): Promise<void> {
    const socket = this.#socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return Promise.reject(Object.assign(new Error("WebSocket is not open"), { code: "ECONNREFUSED" }));
    return new Promise((resolve, reject) => socket.send(JSON.stringify(message), (e) => (e ? reject(e) : resolve())));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const socket = this.#socket;
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          socket.terminate();
          resolve();
        }, 2000);
        socket.once("close", () => {
          clearTimeout(t);
          resolve();
        });
        socket.close(1000);
      });
    }
    this.onclose?.();
  }
}

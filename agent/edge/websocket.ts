import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { STATUS_CODES } from "node:http";
import type { WebSocketServer, WebSocket, RawData } from "ws";
import { loadWs } from "../../lib/lazy-ws.ts";
import { classify, errorResponse, RATE_LIMITED, SERVER_ERROR, type JsonRpcMessage } from "../jsonrpc.ts";
import type { Caller } from "../policy.ts";
import { auditRefusal, decodeMessage, SessionBridge, slowConsumerCap } from "../bridge.ts";
import { foreignOrigin, headerOf, type BridgeEdgeOptions } from "./legacy-sse.ts";

/** The subprotocol the MCP SDK's WebSocket transports speak. */
export const MCP_SUBPROTOCOL = "mcp";

/** Answers an upgrade request with a plain HTTP error and closes the socket (nothing was upgraded). */
export function refuseUpgrade(socket: Duplex, status: number, message: string, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(errorResponse(null, SERVER_ERROR, message));
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}connection: close\r\n\r\n${body}`);
}

/**
 * MCP over WebSocket downstream (`ws`, subprotocol `mcp`, one JSON-RPC message or batch per text frame, as the SDK's
 * WebSocketClientTransport speaks it), upgraded on the same mTLS listener after the TLS gate. One session per socket,
 * through a `SessionBridge`. Frames larger than `limits.maxBodyBytes` close the socket (1009); every frame gets the
 * same UTF-8, pre-scan and JSON checks as an HTTP body. The socket is the TLS connection: revoking or expiring the
 * certificate destroys it like any other connection. `ws` itself is imported on the first upgrade (lib/lazy-ws.ts).
 */
export class WebSocketEdge {
  #o: BridgeEdgeOptions;
  #wss: WebSocketServer | null = null;

  constructor(opts: BridgeEdgeOptions) {
    this.#o = opts;
  }

  async #server(): Promise<WebSocketServer> {
    const { WebSocketServer } = await loadWs();
    // Made after the import, so it carries the limits in force now even if update() ran meanwhile.
    this.#wss ??= new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: this.#o.limits.maxBodyBytes,
      handleProtocols: (protocols) => (protocols.has(MCP_SUBPROTOCOL) ? MCP_SUBPROTOCOL : false),
    });
    return this.#wss;
  }

  update(opts: Partial<Pick<BridgeEdgeOptions, "limits">>): void {
    this.#o = { ...this.#o, ...opts };
    // maxPayload is fixed per server; the next upgrade makes a server with the new limit.
    this.#wss = null;
  }

  /** Handles an `upgrade` request of an admitted caller. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, caller: Caller): Promise<void> {
    const log = this.#o.logger;
    if (req.method !== "GET" || (headerOf(req, "upgrade") ?? "").toLowerCase() !== "websocket") return refuseUpgrade(socket, 400, "Bad Request: expected a WebSocket upgrade");
    const origin = foreignOrigin(req);
    if (origin !== null) {
      log.warn({ event: "origin_refused", identity: caller.id, origin }, "request with a foreign Origin refused");
      return refuseUpgrade(socket, 403, "Forbidden: Origin not allowed");
    }
    const offered = (headerOf(req, "sec-websocket-protocol") ?? "").split(",").map((p) => p.trim());
    if (!offered.includes(MCP_SUBPROTOCOL)) {
      log.warn({ event: "ws_refused", identity: caller.id, reason: "subprotocol mcp not offered", offered: offered.filter(Boolean).slice(0, 8) }, "WebSocket upgrade refused");
      return refuseUpgrade(socket, 400, `Bad Request: the WebSocket subprotocol "${MCP_SUBPROTOCOL}" is required`);
    }
    const left = this.#o.gate.coolDown(caller, "ws");
    if (left > 0) return refuseUpgrade(socket, 429, `Too many requests: cool-down for another ${left} ms`, { "retry-after": String(Math.ceil(left / 1000)) });

    // From here on the socket waits (for `ws` on the first upgrade, for the upstream): after the 'upgrade' event nobody
    // else listens for its errors, and an unheard 'error' would bring the agent down.
    const onWaitError = () => socket.destroy();
    socket.on("error", onWaitError);
    try {
      await this.#upgrade(req, socket, head, caller);
    } finally {
      socket.off("error", onWaitError);
    }
  }

  async #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, caller: Caller): Promise<void> {
    const log = this.#o.logger;
    let wss: WebSocketServer;
    try {
      wss = await this.#server();
    } catch (e) {
      log.error({ event: "ws_unavailable", identity: caller.id, reason: (e as Error).message }, "the WebSocket library could not be loaded");
      return refuseUpgrade(socket, 500, "WebSocket support is unavailable on this agent");
    }
    // Gone while `ws` loaded: no session was opened for it, so there is nothing else to undo.
    if (socket.destroyed) return;

    let ws: WebSocket | null = null;
    const bridge = SessionBridge.open({
      ...this.#o,
      caller,
      transport: "ws",
      deliver: (m: JsonRpcMessage | JsonRpcMessage[]) => {
        if (ws?.readyState !== 1) return;
        ws.send(JSON.stringify(m));
        const cap = slowConsumerCap(this.#o.limits); // the limits in force now: a reload applies to open sockets too
        if (ws.bufferedAmount > cap) {
          // The client is not reading: end its session rather than hold an unbounded queue for it. No closing
          // handshake: the frame could not get through the full socket anyway.
          log.warn({ event: "slow_consumer", identity: caller.id, transport: "ws", queuedBytes: ws.bufferedAmount, limitBytes: cap }, "client not reading its socket: session ended");
          ws.terminate();
          bridge!.close("client not reading its socket");
        }
      },
      onEnd: () => {
        if (ws && ws.readyState <= 1) ws.close(1000, "session ended");
      },
    });
    if (!bridge) {
      log.warn({ event: "session_limit", identity: caller.id, limit: this.#o.limits.maxSessionsPerIdentity }, "too many sessions for one identity");
      return refuseUpgrade(socket, 429, "Too many sessions for this identity; close one first");
    }
    try {
      await bridge.start();
    } catch (e) {
      log.warn({ event: "upstream_error", identity: caller.id, reason: (e as Error).message }, "could not open the upstream channel");
      return refuseUpgrade(socket, 502, "Upstream MCP server unavailable");
    }
    if (socket.destroyed) return bridge.close("client went away during the upgrade");
    if (bridge.ended) return refuseUpgrade(socket, 409, "Session ended before the upgrade completed");
    wss.handleUpgrade(req, socket, head, (sock) => {
      ws = sock;
      // A closing handshake, not a reset: answers already queued go first (revocation destroys the socket anyway).
      const closer = () => sock.close(1000, "session ended");
      bridge.session.closers.add(closer);
      // Frames are decided one after another, so the upstream sees them in the order they were sent.
      let queue: Promise<void> = Promise.resolve();
      sock.on("message", (data: RawData, isBinary: boolean) => {
        queue = queue.then(() => this.#frame(bridge, sock, caller, data, isBinary)).catch((e) => {
          log.warn({ event: "ws_error", identity: caller.id, reason: (e as Error).message }, "WebSocket message failed");
        });
      });
      sock.on("error", (e) => log.debug({ event: "ws_error", identity: caller.id, reason: e.message }, "WebSocket error"));
      sock.on("close", (code) => {
        bridge.session.closers.delete(closer);
        bridge.close(`client closed the socket (${code})`);
      });
      log.debug({ event: "ws_session_opened", identity: caller.id, session: bridge.id }, "WebSocket session opened");
    });
  }

  async #frame(bridge: SessionBridge, ws: WebSocket, caller: Caller, data: RawData, isBinary: boolean): Promise<void> {
    if (isBinary) {
      auditRefusal(this.#o.audit, caller, "ws", "binary frame");
      ws.close(1003, "text frames only");
      return;
    }
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    const send = (m: unknown) => ws.readyState === 1 && ws.send(JSON.stringify(m));
    const decoded = decodeMessage(buf, this.#o.limits.maxMessageDepth);
    if (!decoded.ok) {
      auditRefusal(this.#o.audit, caller, "ws", decoded.message);
      send(errorResponse(null, decoded.code, decoded.message));
      return;
    }
    const left = this.#o.gate.coolDown(caller, "ws");
    if (left > 0) {
      const c = classify(decoded.value);
      if (c.kind === "request") send(errorResponse(c.msg.id, RATE_LIMITED, `Too many requests: cool-down for another ${left} ms`, { retryAfterMs: left }));
      return;
    }
    const outcome = await bridge.receive(decoded.value);
    if (outcome.reply !== undefined) send(outcome.reply);
  }
}

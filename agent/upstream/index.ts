import type { Logger } from "../../lib/log.ts";
import type { UpstreamConfig } from "../config.ts";
import type { UpstreamConnector } from "./connector.ts";
import { UpstreamError } from "./http.ts";
import { SseConnector } from "./sse.ts";
import { StdioConnector } from "./stdio.ts";

export type { UpstreamConnector } from "./connector.ts";

/**
 * The message-level connector for a legacy SSE (`upstream.sse`) or stdio (`upstream.command`) upstream. Streamable HTTP
 * (`upstream.url`) has its own connector (http-channel.ts); anything else is a configuration the caller should not
 * have passed here, so it throws.
 *
 * Channel contract shared by both (on top of UpstreamConnector's): `send()` of a request never rejects because the
 * upstream is gone: the failure becomes that request's JSON-RPC error response (code -32000) through `onmessage`.
 */
export function createMessageConnector(cfg: UpstreamConfig, deps: { logger: Logger }): UpstreamConnector {
  if (cfg.sse !== undefined) return new SseConnector({ url: cfg.sse, socketPath: cfg.socket, timeoutMs: cfg.timeoutMs, logger: deps.logger });
  if (cfg.command !== undefined) return new StdioConnector({ command: cfg.command, env: cfg.env, inheritEnv: cfg.inheritEnv, cwd: cfg.cwd, restart: cfg.restart, timeoutMs: cfg.timeoutMs, logger: deps.logger });
  throw new UpstreamError(`no message connector for this upstream (upstream.${cfg.url !== undefined ? "url" : "?"}): only upstream.sse and upstream.command have one`);
}

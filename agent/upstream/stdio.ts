import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { Logger } from "../../lib/log.ts";
import type { RestartConfig } from "../config.ts";
import type { UpstreamConnector } from "./connector.ts";
import { UpstreamError } from "./http.ts";

export interface StdioConnectorOptions {
  command: string[];
  env?: Record<string, string>;
  inheritEnv?: string[];
  cwd?: string;
  restart: RestartConfig;
  timeoutMs: number;
  logger: Logger;
}

/** Work in progress: a supervised stdio child per downstream session. */
export class StdioConnector implements UpstreamConnector {
  readonly kind = "stdio" as const;
  constructor(_opts: StdioConnectorOptions) {}
  open(_ctx: { identity: string; sessionId: string }): Transport {
    throw new UpstreamError("stdio upstream not implemented yet");
  }
  async close(): Promise<void> {}
}

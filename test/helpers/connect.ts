/**
 * The real `mcpmesh connect` process driven by the real SDK client over stdio (StdioClientTransport spawning
 * bin/mcpmesh.js), with its stderr (JSON log lines) collected for waiting on events.
 */
import type { Readable } from "node:stream";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { BIN } from "./cli.ts";

export interface ConnectProcess {
  client: Client;
  transport: StdioClientTransport;
  /** Errors the client transport reported (a non-JSON line on stdout would land here). */
  errors: Error[];
  stderr(): string;
  logs(): any[];
  waitForLog(pred: (l: any) => boolean, ms?: number): Promise<any>;
  close(): Promise<void>;
}

export function connectEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== "NODE_OPTIONS" && k !== "NODE_TEST_CONTEXT") env[k] = v;
  return { ...env, MCPMESH_LOG_LEVEL: "debug", ...extra };
}

/** Spawns `mcpmesh connect ARGS` and connects an SDK client to it (initialize goes through connect to the agent). */
export async function startConnectClient(args: string[], opts: { connect?: boolean } = {}): Promise<ConnectProcess> {
  const transport = new StdioClientTransport({ command: process.execPath, args: [BIN, "connect", ...args], env: connectEnv(), stderr: "pipe" });
  let stderr = "";
  const waiters = new Set<() => void>();
  const err = transport.stderr as Readable;
  err.setEncoding("utf8");
  err.on("data", (d: string) => {
    stderr += d;
    for (const w of waiters) w();
  });
  const logs = () =>
    stderr.split("\n").flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
  const errors: Error[] = [];
  const client = new Client({ name: "connect-test", version: "1.0.0" });
  client.onerror = (e) => errors.push(e);
  const p: ConnectProcess = {
    client,
    transport,
    errors,
    stderr: () => stderr,
    logs,
    waitForLog: (pred, ms = 30_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const hit = logs().find(pred);
          if (hit) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(hit);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`connect log line not seen within ${ms} ms; stderr:\n${stderr.slice(-4000)}`));
        }, ms);
        waiters.add(check);
        check();
      }),
    close: async () => {
      await client.close().catch(() => {});
    },
  };
  if (opts.connect !== false) {
    try {
      await client.connect(transport);
    } catch (e) {
      await client.close().catch(() => {});
      throw Object.assign(e as Error, { stderr });
    }
  }
  return p;
}

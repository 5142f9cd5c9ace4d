import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";

const BIN = join(import.meta.dirname, "..", "..", "bin", "mcpmesh.js");

export interface AgentProcess {
  url: string;
  configFile: string;
  child: ChildProcess;
  /** Parsed JSON log lines so far (agent log on stderr, audit on stdout). */
  logs(): any[];
  audit(): any[];
  /** Waits until a log line matches (for asynchronous events), up to `ms`. */
  waitForLog(pred: (l: any) => boolean, ms?: number): Promise<any>;
  reload(): void;
  stop(): Promise<void>;
}

/** Runs the real `mcpmesh agent run` on a config object written to `dir/agent.yaml`. */
export async function startAgentProcess(dir: string, config: Record<string, unknown>, opts: { env?: Record<string, string>; wrap?: string[] } = {}): Promise<AgentProcess> {
  const configFile = join(dir, `agent-${Date.now()}-${Math.random().toString(16).slice(2)}.yaml`);
  writeFileSync(configFile, stringify(config));
  // `wrap` runs the agent under another command, e.g. ["ip", "netns", "exec", NS] (which execs, keeping the pid).
  const argv = [process.execPath, BIN, "agent", "run", "--config", configFile];
  const cmd = opts.wrap ? [...opts.wrap, ...argv] : argv;
  const child = spawn(cmd[0], cmd.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, MCPMESH_LOG_LEVEL: "debug", ...opts.env } });
  const logLines: any[] = [];
  const auditLines: any[] = [];
  let stderrText = "";
  const waiters = new Set<() => void>();
  const collect = (into: any[], isErr: boolean) => {
    let buf = "";
    return (chunk: Buffer) => {
      buf += chunk.toString("utf8");
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (isErr) stderrText += line + "\n";
        try {
          into.push(JSON.parse(line));
        } catch {
          // not JSON: kept in stderrText for error messages
        }
        for (const w of waiters) w();
      }
    };
  };
  child.stdout!.on("data", collect(auditLines, false));
  child.stderr!.on("data", collect(logLines, true));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const all = () => [...logLines, ...auditLines];
  const waitForLog = (pred: (l: any) => boolean, ms = 20_000) =>
    new Promise<any>((resolve, reject) => {
      const check = () => {
        const hit = all().find(pred);
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`log line not seen within ${ms} ms; stderr:\n${stderrText.slice(-4000)}`));
      }, ms);
      waiters.add(check);
      check();
    });
  const started = await Promise.race([
    waitForLog((l) => l.event === "listening", 30_000),
    exited.then((code) => {
      throw new Error(`agent exited with ${code} before listening:\n${stderrText}`);
    }),
  ]);
  return {
    url: started.url,
    configFile,
    child,
    logs: () => logLines,
    audit: () => auditLines,
    waitForLog,
    reload: () => child.kill("SIGHUP"),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/**
 * What every example's run.ts shares: a private temp directory, the real `mcpmesh` command (bin/mcpmesh.js) for the
 * CA, enrollment and the agent, an MCP SDK client over mTLS, a narrated checklist, and cleanup of every process and
 * file on exit, failure or Ctrl-C. Each example reads top to bottom as the commands an operator would type.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createServer } from "node:net";
import { parse, stringify } from "yaml";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMeshFetch } from "../../identity/fetch.ts";

export const REPO = resolve(import.meta.dirname, "..", "..");
export const BIN = join(REPO, "bin", "mcpmesh.js");

export interface Running {
  child: ChildProcess;
  /** The first line of output that matched the readiness pattern's group 1 (a URL). */
  ready: string;
  output(): string;
  stop(): Promise<void>;
}

export class Example {
  readonly dir = mkdtempSync(join(tmpdir(), "mcpmesh-example-"));
  readonly env: NodeJS.ProcessEnv;
  #cleanups: (() => Promise<unknown> | unknown)[] = [];
  #failures = 0;

  constructor(readonly name: string) {
    const env: NodeJS.ProcessEnv = { ...process.env, MCPMESH_CA_PASSPHRASE: "example passphrase, not a secret" };
    // The test runner's own options must not leak into the processes the example starts.
    delete env.NODE_OPTIONS;
    delete env.NODE_TEST_CONTEXT;
    this.env = env;
    this.#cleanups.push(() => rmSync(this.dir, { recursive: true, force: true }));
    const onSignal = () => void this.close().finally(() => process.exit(130));
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
  }

  say(s: string): void {
    console.log(s);
  }

  /** Records one expectation; the example exits non-zero if any failed. */
  check(ok: unknown, what: string): void {
    console.log(`  ${ok ? "ok  " : "FAIL"} ${what}`);
    if (!ok) this.#failures++;
  }

  defer(fn: () => Promise<unknown> | unknown): void {
    this.#cleanups.push(fn);
  }

  /** `mcpmesh ARGS` to completion; throws with its output unless it exits with `expectCode` (default 0). */
  async mcpmesh(args: string[], expectCode = 0): Promise<string> {
    // Enrollment tokens are single-use secrets: shown as a placeholder, never printed.
    console.log(`  $ mcpmesh ${args.map((a) => (a.startsWith("mcpmesh1.") ? '"$TOKEN"' : /[\s"'{}]/.test(a) ? `'${a}'` : a)).join(" ")}`);
    const child = spawn(process.execPath, [BIN, ...args], { cwd: this.dir, env: this.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    const code = await new Promise<number | null>((r) => child.on("close", (c) => r(c)));
    if (code !== expectCode) throw new Error(`mcpmesh ${args.join(" ")} exited ${code} (expected ${expectCode})\n${out}${err}`);
    return out;
  }

  /** Starts a long-running process and waits for a line matching `ready` (its group 1 is returned as `ready`). */
  async start(argv: string[], ready: RegExp, label: string): Promise<Running> {
    const child = spawn(argv[0], argv.slice(1), { cwd: REPO, env: this.env, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    const exited = new Promise<void>((r) => child.on("close", () => r()));
    const stop = async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    };
    this.defer(stop);
    const url = await new Promise<string>((resolvePromise, reject) => {
      const onData = (d: Buffer) => {
        text += d.toString("utf8");
        const m = ready.exec(text);
        if (m) resolvePromise(m[1]);
      };
      child.stdout!.on("data", onData);
      child.stderr!.on("data", onData);
      void exited.then(() => reject(new Error(`${label} exited before it was ready:\n${text}`)));
      setTimeout(() => reject(new Error(`${label} not ready within 60 s:\n${text}`)), 60_000).unref();
    });
    return { child, ready: url, output: () => text, stop };
  }

  /** `mcpmesh ca init` + `mcpmesh ca serve` on a free loopback port. */
  async startCa(trustDomain: string): Promise<{ caDir: string; caUrl: string }> {
    const caDir = join(this.dir, "ca");
    const port = await freePort();
    await this.mcpmesh(["ca", "init", "--dir", caDir, "--trust-domain", trustDomain, "--url", `https://127.0.0.1:${port}`]);
    const ca = await this.start([process.execPath, BIN, "ca", "serve", "--dir", caDir], /"event":"listening","url":"([^"]+)"/, "mcpmesh ca serve");
    return { caDir, caUrl: ca.ready };
  }

  /** `mcpmesh ca token` + `mcpmesh enroll`: an identity directory for `path`. */
  async enroll(caDir: string, path: string, kind: "client" | "agent" = "client", dirName = `${path.replace(/\//g, "-")}-id`): Promise<string> {
    const idDir = join(this.dir, dirName);
    const token = (await this.mcpmesh(["ca", "token", "--dir", caDir, "--identity", path, "--kind", kind, ...(kind === "agent" ? ["--ip", "127.0.0.1"] : [])])).trim();
    await this.mcpmesh(["enroll", token, "--dir", idDir]);
    return idDir;
  }

  /**
   * Writes the example's agent.yaml into the temp dir with `overrides` applied (free ports, the real identity and
   * upstream), checks it with `mcpmesh agent check` and runs it with `mcpmesh agent run`. Returns the agent's URL.
   */
  async startAgent(exampleConfig: string, overrides: Record<string, unknown>): Promise<{ url: string; configFile: string; agent: Running }> {
    const cfg = { ...(parse(readFileSync(exampleConfig, "utf8")) as Record<string, unknown>), ...overrides, listen: `127.0.0.1:${await freePort()}` };
    const configFile = join(this.dir, "agent.yaml");
    writeFileSync(configFile, stringify(cfg));
    await this.mcpmesh(["agent", "check", "--config", configFile]);
    const agent = await this.start([process.execPath, BIN, "agent", "run", "--config", configFile], /"event":"listening","url":"([^"]+)"/, "mcpmesh agent run");
    return { url: agent.ready, configFile, agent };
  }

  /** The MCP SDK client over mTLS as the identity in `idDir`. */
  async client(url: string, idDir: string): Promise<Client> {
    const fetch = createMeshFetch(idDir);
    const client = new Client({ name: `example-${this.name}`, version: "1.0.0" });
    await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch }));
    this.defer(async () => {
      await client.close().catch(() => {});
      await fetch.close();
    });
    return client;
  }

  async close(): Promise<void> {
    const fns = this.#cleanups.splice(0).reverse();
    for (const fn of fns) await Promise.resolve().then(fn).catch(() => {});
  }

  /** Runs the example body; prints the verdict, cleans up, and sets the exit code. */
  async run(body: () => Promise<void>): Promise<void> {
    console.log(`example ${this.name} (working directory ${this.dir})`);
    try {
      await body();
    } catch (e) {
      this.#failures++;
      console.log(`  FAIL ${(e as Error).stack ?? String(e)}`);
    } finally {
      await this.close();
    }
    console.log(this.#failures === 0 ? `example ${this.name}: all checks passed` : `example ${this.name}: ${this.#failures} check(s) FAILED`);
    process.exitCode = this.#failures === 0 ? 0 : 1;
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolvePromise(port));
    });
  });
}

/** The first text content of a tool result. */
export const text = (r: unknown): string => String((r as { content?: { text?: string }[] }).content?.[0]?.text ?? "");

/** The JSON-RPC error code a rejected call threw, or "allowed" if it was not rejected. */
export async function refusal(p: Promise<unknown>): Promise<number | string> {
  try {
    const r = await p;
    return (r as { isError?: boolean }).isError ? `isError: ${text(r)}` : "allowed";
  } catch (e) {
    return (e as { code?: number }).code ?? (e as Error).message;
  }
}

/**
 * Revocation latency: from `mcpmesh ca revoke` to the revoked identity's live connections closed, with 10 agents
 * subscribed to the CA's live feed.
 *
 * Everything is a real process: `mcpmesh ca serve`, 10 × `mcpmesh agent run` (each subscribed to /v1/watch, in front
 * of the notes MCP server), and for each of N rounds the real `mcpmesh ca revoke --identity ...` CLI. Each round a
 * fresh client identity is enrolled through the CA's API and opens one mTLS connection to every agent (10 live
 * connections); the revoke runs and the time each connection is closed is taken at the client. Reported: latency from
 * the revoke command's start (includes the CLI's own start-up) and from the revocation's commit (its revoked_at in
 * the CA database) to each connection's close, p50/p99/max over all rounds × connections.
 *
 *   node --import tsx bench/revocation.ts [--quick] [--revoke-rounds 20] [--revoke-agents 10]
 *   (or BENCH_REVOKE_ROUNDS / BENCH_REVOKE_AGENTS; flag names are unique so bench/run.ts can pass its own flags)
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, type TLSSocket } from "node:tls";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { stringify } from "yaml";
import { Authority, createToken } from "../ca/authority.ts";
import { caRequest } from "../identity/ca-client.ts";
import { enroll } from "../identity/enroll.ts";
import { freePort } from "../test/helpers/ports.ts";
import { Cleanup, REPO, fmt, intSetting, percentile, startNode, type Child } from "./lib.ts";

const PASSPHRASE = "bench passphrase, not a secret";
const TRUST_DOMAIN = "bench.example";
const BIN = join(REPO, "bin", "mcpmesh.js");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function token(caDir: string, identity: string, opts: { kind?: "client" | "agent"; ips?: string[] } = {}): string {
  const { config, store } = Authority.openStore(caDir);
  try {
    return createToken(store, config, { identity, ttlMs: 600_000, ...opts }, Date.now()).token;
  } finally {
    store.close();
  }
}

function revokedAt(caDir: string, serial: string): number | null {
  const { store } = Authority.openStore(caDir);
  try {
    return store.getCert(serial)?.revokedAt ?? null;
  } finally {
    store.close();
  }
}

/** Starts an agent and resolves once it listens and is subscribed to the live feed. */
async function startAgent(configFile: string): Promise<Child> {
  let url: string | undefined;
  let fed = false;
  return startNode([BIN, "agent", "run", "--config", configFile], (line) => {
    try {
      const l = JSON.parse(line) as { event?: string; url?: string; source?: string };
      if (l.event === "listening" && typeof l.url === "string") url = l.url;
      if (l.event === "feed_connected") fed = true;
    } catch {
      return undefined;
    }
    return url && fed ? url : undefined;
  }, { env: { MCPMESH_LOG_LEVEL: "info" }, ms: 120_000 });
}

/** One mTLS connection to the agent, resolved once established; `closed` resolves with the time it closed. */
function openConnection(port: number, tls: { cert: string; key: string; ca: string }): Promise<{ socket: TLSSocket; closed: Promise<number> }> {
  return new Promise((resolveConn, reject) => {
    const socket = connect({ host: "127.0.0.1", port, ...tls, minVersion: "TLSv1.3", ALPNProtocols: ["http/1.1"] });
    const closed = new Promise<number>((r) => socket.once("close", () => r(Date.now())));
    socket.once("secureConnect", () => resolveConn({ socket, closed }));
    socket.once("error", reject);
  });
}

function runCli(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.once("exit", (code) => resolveRun({ code, out }));
  });
}

export async function run(opts: { quick?: boolean } = {}): Promise<{ title: string; markdown: string; notes?: string[] }> {
  const quick = opts.quick ?? false;
  const rounds = Math.max(1, intSetting("revoke-rounds", "BENCH_REVOKE_ROUNDS", quick ? 6 : 20));
  const agentsN = Math.max(1, intSetting("revoke-agents", "BENCH_REVOKE_AGENTS", 10));
  const cleanup = new Cleanup(15_000);
  const tmp = mkdtempSync(join(tmpdir(), "mcpmesh-bench-revoke-"));
  cleanup.add(() => rmSync(tmp, { recursive: true, force: true }));
  try {
    const caDir = join(tmp, "ca");
    const url = `https://127.0.0.1:${await freePort()}`;
    (await Authority.init({ dir: caDir, trustDomain: TRUST_DOMAIN, url, passphrase: PASSPHRASE, admins: ["rev-admin/ops"] })).close();
    const ca = await startNode([BIN, "ca", "serve", "--dir", caDir], (l) => (l.includes('"listening"') ? l : undefined), { env: { MCPMESH_CA_PASSPHRASE: PASSPHRASE, MCPMESH_LOG_LEVEL: "info" }, ms: 60_000 });
    cleanup.add(() => ca.stop());
    const upstream = await startNode(["--import", "tsx", "examples/notes-server/server.ts", "0"], (line) => /^notes MCP server on (http:\/\/127\.0\.0\.1:\d+\/mcp)$/.exec(line)?.[1]);
    cleanup.add(() => upstream.stop());

    process.stderr.write(`revocation: starting ${agentsN} agents subscribed to the CA's feed...\n`);
    const agents = await Promise.all(Array.from({ length: agentsN }, async (_, k) => {
      const dir = join(tmp, `agent-${k}`);
      await enroll(token(caDir, `rev/agent-${k}`, { kind: "agent", ips: ["127.0.0.1"] }), dir);
      const configFile = join(tmp, `agent-${k}.yaml`);
      writeFileSync(configFile, stringify({
        listen: "127.0.0.1:0",
        identity: dir,
        ca: url,
        upstream: { url: upstream.ready },
        tools: { "read-note": { access: "read" } },
        rules: [{ clients: [`spiffe://${TRUST_DOMAIN}/rev/*`], tools: ["*"] }],
        pinning: { file: join(tmp, `pins-${k}.json`) },
        audit: { file: join(tmp, `audit-${k}.log`) },
      }));
      const agent = await startAgent(configFile);
      cleanup.add(() => agent.stop());
      return { port: Number(new URL(agent.ready).port) };
    }));

    const adminDir = join(tmp, "admin");
    await enroll(token(caDir, "rev-admin/ops"), adminDir);
    const admin = { cert: readFileSync(join(adminDir, "cert.pem"), "utf8"), key: readFileSync(join(adminDir, "key.pem"), "utf8") };
    const rootsPem = readFileSync(join(caDir, "root.pem"), "utf8");

    type Method = "cli" | "api";
    const lat: Record<Method, { fromStart: number[]; fromCommit: number[]; commandMs: number[] }> = {
      cli: { fromStart: [], fromCommit: [], commandMs: [] },
      api: { fromStart: [], fromCommit: [], commandMs: [] },
    };
    let notClosed = 0;
    const revokeBy: Record<Method, (identity: string) => Promise<void>> = {
      cli: async (identity) => {
        const cli = await runCli(["ca", "revoke", "--dir", caDir, "--identity", identity, "--reason", "keyCompromise"]);
        if (cli.code !== 0) throw new Error(`mcpmesh ca revoke exited ${cli.code}: ${cli.out}`);
      },
      api: async (identity) => {
        const r = await caRequest({ baseUrl: url, method: "POST", path: "/v1/revoke", body: { identity, reason: "keyCompromise" }, ca: rootsPem, ...admin });
        if (r.status !== 200) throw new Error(`POST /v1/revoke answered ${r.status}: ${r.body.toString()}`);
      },
    };
    for (let round = 0; round < rounds; round++) {
      for (const method of ["cli", "api"] as const) {
        const identity = `rev/${method}-${round}`;
        const dir = join(tmp, `client-${method}-${round}`);
        const enrolled = await enroll(token(caDir, identity), dir);
        const tls = { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8"), ca: readFileSync(join(dir, "ca.pem"), "utf8") };
        const conns = await Promise.all(agents.map((a) => openConnection(a.port, tls)));
        // TLS 1.3: the client is done before the server has read its certificate; let every agent admit the connection.
        await sleep(500);
        const started = Date.now();
        await revokeBy[method](identity);
        const done = Date.now();
        lat[method].commandMs.push(done - started);
        const closes = await Promise.all(conns.map((c) => Promise.race([c.closed, sleep(10_000).then(() => null)])));
        const committed = revokedAt(caDir, enrolled.serial);
        if (committed === null) throw new Error(`${identity}: no revoked_at recorded`);
        for (const c of conns) c.socket.destroy();
        for (const at of closes) {
          if (at === null) {
            notClosed++;
            continue;
          }
          lat[method].fromStart.push(at - started);
          lat[method].fromCommit.push(at - committed);
        }
        process.stderr.write(`revocation: round ${round + 1}/${rounds} ${method}: command ${done - started} ms, closed ${closes.map((c) => (c === null ? "open!" : String(c - committed))).join(",")} ms after commit\n`);
      }
    }
    const stat = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return [fmt(percentile(s, 50), 0), fmt(percentile(s, 99), 0), fmt(s[s.length - 1], 0)];
    };
    const header = ["revoked with", "measured from", "p50 ms", "p99 ms", "max ms", "connections"];
    const row = (a: string, b: string, xs: number[], unit = String(xs.length)) => `| ${a} | ${b} | ${stat(xs).join(" | ")} | ${unit} |`;
    const md = [
      `${agentsN} \`mcpmesh agent run\` processes subscribed to \`mcpmesh ca serve\`'s live feed; ${rounds} rounds per method, each revoking a fresh identity that holds one live mTLS connection to every agent. \`ca revoke\` is the real CLI (a new process writing the CA database; \`ca serve\` notices its WAL change, with a 150 ms store poll as the fallback); the API is \`POST /v1/revoke\` by an admin identity over mTLS (pushed at once). Close times taken at the client; commit = the revocation's revoked_at in the CA database.`,
      "",
      "| " + header.join(" | ") + " |",
      "| --- | --- | ---: | ---: | ---: | ---: |",
      row("`mcpmesh ca revoke`", "command start", lat.cli.fromStart),
      row("`mcpmesh ca revoke`", "commit", lat.cli.fromCommit),
      row("`mcpmesh ca revoke`", "(command start to exit)", lat.cli.commandMs, `${lat.cli.commandMs.length} runs`),
      row("`POST /v1/revoke` (admin)", "request start", lat.api.fromStart),
      row("`POST /v1/revoke` (admin)", "commit", lat.api.fromCommit),
    ].join("\n");
    const notes = [notClosed ? `${notClosed} connection(s) were still open 10 s after the revoke.` : "Every connection of every revoked identity was closed."];
    return { title: "Revocation latency", markdown: md, notes };
  } finally {
    await cleanup.run();
  }
}

if (process.argv[1] && resolve(process.argv[1]) === import.meta.filename) {
  run({ quick: process.argv.includes("--quick") }).then(
    (s) => {
      console.log(`## ${s.title}\n\n${s.markdown}\n`);
      for (const note of s.notes ?? []) console.log(`- ${note}`);
    },
    (e) => {
      console.error(`bench/revocation: ${(e as Error).stack ?? String(e)}`);
      process.exitCode = 1;
    },
  );
}

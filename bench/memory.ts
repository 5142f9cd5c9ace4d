/**
 * Agent memory: resident set size at idle, and the cost of each idle mTLS connection.
 *
 *   - idle RSS: the real `mcpmesh agent run` (full default pipeline, one endpoint in front of the notes MCP server),
 *     read from /proc after start-up settles and a full GC;
 *   - per connection: separate client processes open N mTLS connections (full TLS 1.3 handshake with a client
 *     certificate each, then nothing: an established, idle connection) and hold them; (RSS_after − RSS_before) / N,
 *     both read after a full GC. `limits.maxConnections` / `maxConnectionsPerIdentity` are raised to let N in and
 *     `limits.idleTimeout` to 1h so none is closed while the others open. The same is measured, by the same method,
 *     for two bare Node servers with the same certificates and client-certificate check: `tls.createServer` (the
 *     floor for a TLS connection in Node) and `https.createServer` (plus Node's HTTP parser per connection), so the
 *     agent's own share shows side by side with what Node itself costs.
 *   - the split: each server reports process.memoryUsage() after the GC (V8 heap used, external = OpenSSL/Buffer
 *     memory Node accounts for), per connection.
 *
 * The GC is triggered from outside: each server runs with --expose-gc and a one-line --import (a data: URL, nothing
 * of the bench loaded into it) that calls gc() on SIGUSR2 and writes process.memoryUsage() to a file.
 * File descriptors: each server and holder gets its soft RLIMIT_NOFILE raised (`prlimit --pid`, util-linux; Node
 * cannot setrlimit) to what N needs, within the hard limit (`ulimit -Hn`).
 *
 *   node --import tsx bench/memory.ts [--quick] [--memory-connections 10000] [--memory-reps 1]
 *     [--memory-servers agent,tls,https] [--memory-idle-only] [--memory-settle 40]
 *   (or BENCH_MEMORY_CONNECTIONS / BENCH_MEMORY_REPS / BENCH_MEMORY_SERVERS / BENCH_MEMORY_IDLE_ONLY /
 *   BENCH_MEMORY_SETTLE); --quick: 500 connections; --memory-idle-only: idle RSS (with its anonymous / file-backed and
 *   V8 heap split on stderr) and the floor rows, no connections; --memory-settle S: the agent's idle RSS is read again
 *   S seconds after the first reading with no GC forced (V8's memory reducer has run by then; 0 skips it). One start of
 *   each server by default: 10,000 handshakes take 1.5–4 min per server on the 2-core reference machine.
 *   BENCH_MEMORY_NODE_FLAGS="--max-semi-space-size=1" ... to try V8 heap flags on the agent
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer as createTlsServer, type TLSSocket } from "node:tls";
import { createServer as createHttpsServer } from "node:https";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { stringify } from "yaml";
import { serverTlsOptions } from "../agent/tls-gate.ts";
import type { Identity } from "../identity/store.ts";
import { Cleanup, REPO, flag, fmt, intSetting, startBenchMesh, startNode } from "./lib.ts";

/** On SIGUSR2: a full GC, then process.memoryUsage() and V8's heap spaces into $MCPMESH_BENCH_MEMORY_FILE. */
const GC_HOOK = "data:text/javascript," + encodeURIComponent(
  "const fs=process.getBuiltinModule('node:fs'),v8=process.getBuiltinModule('node:v8');process.on('SIGUSR2',()=>{globalThis.gc();const f=process.env.MCPMESH_BENCH_MEMORY_FILE;if(f)fs.writeFileSync(f,JSON.stringify({...process.memoryUsage(),spaces:v8.getHeapSpaceStatistics().map(s=>[s.space_name,s.physical_space_size,s.space_used_size])}))})",
);

/** Raises a running process's soft fd limit to `n` (Node cannot setrlimit); fails if the hard limit is lower. */
function raiseFdLimit(pid: number, n: number): void {
  const hard = Number(execFileSync("prlimit", ["--pid", String(pid), "--nofile", "--noheadings", "--raw", "--output=HARD"], { encoding: "utf8" }).trim());
  if (Number.isFinite(hard) && hard < n) throw new Error(`the hard fd limit is ${hard}, below the ${n} this run needs: raise it (ulimit -Hn) or pass --memory-connections`);
  execFileSync("prlimit", ["--pid", String(pid), `--nofile=${n}:${Number.isFinite(hard) ? hard : n}`]);
}

/** Open file descriptors of a process: its sockets, to count the connections it really holds. */
function fds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident memory by kind (KB, /proc/PID/smaps_rollup): anonymous (heaps: V8's and malloc's) and file-backed (code). */
function rssSplit(pid: number): { anon: number; file: number } {
  const t = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(t)?.[1] ?? NaN);
  const anon = kb("Anonymous");
  return { anon, file: kb("Rss") - anon };
}

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Usage {
  /** KB, from /proc. */
  rss: number;
  /** KB, process.memoryUsage() after the GC. */
  heapUsed: number;
  /** KB, V8 heap committed (what of it the RSS holds, garbage room included). */
  heapTotal: number;
  external: number;
  /** V8 heap spaces after the GC: [name, committed bytes, used bytes]. */
  spaces: Array<[string, number, number]>;
}

/** Two full GCs a moment apart (the second collects what the first's finalizers released), then RSS and the split. */
async function usageAfterGc(pid: number, file: string): Promise<Usage> {
  for (let i = 0; i < 2; i++) {
    process.kill(pid, "SIGUSR2");
    await sleep(700);
  }
  const u = existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as { heapUsed: number; heapTotal: number; external: number; spaces: Usage["spaces"] }) : { heapUsed: NaN, heapTotal: NaN, external: NaN, spaces: [] };
  return { rss: rssKb(pid), heapUsed: u.heapUsed / 1024, heapTotal: u.heapTotal / 1024, external: u.external / 1024, spaces: u.spaces };
}

// ---------------------------------------------------------------------------------------------------------------
// The connection holder (child process): opens N connections, prints "held N", keeps them until stdin ends.

interface HoldJob {
  port: number;
  n: number;
  parallel: number;
  cert: string;
  key: string;
  ca: string;
}

async function hold(job: HoldJob): Promise<void> {
  const sockets: TLSSocket[] = [];
  let failed = 0;
  let firstError: string | undefined;
  let next = 0;
  let closedEarly = 0;
  const one = () =>
    new Promise<void>((done) => {
      const s = connect({ host: "127.0.0.1", port: job.port, cert: job.cert, key: job.key, ca: job.ca, minVersion: "TLSv1.3", ALPNProtocols: ["http/1.1"] });
      s.once("secureConnect", () => {
        sockets.push(s);
        s.resume(); // read, so a close from the server's side is seen
        s.once("close", () => closedEarly++);
        done();
      });
      s.once("error", (e) => {
        failed++;
        firstError ??= e.message;
        done();
      });
    });
  await Promise.all(Array.from({ length: job.parallel }, async () => {
    while (next < job.n) {
      next++;
      await one();
    }
  }));
  // A moment for the server to finish its side (the gate runs on secureConnection) and to refuse any over a limit.
  await sleep(500);
  process.stdout.write(`held ${sockets.length - closedEarly} failed ${failed} closed ${closedEarly}${firstError ? ` first ${firstError}` : ""}\n`);
  process.stdin.resume();
  process.stdin.once("end", () => {
    for (const s of sockets) s.destroy();
    process.exit(0);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The bare comparison servers (child process): the agent's certificate and roots, a client certificate required and
// verified, nothing else; connections are kept until the client goes. Prints "listening PORT".

interface BareJob {
  kind: "tls" | "https";
  cert: string;
  key: string;
  ca: string;
}

function bare(job: BareJob): void {
  // The agent's own TLS options (no session tickets, its ciphers and curves), its certificate and roots; Node rejects
  // a client without a valid certificate itself here (the agent's gate does more, in JavaScript, on top).
  const agentTls = serverTlsOptions({ certPem: job.cert, keyPem: job.key } as Identity, [job.ca], "TLSv1.3");
  const opts = { ...agentTls, rejectUnauthorized: true, ALPNProtocols: ["http/1.1"] };
  const server =
    job.kind === "tls"
      ? createTlsServer(opts, (socket) => socket.on("error", () => {}))
      : createHttpsServer(opts, (_req, res) => res.end());
  if (job.kind === "https") {
    const s = server as ReturnType<typeof createHttpsServer>;
    s.headersTimeout = s.keepAliveTimeout = 3_600_000;
    s.requestTimeout = 0;
  }
  server.maxConnections = Infinity;
  server.listen(0, "127.0.0.1", () => process.stdout.write(`listening ${(server.address() as { port: number }).port}\n`));
}

// ---------------------------------------------------------------------------------------------------------------

const HOLDER_MAX = 2500;

/** Opens `n` connections from ceil(n / 2500) holder processes at once; resolves when every one has reported. */
async function startHolders(job: HoldJob, cleanup: Cleanup): Promise<{ children: ChildProcess[]; held: number; line: string }> {
  const count = Math.ceil(job.n / HOLDER_MAX);
  const parts = Array.from({ length: count }, (_, i) => Math.floor(job.n / count) + (i < job.n % count ? 1 : 0));
  const started = await Promise.all(parts.map((n) => startHolder({ ...job, n, parallel: Math.max(4, Math.ceil(job.parallel / count)) }, cleanup)));
  const sum = (re: RegExp) => started.reduce((a, h) => a + Number(re.exec(h.line)?.[1] ?? 0), 0);
  const firsts = started.map((h) => / first (.*)$/.exec(h.line)?.[1]).filter(Boolean);
  const line = `held ${sum(/^held (\d+)/)} failed ${sum(/ failed (\d+)/)} closed ${sum(/ closed (\d+)/)} (${count} holder process${count === 1 ? "" : "es"})${firsts.length ? ` first error: ${firsts[0]}` : ""}`;
  return { children: started.map((h) => h.child), held: sum(/^held (\d+)/), line };
}

async function startHolder(job: HoldJob, cleanup: Cleanup): Promise<{ child: ChildProcess; line: string }> {
  const child = spawn(process.execPath, ["--import", "tsx", import.meta.filename, "--hold-worker", JSON.stringify(job)], { cwd: REPO, stdio: ["pipe", "pipe", "pipe"] });
  cleanup.add(() => void (child.exitCode === null && child.kill("SIGKILL")));
  raiseFdLimit(child.pid!, job.n + 256);
  let err = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (err = (err + d).slice(-4000)));
  const line = await new Promise<string>((resolveLine, reject) => {
    let out = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      const m = /^held .*$/m.exec(out);
      if (m) resolveLine(m[0]);
    });
    child.once("exit", (code) => reject(new Error(`connection holder exited ${code}: ${err}`)));
  });
  return { child, line };
}

const range = (xs: number[], d = 1) => (fmt(Math.min(...xs), d) === fmt(Math.max(...xs), d) ? fmt(xs[0], d) : `${fmt(Math.min(...xs), d)}–${fmt(Math.max(...xs), d)}`);

type ServerKind = "agent" | "tls" | "https";
const SERVER_LABEL: Record<ServerKind, string> = {
  agent: "mcpmesh agent (full default pipeline)",
  https: "bare Node `https.createServer`, mTLS, no handler work",
  tls: "bare Node `tls.createServer`, mTLS (the Node floor)",
};

interface Sample {
  idleMb: number;
  /** RSS `settle` seconds after start-up, no GC forced (agent only). */
  settledMb: number;
  live: number;
  perConnKb: number;
  heapKb: number;
  heapTotalKb: number;
  externalKb: number;
  line: string;
}

export async function run(opts: { quick?: boolean; idleOnly?: boolean } = {}): Promise<{ title: string; markdown: string; notes?: string[] }> {
  const quick = opts.quick ?? false;
  const n = Math.max(1, intSetting("memory-connections", "BENCH_MEMORY_CONNECTIONS", quick ? 500 : 10_000));
  const reps = Math.max(1, intSetting("memory-reps", "BENCH_MEMORY_REPS", 1));
  const idleOnly = opts.idleOnly ?? flag("memory-idle-only", "BENCH_MEMORY_IDLE_ONLY");
  const settle = intSetting("memory-settle", "BENCH_MEMORY_SETTLE", 40);
  const serversArg = process.argv.find((a, i) => process.argv[i - 1] === "--memory-servers") ?? process.argv.find((a) => a.startsWith("--memory-servers="))?.split("=")[1] ?? process.env.BENCH_MEMORY_SERVERS ?? "agent,https,tls";
  const kinds = serversArg.split(",").map((k) => k.trim()).filter(Boolean) as ServerKind[];
  for (const k of kinds) if (!(k in SERVER_LABEL)) throw new Error(`--memory-servers: unknown server "${k}" (agent, https, tls)`);
  const cleanup = new Cleanup(15_000);
  try {
    const { tmp, agentDir, clientDir, upstream } = await startBenchMesh(cleanup, "mcpmesh-bench-mem-");
    const configFile = join(tmp, "agent.yaml");
    writeFileSync(configFile, stringify({
      listen: "127.0.0.1:0",
      identity: agentDir,
      upstream: { url: upstream.ready },
      tools: { "read-note": { access: "read" } },
      rules: [{ clients: ["spiffe://example.org/bench/*"], tools: ["*"] }],
      pinning: { file: join(tmp, "pins.json") },
      audit: { file: join(tmp, "audit.log") },
      // Held connections are idle on purpose: none may be closed while the others are still opening.
      limits: { maxConnections: n + 100, maxConnectionsPerIdentity: n + 100, idleTimeout: "1h" },
    }));
    const tls = { cert: readFileSync(join(clientDir, "cert.pem"), "utf8"), key: readFileSync(join(clientDir, "key.pem"), "utf8"), ca: readFileSync(join(clientDir, "ca.pem"), "utf8") };
    const serverTls = { cert: readFileSync(join(agentDir, "cert.pem"), "utf8"), key: readFileSync(join(agentDir, "key.pem"), "utf8"), ca: readFileSync(join(agentDir, "ca.pem"), "utf8") };
    const samples: Record<string, Sample[]> = {};
    const memFile = join(tmp, "memory-usage.json");
    // BENCH_MEMORY_NODE_FLAGS: extra node flags for the agent (to try V8 heap settings), space-separated.
    const extra = (process.env.BENCH_MEMORY_NODE_FLAGS ?? "").split(" ").filter(Boolean);
    const ready = (line: string) => {
      if (line.startsWith("listening ")) return `https://127.0.0.1:${line.slice(10).trim()}/`;
      try {
        const l = JSON.parse(line) as { event?: string; url?: string };
        return l.event === "listening" && typeof l.url === "string" ? l.url : undefined;
      } catch {
        return undefined;
      }
    };
    for (let rep = 0; rep < reps; rep++) {
      for (const kind of kinds) {
        const args = kind === "agent"
          ? [...extra, "--expose-gc", "--import", GC_HOOK, "bin/mcpmesh.js", "agent", "run", "--config", configFile]
          : ["--expose-gc", "--import", GC_HOOK, "--import", "tsx", "bench/memory.ts", "--bare-worker", JSON.stringify({ kind, ...serverTls })];
        const server = await startNode(args, ready, { env: { MCPMESH_LOG_LEVEL: "info", MCPMESH_BENCH_MEMORY_FILE: memFile }, ms: 60_000 });
        try {
          const pid = server.child.pid!;
          raiseFdLimit(pid, n + 1024);
          const port = Number(new URL(server.ready).port);
          await sleep(2000);
          const before = await usageAfterGc(pid, memFile);
          const fdsBefore = fds(pid);
          const split = rssSplit(pid);
          const spaces = before.spaces.map(([name, committed, used]) => `${name.replace(/_space$/, "")} ${fmt(committed / 1048576, 1)}/${fmt(used / 1048576, 1)}`).join(", ");
          process.stderr.write(`memory: rep ${rep + 1}/${reps} ${kind}: idle RSS ${fmt(before.rss / 1024)} MB (anonymous ${fmt(split.anon / 1024, 1)} MB, file-backed ${fmt(split.file / 1024, 1)} MB; V8 heap committed ${fmt(before.heapTotal / 1024, 1)} MB, used ${fmt(before.heapUsed / 1024, 1)} MB, external ${fmt(before.external / 1024, 1)} MB; spaces committed/used MB: ${spaces})\n`);
          // V8 keeps the young generation it grew while start-up allocated (up to 16 MB, committed and empty after the
          // GC above) until its memory reducer runs, some 10–30 s into a quiet period; what an idle agent settles at
          // is read after `settle` seconds with no GC forced from outside.
          let settledMb = NaN;
          if (kind === "agent" && settle > 0) {
            await sleep(settle * 1000);
            const settled = rssSplit(pid);
            settledMb = (settled.anon + settled.file) / 1024;
            process.stderr.write(`memory: rep ${rep + 1}/${reps} agent: idle RSS ${settle} s later ${fmt(settledMb)} MB (anonymous ${fmt(settled.anon / 1024, 1)} MB, file-backed ${fmt(settled.file / 1024, 1)} MB)\n`);
          }
          if (idleOnly) {
            (samples[kind] ??= []).push({ idleMb: before.rss / 1024, settledMb, live: NaN, perConnKb: NaN, heapKb: NaN, heapTotalKb: NaN, externalKb: NaN, line: `${kind}: idle only` });
            continue;
          }
          process.stderr.write(`memory: rep ${rep + 1}/${reps} ${kind}: opening ${n} mTLS connections...\n`);
          const t0 = Date.now();
          const holders = await startHolders({ port, n, parallel: 64, ...tls }, cleanup);
          try {
            const after = await usageAfterGc(pid, memFile);
            // Connections the server really holds now: its sockets.
            const live = Math.max(1, fds(pid) - fdsBefore);
            const s: Sample = {
              idleMb: before.rss / 1024,
              settledMb,
              live,
              perConnKb: (after.rss - before.rss) / live,
              heapKb: (after.heapUsed - before.heapUsed) / live,
              heapTotalKb: (after.heapTotal - before.heapTotal) / live,
              externalKb: (after.external - before.external) / live,
              line: `${kind}: ${holders.line}, ${live} live at the server when measured, opened in ${fmt((Date.now() - t0) / 1000)} s`,
            };
            (samples[kind] ??= []).push(s);
            process.stderr.write(`memory: rep ${rep + 1}/${reps} ${s.line}; RSS ${fmt(after.rss / 1024)} MB → ${fmt(s.perConnKb)} KB per connection (V8 heap used ${fmt(s.heapKb)} KB, committed ${fmt(s.heapTotalKb)} KB, external ${fmt(s.externalKb)} KB)\n`);
          } finally {
            for (const h of holders.children) h.stdin!.end();
            await Promise.all(holders.children.map((h) => new Promise((r) => (h.exitCode === null ? h.once("exit", r) : r(undefined)))));
          }
        } finally {
          await server.stop();
        }
      }
    }
    // What idle RSS is made of: Node with the modules every TLS/HTTP server loads, and Node with the agent's whole
    // module graph loaded (its code and libraries; compiled dist/, as bin/mcpmesh.js runs it) but nothing started.
    const floor = (imports: string[]) => {
      const script = `${imports.map((m) => `await import(${JSON.stringify(m)});`).join(" ")} for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setTimeout(r, 300)); } console.log(process.memoryUsage().rss);`;
      const out = execFileSync(process.execPath, ["--expose-gc", "--input-type=module", "-e", script], { cwd: REPO, encoding: "utf8" });
      return Number(out.trim()) / 1048576;
    };
    const nodeMods = ["node:https", "node:http", "node:tls", "node:net", "node:crypto", "node:stream", "node:zlib", "node:worker_threads"];
    const floorRows: string[][] = [["Node.js alone, its TLS/HTTP modules loaded (after a full GC)", `${fmt(floor(nodeMods), 1)} MB`, "", "", "", ""]];
    const agentJs = join(REPO, "dist", "agent", "agent.js");
    if (existsSync(agentJs)) floorRows.push(["Node.js with the agent's code and libraries loaded, nothing started (after a full GC)", `${fmt(floor([...nodeMods, pathToFileURL(agentJs).href]), 1)} MB`, "", "", "", ""]);
    const col = (k: string, f: (s: Sample) => number, d = 1) => range(samples[k].map(f), d);
    const rows: string[][] = [];
    if (samples.agent) rows.push(["agent RSS at idle (2 s after start-up, after a full GC)", `${col("agent", (s) => s.idleMb)} MB`, "", "", "", "≤ 60 MB"]);
    if (samples.agent && settle > 0) rows.push([`agent RSS at idle, settled (${settle} s later, no GC forced)`, `${col("agent", (s) => s.settledMb)} MB`, "", "", "", "≤ 60 MB"]);
    rows.push(...floorRows);
    for (const k of kinds) {
      if (!samples[k] || idleOnly) continue;
      rows.push([`RSS per idle mTLS connection, ${SERVER_LABEL[k]} (${col(k, (s) => s.live, 0)} held)`, `${col(k, (s) => s.perConnKb)} KB`, `${col(k, (s) => s.heapKb)} KB`, `${col(k, (s) => s.heapTotalKb)} KB`, `${col(k, (s) => s.externalKb)} KB`, k === "agent" ? "≤ 30 KB" : ""]);
    }
    const md = [
      idleOnly ? `${reps} start(s) of the agent; idle RSS only (no connections opened).` : `${reps} start(s) of each server; ${n} connections from separate processes, each a full TLS 1.3 handshake with a client certificate and then idle. (RSS after − RSS before) / connections held, both after a full GC; the V8 heap (used, and committed: what the RSS holds of it, room for garbage included) and external (Buffer memory Node accounts for; OpenSSL's is not in it) columns are process.memoryUsage() deltas per connection, parts of the RSS figure; min–max over the starts. The bare Node servers use the same certificates and the agent's TLS options (no session tickets) and require a valid client certificate.`,
      "",
      "| measure | RSS | V8 heap used | V8 heap committed | external | target |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
      ...rows.map((r) => "| " + r.join(" | ") + " |"),
    ].join("\n");
    const notes = idleOnly ? [] : [
      `Connection holder reports: ${Object.values(samples).flat().map((s) => s.line).join("; ")}.`,
      "The agent runs with `limits.idleTimeout: 1h` here (default 10s), so no held connection is closed while the rest open.",
    ];
    const mean = (k: string) => samples[k].reduce((a, x) => a + x.perConnKb, 0) / samples[k].length;
    if (samples.agent && samples.tls && !idleOnly) {
      notes.push(`An idle mTLS connection costs ${fmt(mean("tls"))} KB in a bare Node TLS server with the agent's TLS options (its TLS socket and OpenSSL's per-connection state, the peer's certificate chain included)${samples.https ? `, ${fmt(mean("https"))} KB with Node's HTTP server on top` : ""}; the agent's own share is the rest of its ${fmt(mean("agent"))} KB. A target below the bare TLS row is out of reach for a Node.js agent.`);
    }
    if (floorRows.length > 1) notes.push("Idle RSS is mostly code: the agent's own modules and the libraries it is built on (the ASN.1 layer of @peculiar, ajv, undici's pool, pino, yaml; ws only once WebSocket or the revocation feed is used, prom-client only with an admin listener) loaded into Node.js, before any listener or connection exists; the agent's running state is the difference between its idle row and the row with its modules loaded.");
    return { title: "Agent memory", markdown: md, notes };
  } finally {
    await cleanup.run();
  }
}

if (process.argv[1] && resolve(process.argv[1]) === import.meta.filename) {
  const w = process.argv.indexOf("--hold-worker");
  const b = process.argv.indexOf("--bare-worker");
  if (w >= 0) {
    hold(JSON.parse(process.argv[w + 1]) as HoldJob).catch((e) => {
      console.error(e);
      process.exitCode = 1;
    });
  } else if (b >= 0) {
    bare(JSON.parse(process.argv[b + 1]) as BareJob);
  } else {
    run({ quick: process.argv.includes("--quick") }).then(
      (s) => {
        console.log(`## ${s.title}\n\n${s.markdown}\n`);
        for (const note of s.notes ?? []) console.log(`- ${note}`);
      },
      (e) => {
        console.error(`bench/memory: ${(e as Error).stack ?? String(e)}`);
        process.exitCode = 1;
      },
    );
  }
}

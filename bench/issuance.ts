/**
 * Issuance throughput of the mesh CA through its HTTPS API: a real `mcpmesh ca serve` process, and a load generator
 * in a separate process (this file run with --load-worker) presenting pre-made tokens and CSRs. Paths measured:
 *
 *   - enroll, keep-alive: C keep-alive TLS connections, each certificate a POST /v1/enroll with its own one-time token;
 *   - renew, keep-alive mTLS: C connections authenticated with a client certificate, POST /v1/renew over them;
 *   - renew, new mTLS connection per certificate: what each renewing client normally does (a full TLS 1.3 handshake
 *     with a client certificate, no resumption: the CA issues no tickets).
 *
 * Reported per path: certificates/s, p50/p99 latency, CA CPU per certificate (from /proc), errors, min–max over the
 * repetitions. Every certificate of every run is checked afterwards: `openssl verify` of a sample against the CA's
 * chain and the database count of what was issued.
 *
 *   node --import tsx bench/issuance.ts [--quick] [--issue-n 4000] [--issue-reps 3] [--issue-connections 64] [--issue-signing-threads N]
 *   (or BENCH_ISSUE_N / BENCH_ISSUE_REPS / BENCH_ISSUE_CONNECTIONS; BENCH_ISSUE_PROFILE=DIR runs the CA under --cpu-prof)
 */
import { spawn } from "node:child_process";
import { generateKeyPairSync, sign } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { ConnectionOptions } from "node:tls";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Authority, createToken } from "../ca/authority.ts";
import { bitString, oid, seq, tlv } from "../ca/der.ts";
import { freePort } from "../test/helpers/ports.ts";
import { splitPemCertificates } from "../lib/x509.ts";
import { Conn, open, requestBytes, type Response } from "./loadgen.ts";
import { Cleanup, REPO, fmt, intSetting, percentile, processCpuMs, startNode } from "./lib.ts";

const PASSPHRASE = "bench passphrase, not a secret";

/** A P-256 key and a minimal PKCS#10 request for it, made without the ASN.1 library so preparation stays quick. */
function keyAndCsr(): { keyPem: string; csrPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cri = seq(tlv(0x02, Buffer.from([0])), seq(), publicKey.export({ type: "spki", format: "der" }), Buffer.from([0xa0, 0x00]));
  const sig = sign("sha256", cri, { key: privateKey, dsaEncoding: "der" });
  const der = seq(cri, seq(oid("1.2.840.10045.4.3.2")), bitString(sig));
  const csrPem = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64").replace(/.{1,64}/g, "$&\n")}-----END CERTIFICATE REQUEST-----\n`;
  return { keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string, csrPem };
}

// ---------------------------------------------------------------------------------------------------------------
// The load generator (child process).

interface WorkerJob {
  url: string;
  rootsPem: string;
  path: "/v1/enroll" | "/v1/renew";
  /** One body per request (enroll: token + csr; renew: csr). */
  bodies: unknown[];
  /** For renew: the client certificates to present, request i uses clients[i % clients.length]. */
  clients?: { certPem: string; keyPem: string }[];
  connections: number;
  keepAlive: boolean;
  timeoutMs: number;
}

export interface WorkerResult {
  ok: number;
  errors: number;
  firstError?: string;
  wallMs: number;
  latencies: number[];
  /** The issued chain (leaf + intermediate) of request i, or null if it failed; for checking afterwards. */
  chains: (string | null)[];
  /** CPU the load generator spent during the run (user + system, ms). */
  cpuMs: number;
}

/**
 * The load generator: raw TLS sockets with prebuilt request bytes and bench/loadgen.ts's minimal HTTP/1.1 parser
 * (Node's https client cost about as much CPU per certificate as the CA's main thread, on the cores the CA shares).
 * Keep-alive: connection j presents clients[j % clients.length] and sends its requests one at a time. Otherwise each
 * request opens its own connection (a full handshake; the CA issues no session tickets) and closes it afterwards.
 * Response bodies are kept as bytes and parsed after the clock stops.
 */
async function worker(job: WorkerJob): Promise<WorkerResult> {
  const base = new URL(job.url);
  const tlsFor = (c: { certPem: string; keyPem: string } | undefined): ConnectionOptions => ({ ca: job.rootsPem, cert: c?.certPem, key: c?.keyPem, minVersion: "TLSv1.3", ALPNProtocols: ["http/1.1"] });
  const requests = job.bodies.map((b) => requestBytes(base, "POST", job.path, { "content-type": "application/json" }, JSON.stringify(b)));
  const latencies: number[] = [];
  const bodies: (Buffer | null)[] = job.bodies.map(() => null);
  let errors = 0;
  let firstError: string | undefined;
  const fail = (m: string) => {
    errors++;
    firstError ??= m;
  };
  let next = 0;
  const deadline = (p: Promise<Response>, conn: Conn) => {
    const timer = setTimeout(() => conn.socket.destroy(new Error("timed out")), job.timeoutMs);
    return p.finally(() => clearTimeout(timer));
  };
  const send = async (conn: Conn, i: number) => {
    const t = performance.now();
    const r = await deadline(conn.request(requests[i]), conn);
    if (r.status === 201) {
      latencies.push(performance.now() - t);
      bodies[i] = r.body;
    } else {
      fail(`${r.status}: ${r.body.toString("utf8").slice(0, 200)}`);
    }
  };
  const start = performance.now();
  const cpu0 = process.cpuUsage();
  await Promise.all(Array.from({ length: Math.min(job.connections, requests.length) }, async (_, j) => {
    const client = job.clients?.[j % job.clients.length];
    let conn: Conn | undefined;
    while (next < requests.length) {
      const i = next++;
      try {
        if (!job.keepAlive) {
          const c = new Conn(await open(base, tlsFor(job.clients?.[i % job.clients.length])));
          try {
            await send(c, i);
          } finally {
            c.socket.destroy();
          }
          continue;
        }
        conn ??= new Conn(await open(base, tlsFor(client)));
        await send(conn, i);
      } catch (e) {
        fail((e as Error).message);
        conn?.socket.destroy();
        conn = undefined;
      }
    }
    conn?.socket.end();
  }));
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  const chains = bodies.map((b) => (b ? (JSON.parse(b.toString("utf8")) as { certificate: string }).certificate : null));
  return { ok: latencies.length, errors, firstError, wallMs, latencies, chains, cpuMs: (cpu.user + cpu.system) / 1000 };
}

// ---------------------------------------------------------------------------------------------------------------
// The bench (parent).

interface PathResult {
  name: string;
  perSecond: number;
  p50: number;
  p99: number;
  cpuUsPerCert: number;
  mainUsPerCert: number;
  loadUsPerCert: number;
  errors: number;
  n: number;
}

function runWorker(job: WorkerJob, dir: string, cleanup: Cleanup): Promise<WorkerResult> {
  const jobFile = join(dir, `job-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(jobFile, JSON.stringify(job));
  return new Promise((resolveResult, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", import.meta.filename, "--load-worker", jobFile], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    cleanup.add(() => void (child.exitCode === null && child.kill("SIGKILL")));
    let out = "";
    let err = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
    child.once("exit", (code) => {
      rmSync(jobFile, { force: true });
      if (code !== 0) return reject(new Error(`load worker exited ${code}: ${err.slice(-2000)}`));
      try {
        resolveResult(JSON.parse(out) as WorkerResult);
      } catch (e) {
        reject(new Error(`load worker printed no result: ${(e as Error).message}\n${err.slice(-2000)}`));
      }
    });
  });
}

/** Makes `n` one-time tokens in one transaction (token creation is not what is measured). */
function makeTokens(caDir: string, n: number, prefix: string): string[] {
  const { config, store } = Authority.openStore(caDir);
  try {
    return store.transaction(() => Array.from({ length: n }, (_, i) => createToken(store, config, { identity: `bench/${prefix}-${i}`, ttlMs: 3_600_000 }, Date.now()).token));
  } finally {
    store.close();
  }
}

function issuedCount(caDir: string): number {
  const { store } = Authority.openStore(caDir);
  try {
    return store.listCerts().length;
  } finally {
    store.close();
  }
}

/** `openssl verify` of a sample of issued chains (purpose sslclient) and the leaf profile's key fields. */
function checkSample(chains: string[], rootsFile: string, work: string, sample: number): number {
  const step = Math.max(1, Math.floor(chains.length / sample));
  let checked = 0;
  for (let i = 0; i < chains.length; i += step) {
    const [leaf, int] = splitPemCertificates(chains[i]);
    writeFileSync(join(work, "leaf.pem"), leaf);
    writeFileSync(join(work, "int.pem"), int);
    const v = execFileSync("openssl", ["verify", "-purpose", "sslclient", "-CAfile", rootsFile, "-untrusted", join(work, "int.pem"), join(work, "leaf.pem")], { encoding: "utf8" });
    if (!/: OK\n$/.test(v)) throw new Error(`openssl verify: ${v}`);
    const text = execFileSync("openssl", ["x509", "-noout", "-text", "-in", join(work, "leaf.pem")], { encoding: "utf8" });
    for (const re of [/Subject: \n/, /Basic Constraints: critical\n\s+CA:FALSE/, /Key Usage: critical\n\s+Digital Signature\n/, /Extended Key Usage: \n\s+TLS Web Client Authentication\n/, /Subject Alternative Name: critical\n\s+URI:spiffe:\/\/bench\.example\/bench\/[^,\n]+\n/]) {
      if (!re.test(text)) throw new Error(`issued certificate lacks ${re}:\n${text}`);
    }
    checked++;
  }
  return checked;
}

function summarize(name: string, r: WorkerResult, caCpuMs: number, mainCpuMs: number): PathResult {
  const sorted = [...r.latencies].sort((a, b) => a - b);
  const per = (ms: number) => (ms * 1000) / Math.max(1, r.ok);
  return { name, perSecond: r.ok / (r.wallMs / 1000), p50: percentile(sorted, 50), p99: percentile(sorted, 99), cpuUsPerCert: per(caCpuMs), mainUsPerCert: per(mainCpuMs), loadUsPerCert: per(r.cpuMs), errors: r.errors, n: r.ok + r.errors };
}

const range = (xs: number[], d = 0) => (xs.length === 1 || fmt(Math.min(...xs), d) === fmt(Math.max(...xs), d) ? fmt(xs[0], d) : `${fmt(Math.min(...xs), d)}–${fmt(Math.max(...xs), d)}`);

export async function run(opts: { quick?: boolean } = {}): Promise<{ title: string; markdown: string; notes?: string[] }> {
  const quick = opts.quick ?? false;
  const n = intSetting("issue-n", "BENCH_ISSUE_N", quick ? 1000 : 4000);
  const reps = Math.max(1, intSetting("issue-reps", "BENCH_ISSUE_REPS", quick ? 1 : 3));
  const connections = Math.max(1, intSetting("issue-connections", "BENCH_ISSUE_CONNECTIONS", 64));
  // -1: `ca serve`'s default (cores − 1, 1 to 4 signing threads); 0: CSR checks and signing on the main thread.
  const signingThreads = intSetting("issue-signing-threads", "BENCH_ISSUE_SIGNING_THREADS", -1);
  const newConnN = Math.max(50, Math.floor(n / 4));
  const cleanup = new Cleanup();
  const tmp = mkdtempSync(join(tmpdir(), "mcpmesh-bench-issue-"));
  cleanup.add(() => rmSync(tmp, { recursive: true, force: true }));
  try {
    const caDir = join(tmp, "ca");
    const port = await freePort();
    const url = `https://127.0.0.1:${port}`;
    (await Authority.init({ dir: caDir, trustDomain: "bench.example", url, passphrase: PASSPHRASE })).close();
    // BENCH_ISSUE_PROFILE=DIR: the CA runs under --cpu-prof and leaves its profile in DIR.
    const profile = process.env.BENCH_ISSUE_PROFILE ? ["--cpu-prof", "--cpu-prof-dir", process.env.BENCH_ISSUE_PROFILE] : [];
    const server = await startNode([...profile, join(REPO, "bin", "mcpmesh.js"), "ca", "serve", "--dir", caDir, ...(signingThreads >= 0 ? ["--signing-threads", String(signingThreads)] : [])], (l) => (l.includes('"listening"') ? l : undefined), { env: { MCPMESH_CA_PASSPHRASE: PASSPHRASE, MCPMESH_LOG_LEVEL: "info" }, ms: 60_000 });
    cleanup.add(() => server.stop());
    const caPid = server.child.pid!;
    const rootsPem = readFileSync(join(caDir, "root.pem"), "utf8");
    const rootsFile = join(caDir, "root.pem");

    // Renewing clients: enrolled through the API once, then each renews many times with a fresh key.
    process.stderr.write(`issuance: enrolling ${connections} renewing clients...\n`);
    const clientTokens = makeTokens(caDir, connections, "renewer");
    const clientKeys = clientTokens.map(() => keyAndCsr());
    const enrolled = await runWorker({ url, rootsPem, path: "/v1/enroll", bodies: clientTokens.map((token, i) => ({ token, csr: clientKeys[i].csrPem })), connections: 8, keepAlive: true, timeoutMs: 60_000 }, tmp, cleanup);
    if (enrolled.ok !== connections) throw new Error(`enrolling the renewing clients: ${enrolled.errors} errors (${enrolled.firstError})`);
    const clients = enrolled.chains.map((certPem, i) => ({ certPem: certPem!, keyPem: clientKeys[i].keyPem }));

    const results: Record<string, PathResult[]> = { enroll: [], renewKeepAlive: [], renewNewConn: [] };
    const allChains: string[] = [];
    let expected = issuedCount(caDir);
    const measure = async (name: string, job: WorkerJob) => {
      const cpu0 = processCpuMs(caPid)!;
      const main0 = processCpuMs(caPid, caPid)!;
      const r = await runWorker(job, tmp, cleanup);
      const cpu1 = processCpuMs(caPid)!;
      const main1 = processCpuMs(caPid, caPid)!;
      if (r.errors) process.stderr.write(`issuance: ${name}: ${r.errors} errors, first: ${r.firstError}\n`);
      expected += r.ok;
      for (const c of r.chains) if (c) allChains.push(c);
      return summarize(name, r, cpu1 - cpu0, main1 - main0);
    };
    // Warm-up (JIT, SQLite page cache), not reported.
    await measure("warm-up", { url, rootsPem, path: "/v1/enroll", bodies: makeTokens(caDir, 300, "warm").map((token) => ({ token, csr: keyAndCsr().csrPem })), connections, keepAlive: true, timeoutMs: 60_000 });
    for (let rep = 0; rep < reps; rep++) {
      process.stderr.write(`issuance: rep ${rep + 1}/${reps}: preparing ${n} tokens and CSRs...\n`);
      const enrollBodies = makeTokens(caDir, n, `r${rep}`).map((token) => ({ token, csr: keyAndCsr().csrPem }));
      const renewBodies = Array.from({ length: n }, () => ({ csr: keyAndCsr().csrPem }));
      const newConnBodies = renewBodies.slice(0, newConnN);
      process.stderr.write(`issuance: rep ${rep + 1}/${reps}: ${n} enrollments, ${n} keep-alive renewals, ${newConnN} renewals on new connections (${connections} in flight)\n`);
      results.enroll.push(await measure("enroll", { url, rootsPem, path: "/v1/enroll", bodies: enrollBodies, connections, keepAlive: true, timeoutMs: 120_000 }));
      results.renewKeepAlive.push(await measure("renew", { url, rootsPem, path: "/v1/renew", bodies: renewBodies, clients, connections, keepAlive: true, timeoutMs: 120_000 }));
      results.renewNewConn.push(await measure("renew-newconn", { url, rootsPem, path: "/v1/renew", bodies: newConnBodies, clients, connections, keepAlive: false, timeoutMs: 120_000 }));
    }
    const inDb = issuedCount(caDir);
    if (inDb !== expected) throw new Error(`the CA recorded ${inDb} certificates, the load generator received ${expected}`);
    const checked = checkSample(allChains, rootsFile, tmp, quick ? 20 : 60);

    const rows = [
      ["enroll (POST /v1/enroll), keep-alive TLS", results.enroll],
      ["renew (POST /v1/renew), keep-alive mTLS", results.renewKeepAlive],
      ["renew, new mTLS connection per certificate", results.renewNewConn],
    ].map(([label, rs]) => {
      const r = rs as PathResult[];
      return [label as string, String(r[0].n), range(r.map((x) => x.perSecond)), range(r.map((x) => x.p50), 1), range(r.map((x) => x.p99), 1), range(r.map((x) => x.cpuUsPerCert)), range(r.map((x) => x.mainUsPerCert)), range(r.map((x) => x.loadUsPerCert)), String(r.reduce((a, x) => a + x.errors, 0))];
    });
    const header = ["path", "N per rep", "certs/s", "p50 ms", "p99 ms", "CA CPU µs/cert", "of it main thread", "load generator CPU µs/cert", "errors"];
    const md = [
      `\`mcpmesh ca serve\` (one process) and a separate load-generator process, ${connections} requests in flight, ${reps} repetition(s), min–max shown. ` +
        `ECDSA P-256 leaves from the DER template; CSRs checked and leaves signed with node:crypto ${signingThreads === 0 ? "on the main thread's libuv pool" : `on ${signingThreads < 0 ? "the default number of" : signingThreads} signing thread(s) (\`--signing-threads\`)`}; SQLite WAL synchronous=FULL with group commit. ` +
        "CA CPU is the whole process (all threads); the main thread (TLS, HTTP, JSON, SQLite) is what one `ca serve` cannot spread over cores. " +
        "The load generator (raw TLS sockets, prebuilt requests, bench/loadgen.ts's HTTP/1.1 parser) shares the same cores: what it spends per certificate is not available to the CA.",
      "",
      "| " + header.join(" | ") + " |",
      "| " + header.map((_, i) => (i === 0 ? "---" : "---:")).join(" | ") + " |",
      ...rows.map((r) => "| " + r.join(" | ") + " |"),
    ].join("\n");
    const newConnBest = Math.max(...results.renewNewConn.map((r) => r.perSecond));
    const notes = [
      `Every certificate received was recorded by the CA (${inDb} in its database); ${checked} sampled across all runs passed \`openssl verify -purpose sslclient\` and the profile fields of \`openssl x509 -text\`.`,
      `A renewal on a new mTLS connection adds a full TLS 1.3 handshake with client-certificate verification; at ${fmt(newConnBest, 0)}/s the handshake, not issuance, is the limit of one \`ca serve\` process on this machine.`,
      `Machine: ${cpus().length} × ${cpus()[0]?.model ?? "CPU"}, load average at the end ${loadavg().map((l) => l.toFixed(2)).join(" ")} (shared with other work; the load generator runs on the same cores).`,
    ];
    return { title: "Certificate issuance (CA HTTPS API)", markdown: md, notes };
  } finally {
    await cleanup.run();
  }
}

// Standalone: `node --import tsx bench/issuance.ts`; as the load generator: `... --load-worker JOBFILE`.
if (process.argv[1] && resolve(process.argv[1]) === import.meta.filename) {
  const w = process.argv.indexOf("--load-worker");
  if (w >= 0) {
    worker(JSON.parse(readFileSync(process.argv[w + 1], "utf8")) as WorkerJob).then(
      (r) => process.stdout.write(JSON.stringify(r)),
      (e) => {
        console.error(e);
        process.exitCode = 1;
      },
    );
  } else {
    run({ quick: process.argv.includes("--quick") }).then(
      (s) => {
        console.log(`## ${s.title}\n\n${s.markdown}\n`);
        for (const note of s.notes ?? []) console.log(`- ${note}`);
      },
      (e) => {
        console.error(`bench/issuance: ${(e as Error).stack ?? String(e)}`);
        process.exitCode = 1;
      },
    );
  }
}



/**
 * The load generator of bench/run.ts, in its own process so its CPU is measured apart from the targets'. It speaks
 * HTTP/1.1 over raw TLS (or TCP) sockets with prebuilt request bytes and a minimal response parser, so that the
 * measuring costs as little CPU as possible on a machine it shares with the targets.
 *
 *   node --import tsx bench/loadgen.ts '<json Job>'
 *
 * Modes:
 * - "calls": C keep-alive connections, each does initialize + notifications/initialized (an MCP session per
 *   connection), then posts the same prebuilt tools/call, one request in flight per connection, for `seconds`.
 * - "handshakes": C loops, each opens a new connection (a full mTLS handshake: the client offers no session), sends
 *   `GET /handshake` and waits for any status line: the server has verified the client certificate by then.
 * Prints one JSON line (Result) on stdout when done. Errors (a failed connection, a status other than the expected
 * one, a body without the expected text) are counted, never thrown, and the first one is reported.
 */
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import { connect as netConnect, type Socket } from "node:net";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

export interface Job {
  mode: "calls" | "handshakes";
  /** http://host:port/path or https://host:port/path */
  url: string;
  connections: number;
  seconds: number;
  /** PEM files of the client identity (https only). */
  tls?: { cert: string; key: string; ca: string };
  /** The response of every measured call must contain this text. */
  expect?: string;
  protocolVersion: string;
}

export interface Result {
  ok: number;
  errors: number;
  non200: number;
  firstError?: string;
  wallMs: number;
  /** Latency percentiles of the successful requests, ms. */
  p50: number;
  p90: number;
  p99: number;
  /** This process's CPU time (user + system) over the measured interval, ms. */
  cpuMs: number;
}

/** The measured request: a 125-byte tools/call (the id pads it to the size the issue specifies). */
export function toolsCallBody(): string {
  const base = (id: string) => `{"jsonrpc":"2.0","id":"${id}","method":"tools/call","params":{"name":"read-note","arguments":{"title":"welcome"}}}`;
  const pad = 125 - base("").length;
  return base("c".repeat(Math.max(1, pad)));
}

export interface Response {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

/**
 * One HTTP/1.1 connection with one request in flight. The parser handles exactly what the targets send: a status
 * line, headers, and a body framed by Content-Length or chunked transfer coding.
 */
export class Conn {
  #buf: Buffer = Buffer.alloc(0);
  #waiting: { resolve: (r: Response) => void; reject: (e: Error) => void } | null = null;
  #closed: Error | null = null;
  constructor(readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on("data", (c: Buffer) => {
      this.#buf = this.#buf.length === 0 ? c : Buffer.concat([this.#buf, c]);
      this.#parse();
    });
    const fail = (e: Error) => {
      this.#closed ??= e;
      const w = this.#waiting;
      this.#waiting = null;
      w?.reject(e);
    };
    socket.on("error", fail);
    socket.on("close", () => fail(new Error("connection closed")));
  }

  request(bytes: Buffer): Promise<Response> {
    if (this.#closed) return Promise.reject(this.#closed);
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject };
      this.socket.write(bytes);
    });
  }

  #parse(): void {
    if (!this.#waiting) return;
    const buf = this.#buf;
    const end = buf.indexOf("\r\n\r\n");
    if (end < 0) return;
    const head = buf.toString("latin1", 0, end).split("\r\n");
    const status = Number(head[0].slice(9, 12));
    const headers = new Map<string, string>();
    for (let i = 1; i < head.length; i++) {
      const c = head[i].indexOf(":");
      headers.set(head[i].slice(0, c).toLowerCase(), head[i].slice(c + 1).trim());
    }
    let pos = end + 4;
    let body: Buffer;
    const len = headers.get("content-length");
    if (len !== undefined) {
      const n = Number(len);
      if (buf.length < pos + n) return;
      body = buf.subarray(pos, pos + n);
      pos += n;
    } else if (headers.get("transfer-encoding")?.includes("chunked")) {
      const parts: Buffer[] = [];
      for (;;) {
        const eol = buf.indexOf("\r\n", pos);
        if (eol < 0) return;
        const size = parseInt(buf.toString("latin1", pos, eol), 16);
        if (buf.length < eol + 2 + size + 2) return;
        if (size === 0) {
          pos = eol + 4;
          break;
        }
        parts.push(buf.subarray(eol + 2, eol + 2 + size));
        pos = eol + 2 + size + 2;
      }
      body = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    } else {
      body = Buffer.alloc(0);
    }
    this.#buf = pos === buf.length ? Buffer.alloc(0) : buf.subarray(pos);
    const w = this.#waiting;
    this.#waiting = null;
    w.resolve({ status, headers, body });
  }
}

export function open(u: URL, tlsOpts: ConnectionOptions | undefined): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const port = Number(u.port);
    const s = tlsOpts
      ? tlsConnect({ ...tlsOpts, host: u.hostname, port }, () => resolve(s))
      : netConnect({ host: u.hostname, port }, () => resolve(s));
    s.once("error", reject);
  });
}

export function requestBytes(u: URL, method: string, path: string, headers: Record<string, string>, body?: string): Buffer {
  let h = `${method} ${path} HTTP/1.1\r\nhost: ${u.host}\r\n`;
  for (const [k, v] of Object.entries(headers)) h += `${k}: ${v}\r\n`;
  if (body !== undefined) h += `content-length: ${Buffer.byteLength(body)}\r\n`;
  return Buffer.from(`${h}\r\n${body ?? ""}`);
}

const JSON_HEADERS = { "content-type": "application/json", accept: "application/json, text/event-stream" };

/** Opens a connection and an MCP session on it; returns the connection and the prebuilt tools/call bytes. */
async function session(job: Job, u: URL, tlsOpts: ConnectionOptions | undefined, i: number): Promise<{ conn: Conn; call: Buffer }> {
  const conn = new Conn(await open(u, tlsOpts));
  const init = await conn.request(requestBytes(u, "POST", u.pathname, JSON_HEADERS, JSON.stringify({ jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: job.protocolVersion, capabilities: {}, clientInfo: { name: `loadgen-${i}`, version: "1" } } })));
  const sid = init.headers.get("mcp-session-id");
  if (init.status !== 200 || !sid) throw new Error(`initialize: HTTP ${init.status} ${init.body.toString("utf8").slice(0, 200)}`);
  const version = /"protocolVersion":"([^"]+)"/.exec(init.body.toString("utf8"))?.[1] ?? job.protocolVersion;
  const headers = { ...JSON_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": version };
  const note = await conn.request(requestBytes(u, "POST", u.pathname, headers, JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" })));
  if (note.status !== 202 && note.status !== 200) throw new Error(`notifications/initialized: HTTP ${note.status}`);
  const call = requestBytes(u, "POST", u.pathname, headers, toolsCallBody());
  // One unmeasured call: the agent lists the upstream's tools on a session's first call.
  const first = await conn.request(call);
  if (first.status !== 200) throw new Error(`first tools/call: HTTP ${first.status} ${first.body.toString("utf8").slice(0, 200)}`);
  return { conn, call };
}

export async function runJob(job: Job): Promise<Result> {
  const u = new URL(job.url);
  const tlsOpts: ConnectionOptions | undefined = job.tls
    ? {
        cert: readFileSync(job.tls.cert),
        key: readFileSync(job.tls.key),
        ca: readFileSync(job.tls.ca),
        minVersion: "TLSv1.3",
        // Mesh server certificates are SVIDs (a URI SAN); the chain is verified, the host name is not.
        checkServerIdentity: () => undefined,
      }
    : undefined;
  const latencies: number[] = [];
  let errors = 0;
  let non200 = 0;
  let firstError: string | undefined;
  const error = (e: unknown) => {
    errors++;
    firstError ??= e instanceof Error ? e.message : String(e);
  };
  const expect = job.expect ? Buffer.from(job.expect) : undefined;

  let loops: Array<() => Promise<void>>;
  if (job.mode === "calls") {
    // A failed set-up counts as an error and is tried again (a few times) rather than ending the run.
    const setUp = async (i: number) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await session(job, u, tlsOpts, i);
        } catch (e) {
          error(e);
          if (attempt >= 3) throw e;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    };
    const sessions = await Promise.all(Array.from({ length: job.connections }, (_, i) => setUp(i)));
    loops = sessions.map((s) => async () => {
      let { conn } = s;
      while (!stop) {
        const t0 = performance.now();
        try {
          const r = await conn.request(s.call);
          if (r.status !== 200) non200++;
          else if (expect && r.body.indexOf(expect) < 0) error(new Error(`unexpected body: ${r.body.toString("utf8").slice(0, 200)}`));
          else if (!stop) latencies.push(performance.now() - t0);
        } catch (e) {
          error(e);
          if (stop) break;
          // A broken connection is replaced (with a new session), so one failure does not end the loop.
          try {
            ({ conn } = await session(job, u, tlsOpts, 0));
          } catch (e2) {
            error(e2);
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
      conn.socket.destroy();
    });
  } else {
    const req = requestBytes(u, "GET", "/handshake", { connection: "close" });
    loops = Array.from({ length: job.connections }, () => async () => {
      while (!stop) {
        const t0 = performance.now();
        let socket: Socket | undefined;
        try {
          socket = await open(u, tlsOpts);
          const r = await new Conn(socket).request(req);
          // Any HTTP answer means the server finished the handshake and accepted the certificate.
          if (r.status >= 100 && !stop) latencies.push(performance.now() - t0);
        } catch (e) {
          error(e);
        } finally {
          socket?.destroy();
        }
      }
    });
  }

  let stop = false;
  // The parent reads the other processes' CPU time when it sees these marks: the measured interval only, without
  // this process's start-up or the sessions' set-up.
  const mark = (m: string) => new Promise<void>((resolve) => process.stdout.write(`${m}\n`, () => resolve()));
  await mark("start");
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let wallMs = 0;
  let cpu = { user: 0, system: 0 };
  const timer = setTimeout(() => {
    stop = true;
    wallMs = performance.now() - t0;
    cpu = process.cpuUsage(cpu0);
    process.stdout.write("stop\n");
  }, job.seconds * 1000);
  await Promise.all(loops.map((l) => l()));
  clearTimeout(timer);
  const sorted = Float64Array.from(latencies).sort();
  const pct = (p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] : NaN);
  return { ok: latencies.length, errors, non200, firstError, wallMs, p50: pct(50), p90: pct(90), p99: pct(99), cpuMs: (cpu.user + cpu.system) / 1000 };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const job = JSON.parse(process.argv[2] ?? "") as Job;
  try {
    const r = await runJob(job);
    process.stdout.write(`${JSON.stringify(r)}\n`);
    process.exit(0);
  } catch (e) {
    process.stdout.write(`${JSON.stringify({ fatal: (e as Error).message })}\n`);
    process.exit(1);
  }
}

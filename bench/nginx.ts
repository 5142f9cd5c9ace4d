/**
 * nginx as the comparison point of bench/run.ts: an mTLS reverse proxy to the same upstream, configured the way an
 * operator would put it in front of an MCP server (TLS 1.3, client certificates verified against the mesh roots,
 * keep-alive to the upstream, no access log, one worker per core, unbuffered so SSE streams flow).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
import type { Child } from "./lib.ts";

/** `nginx -v`'s version, installing Debian's nginx-light first (as root) when there is no nginx. */
export function ensureNginx(log: (s: string) => void): string {
  const version = () => {
    const r = spawnSync("nginx", ["-v"], { encoding: "utf8" });
    return r.status === 0 ? /nginx\/(\S+)/.exec(`${r.stderr}${r.stdout}`)?.[1] : undefined;
  };
  let v = version();
  if (v) return v;
  if (process.getuid?.() !== 0) throw new Error("nginx is not installed and this is not root: install it (apt-get install -y nginx-light) and run again");
  log("nginx not found: apt-get install -y nginx-light");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  try {
    execFileSync("apt-get", ["install", "-y", "nginx-light"], { env, stdio: "ignore" });
  } catch {
    execFileSync("apt-get", ["update"], { env, stdio: "ignore" });
    execFileSync("apt-get", ["install", "-y", "nginx-light"], { env, stdio: "ignore" });
  }
  v = version();
  if (!v) throw new Error("nginx still not runnable after apt-get install nginx-light");
  return v;
}

export interface NginxFiles {
  cert: string;
  key: string;
  /** The mesh roots that client certificates must chain to. */
  clientRoots: string;
}

/** Writes nginx.conf into `dir` and starts nginx in the foreground (master + workers); resolves once it listens. */
export async function startNginx(dir: string, files: NginxFiles, upstream: URL, port: number, workers: number | "auto" = "auto"): Promise<Child> {
  mkdirSync(join(dir, "logs"), { recursive: true });
  const conf = join(dir, "nginx.conf");
  writeFileSync(conf, `
${process.getuid?.() === 0 ? "user root;" : ""}
worker_processes ${workers};
daemon off;
master_process on;
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "logs", "error.log")} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${join(dir, "body")};
  proxy_temp_path ${join(dir, "proxy")};
  fastcgi_temp_path ${join(dir, "fastcgi")};
  uwsgi_temp_path ${join(dir, "uwsgi")};
  scgi_temp_path ${join(dir, "scgi")};
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  upstream mcp {
    server ${upstream.host};
    keepalive 128;
  }
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1;
    ssl_certificate ${files.cert};
    ssl_certificate_key ${files.key};
    ssl_client_certificate ${files.clientRoots};
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_session_tickets off;
    ssl_session_cache off;
    location = ${upstream.pathname} {
      proxy_pass http://mcp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
    location / { return 404; }
  }
}
`);
  const child = spawn("nginx", ["-p", dir, "-c", conf], { stdio: ["ignore", "pipe", "pipe"] });
  let tail = "";
  child.stdout!.on("data", (c: Buffer) => (tail = (tail + c.toString()).slice(-2000)));
  child.stderr!.on("data", (c: Buffer) => (tail = (tail + c.toString()).slice(-2000)));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGQUIT");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    }
  };
  // Ready when the workers exist (the master binds the port before it forks them).
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`nginx exited (${child.exitCode}):\n${tail}\n${safeRead(join(dir, "logs", "error.log"))}`);
    if (child.pid !== undefined && childrenOf(child.pid).length > 0) return { child, ready: `https://127.0.0.1:${port}${upstream.pathname}`, stop };
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`nginx did not start within 10 s:\n${tail}`);
}

function safeRead(f: string): string {
  try {
    return readFileSync(f, "utf8").slice(-2000);
  } catch {
    return "";
  }
}

/** Pids whose parent is `pid` (nginx's workers), from /proc. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

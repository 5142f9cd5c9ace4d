/**
 * End to end: `limits.idleTimeout` on the real `mcpmesh agent run`. With a 1 s timeout the agent closes an mTLS
 * connection that never sends a byte after its handshake, one idle after a keep-alive request, and one whose request
 * headers never finish; a legacy SSE stream (silent for far longer than the timeout: its keep-alive comment comes every
 * 15 s) is not cut and still carries answers. With a long timeout (5m) the same kinds of connections outlive the old
 * fixed 10 s and still serve requests; a reload to 1s applies to the listener at once.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, type TLSSocket } from "node:tls";
import { setTimeout as sleep } from "node:timers/promises";
import { parse, stringify } from "yaml";
import { createMesh, type TestMesh } from "../helpers/mesh.ts";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess, type AgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { call, rpc } from "../helpers/e2e.ts";
import { rawSse } from "../helpers/raw-transports.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

const TD = "spiffe://example.org";
const cleanups = new Cleanups();
let mesh: TestMesh;
let up: TestMcpServer;
let short: AgentProcess;
let long: AgentProcess;
let aliceDir: string;

before(async () => {
  mesh = await createMesh();
  cleanups.add(() => mesh.close());
  up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/idle", { kind: "agent" });
  aliceDir = await mesh.issue("team-a/alice");
  const config = (idleTimeout: string, name: string) => ({
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo"] }],
    limits: { idleTimeout },
    pinning: { file: join(mesh.dir, `pins-${name}.json`) },
  });
  short = await startAgentProcess(mesh.dir, config("1s", "short"));
  cleanups.add(() => short.stop());
  long = await startAgentProcess(mesh.dir, config("5m", "long"));
  cleanups.add(() => long.stop());
});

after(() => cleanups.run());

interface Held {
  socket: TLSSocket;
  received: () => string;
  /** Resolves when the agent closed the connection (or rejects after `ms`: it was not closed). */
  closed: Promise<void>;
  /** Waits until `received()` matches. */
  until(re: RegExp, ms?: number): Promise<void>;
}

/** A raw mTLS connection as alice: the handshake completes, then nothing is sent until the test writes. */
function hold(agentUrl: string): Promise<Held> {
  const u = new URL(agentUrl);
  return new Promise((resolve, reject) => {
    let text = "";
    const listeners = new Set<() => void>();
    const socket = connect({
      host: u.hostname,
      port: Number(u.port),
      cert: readFileSync(join(aliceDir, "cert.pem")),
      key: readFileSync(join(aliceDir, "key.pem")),
      ca: readFileSync(join(aliceDir, "ca.pem")),
      minVersion: "TLSv1.3",
      ALPNProtocols: ["http/1.1"],
    });
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => {
      text += d;
      for (const l of listeners) l();
    });
    socket.on("error", () => {});
    socket.once("secureConnect", () =>
      resolve({
        socket,
        received: () => text,
        closed,
        until: (re, ms = 15_000) =>
          new Promise<void>((ok, fail) => {
            const check = () => {
              if (!re.test(text)) return;
              listeners.delete(check);
              clearTimeout(timer);
              ok();
            };
            const timer = setTimeout(() => {
              listeners.delete(check);
              fail(new Error(`not received within ${ms} ms: ${re}; got: ${JSON.stringify(text)}`));
            }, ms);
            listeners.add(check);
            check();
          }),
      }),
    );
    socket.once("error", reject);
    cleanups.add(() => void socket.destroy());
  });
}

/** A complete keep-alive request: any path that is not an MCP path gets a 404 with a body, the connection stays. */
const get404 = (u: string) => `GET /idle-timeout-probe HTTP/1.1\r\nHost: ${new URL(u).host}\r\n\r\n`;
const RESPONSE_404 = /^HTTP\/1\.1 404 /;

/** Rejects after `ms`: a close the agent should have made within generous bounds. */
const within = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`${what}: not within ${ms} ms`)))]);

test("1s: a connection that sends nothing after its TLS handshake is closed", async () => {
  const c = await hold(short.url);
  await within(c.closed, 8_000, "no-bytes connection closed");
  // Node answers such a connection 408 before closing; never anything from the upstream.
  assert.match(c.received(), /^(HTTP\/1\.1 408 |)/);
  assert.doesNotMatch(c.received(), /200 OK/);
});

test("1s: a keep-alive connection idle after a request is closed", async () => {
  const c = await hold(short.url);
  c.socket.write(get404(short.url));
  await c.until(RESPONSE_404);
  await within(c.closed, 8_000, "idle keep-alive connection closed");
});

test("1s: a connection whose request headers never finish is closed", async () => {
  const c = await hold(short.url);
  c.socket.write(`GET /idle-timeout-probe HTTP/1.1\r\nHost: ${new URL(short.url).host}\r\n`);
  await within(c.closed, 8_000, "unfinished headers closed");
  assert.doesNotMatch(c.received(), /404/, "the request never completed, so it was never answered");
});

test("1s: an SSE stream is not cut by the idle timeout and still carries answers", async () => {
  const f = createMeshFetch(aliceDir);
  cleanups.add(() => f.close());
  const sse = await rawSse(short.url.replace(/\/mcp$/, "/sse"), f);
  cleanups.add(() => sse.close());
  let streamEnded = false;
  void sse.ended.then(() => (streamEnded = true));
  const initialize = rpc("initialize", { protocolVersion: "2024-11-05", capabilities: {}, clientInfo: { name: "idle", version: "1" } });
  const init = await sse.post(initialize);
  assert.equal(init.status, 202, init.text);
  await sse.inbox.next((m) => m.id === initialize.id);
  assert.equal((await sse.post({ jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);
  // Let the idle timeout pass several times over, measured by the agent itself: three connections opened one after
  // another, each closed by the same 1 s timeout, while the stream stays silent (its keep-alive comment is 15 s off).
  for (let i = 0; i < 3; i++) await within((await hold(short.url)).closed, 8_000, "paced idle connection closed");
  assert.equal(streamEnded, false, "the SSE stream outlived three idle timeouts");
  const echo = call("echo", { text: "still here" });
  const r = await sse.post(echo);
  assert.equal(r.status, 202, r.text);
  const answer = await sse.inbox.next((m) => m.id === echo.id);
  assert.match(JSON.stringify(answer), /still here/);
  assert.equal(streamEnded, false);
});

test("5m: idle connections outlive the old fixed 10 s and still serve requests", async () => {
  const silent = await hold(long.url);
  const keptAlive = await hold(long.url);
  keptAlive.socket.write(get404(long.url));
  await keptAlive.until(RESPONSE_404);
  let closedEarly = "";
  void silent.closed.then(() => (closedEarly += "silent "));
  void keptAlive.closed.then(() => (closedEarly += "kept-alive "));
  // Meanwhile the 1s agent closes a connection: the clock really ran (and the two agents differ only in idleTimeout).
  await within((await hold(short.url)).closed, 8_000, "control connection on the 1s agent closed");
  await sleep(12_000);
  assert.equal(closedEarly, "", "no connection to the 5m agent was closed");
  keptAlive.socket.write(get404(long.url));
  await keptAlive.until(/404[\s\S]*HTTP\/1\.1 404 /);
  silent.socket.write(get404(long.url));
  await silent.until(RESPONSE_404);
});

test("reload: the 5m agent reloaded with 1s closes a silent connection", async () => {
  const cfg = parse(readFileSync(long.configFile, "utf8"));
  cfg.limits.idleTimeout = "1s";
  writeFileSync(long.configFile, stringify(cfg));
  long.reload();
  await long.waitForLog((l) => l.event === "reloaded" || l.event === "reload_failed");
  assert.equal(long.logs().filter((l) => l.event === "reload_failed").length, 0);
  const c = await hold(long.url);
  await within(c.closed, 8_000, "silent connection closed after the reload");
});

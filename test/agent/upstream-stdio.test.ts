/**
 * The stdio upstream connector against the real fixture child (test/helpers/stdio-server.ts, an SDK McpServer over
 * stdio), driven by the real SDK Client over the connector's channel: calls, crash mid-call (error to the caller,
 * restart, the next call works in the same session), crash loop (backoff then give-up), stderr in the log and bounded,
 * non-JSON stdout dropped, environment policy, and no process left after close.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { DEFAULT_RESTART, type RestartConfig } from "../../agent/config.ts";
import { StdioConnector, childEnvironment, type StdioConnectorOptions } from "../../agent/upstream/stdio.ts";
import { createMessageConnector } from "../../agent/upstream/index.ts";
import { MeshError } from "../../lib/errors.ts";
import { readStdioRecord, stdioServerCommand } from "../helpers/stdio-server.ts";
import { captureLog, type CapturedLog } from "../helpers/log-capture.ts";
import { tmpdir, type Defer } from "../helpers/cli.ts";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Waits until `pid` is gone; fails after a generous minute. */
async function gone(pid: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (alive(pid)) {
    if (Date.now() > deadline) throw new Error(`process ${pid} still alive`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Setup {
  log: CapturedLog;
  connector: StdioConnector;
  record: string;
  dir: string;
}

function setup(defer: Defer, opts: Partial<Omit<StdioConnectorOptions, "restart">> & { restart?: Partial<RestartConfig> } = {}): Setup {
  const dir = tmpdir(defer, "mcpmesh-stdio-");
  const record = join(dir, "record.jsonl");
  const log = captureLog();
  const connector = new StdioConnector({
    command: stdioServerCommand(),
    timeoutMs: 60_000,
    logger: log.logger,
    ...opts,
    env: { MCPMESH_TEST_RECORD: record, ...opts.env },
    restart: { ...DEFAULT_RESTART, ...opts.restart },
  });
  defer(() => connector.close());
  return { log, connector, record, dir };
}

async function connect(s: Setup, identity = "spiffe://example.org/alice"): Promise<{ client: Client; channel: Transport; seen: any[] }> {
  const channel = s.connector.open({ identity, sessionId: `sess-${Math.random()}` });
  const client = new Client({ name: "stdio-test", version: "1.0.0" });
  await client.connect(channel);
  // Everything the channel hands to the client, after the SDK set its handler.
  const seen: any[] = [];
  const inner = channel.onmessage!;
  channel.onmessage = (m, extra) => {
    seen.push(m);
    inner(m, extra);
  };
  return { client, channel, seen };
}

const text = (r: any): string => r.content[0].text;
const pidOf = async (c: Client): Promise<number> => Number(text(await c.callTool({ name: "pid", arguments: {} })));

test("initialize, list and call through a stdio child; one child per session", async (t) => {
  const s = setup((fn) => t.after(fn));
  const a = await connect(s);
  const tools = (await a.client.listTools()).tools.map((x) => x.name);
  for (const name of ["echo", "get-weather", "add", "delete-file", "tenant-report", "slow-count", "hold", "crash", "pid"]) assert.ok(tools.includes(name), name);
  assert.equal(text(await a.client.callTool({ name: "add", arguments: { a: 2, b: 3 } })), "5");
  // Progress notifications are passed through in order, before the result. (Checked on the wire: the SDK Client
  // drops progress that arrives in the same read as the result, as it does over its own stdio transport.)
  const r = await a.client.callTool({ name: "slow-count", arguments: { steps: 3 } }, undefined, { onprogress: () => {} });
  assert.equal(text(r), "counted 3");
  const progress = a.seen.filter((m) => m.method === "notifications/progress").map((m) => m.params.progress);
  assert.deepEqual(progress, [1, 2, 3]);
  assert.ok(a.seen.findIndex((m) => m.method === "notifications/progress") < a.seen.findIndex((m) => m.result?.content?.[0]?.text === "counted 3"));

  const b = await connect(s, "spiffe://example.org/bob");
  const [pa, pb] = [await pidOf(a.client), await pidOf(b.client)];
  assert.notEqual(pa, pb, "each downstream session has its own child");
  assert.deepEqual(s.connector.pids().sort(), [pa, pb].sort());
  const rec = readStdioRecord(s.record);
  assert.deepEqual(rec.rpcMethods.filter((m) => m === "initialize").length, 2);
  assert.ok(rec.toolCalls.includes("add"));
});

test("server → client requests (sampling) reach the session's own client, and its answer the child that asked", async (t) => {
  const s = setup((fn) => t.after(fn));
  const sessions = await Promise.all(
    ["alice", "bob"].map(async (who) => {
      const channel = s.connector.open({ identity: `spiffe://example.org/${who}`, sessionId: who });
      const client = new Client({ name: who, version: "1.0.0" }, { capabilities: { sampling: {} } });
      const asked: string[] = [];
      client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
        const c = req.params.messages[0].content as { type: string; text: string };
        asked.push(c.text);
        return { model: "test", role: "assistant", content: { type: "text", text: `${who} answers ${c.text}` } };
      });
      await client.connect(channel);
      return { who, client, asked };
    }),
  );
  const answers = await Promise.all(sessions.map(({ who, client }) => client.callTool({ name: "sample", arguments: { prompt: `q-${who}` } })));
  assert.deepEqual(answers.map(text), ["alice answers q-alice", "bob answers q-bob"]);
  assert.deepEqual(sessions.map((x) => x.asked), [["q-alice"], ["q-bob"]]);
});

test("a child that crashes mid-call: the caller gets an error, the child is restarted, the next call works in the same session", async (t) => {
  const s = setup((fn) => t.after(fn), { restart: { initialDelayMs: 50 } });
  const { client, seen } = await connect(s);
  const pid1 = await pidOf(client);
  // A second call in flight at the same time must get its error too.
  const held = client.callTool({ name: "hold", arguments: {} });
  await assert.rejects(client.callTool({ name: "crash", arguments: { code: 1 } }), (e: any) => {
    assert.equal(e.code, -32000);
    assert.match(e.message, /upstream process exited with code 1/);
    return true;
  });
  await assert.rejects(held, /upstream process exited with code 1/);
  const restarted = await s.log.waitFor((l) => l.event === "upstream_spawn" && l.pid !== pid1, "the restarted child");
  await s.log.waitFor((l) => l.event === "upstream_replay_initialize", "the initialize replay");
  assert.ok(!alive(pid1), "the crashed child is gone");

  // Calls made while the child is still re-initializing are queued, not failed: waiting for the replay is not needed.
  const pid2 = await pidOf(client);
  assert.equal(pid2, restarted.pid);
  assert.notEqual(pid2, pid1);
  assert.equal(text(await client.callTool({ name: "echo", arguments: { text: "after crash" } })), "after crash");

  // The new child got the session's initialize and notifications/initialized before the next call; the replayed
  // initialize's response never reached the client.
  const rec = readStdioRecord(s.record).messages;
  const afterCrash = rec.slice(rec.findIndex((m) => m.params?.name === "crash") + 1).map((m) => m.method);
  assert.deepEqual(afterCrash.slice(0, 3), ["initialize", "notifications/initialized", "tools/call"]);
  assert.equal(seen.filter((m) => m.result?.serverInfo !== undefined).length, 0, "replayed initialize result swallowed");
  assert.equal(s.log.events("upstream_exit").length, 1);
  const exit = s.log.events("upstream_exit")[0];
  assert.equal(exit.pid, pid1);
  assert.equal(exit.code, 1);
});

test("a crash loop backs off exponentially (seen in the log), then the channel gives up and closes", async (t) => {
  const crashFlag = join(tmpdir((fn) => t.after(fn)), "crash-at-start");
  const s = setup((fn) => t.after(fn), { env: { MCPMESH_TEST_CRASH_IF: crashFlag }, restart: { initialDelayMs: 40, maxDelayMs: 100, maxRestarts: 4, stableAfterMs: 600_000 } });
  const connector = s.connector;
  const { client, channel } = await connect(s);
  let closed = false;
  const closedP = new Promise<void>((resolve) => {
    const prev = channel.onclose;
    channel.onclose = () => {
      closed = true;
      prev?.();
      resolve();
    };
  });
  writeFileSync(crashFlag, "");
  await assert.rejects(client.callTool({ name: "crash", arguments: {} }), /upstream process exited with code 1/);
  await s.log.waitFor((l) => l.event === "upstream_gave_up", "give-up");
  await closedP;
  assert.ok(closed);
  const restarts = s.log.events("upstream_restart");
  assert.deepEqual(restarts.map((l) => l.attempt), [1, 2, 3, 4]);
  assert.deepEqual(restarts.map((l) => l.backoffMs), [40, 80, 100, 100], "exponential, capped at maxDelay");
  for (const r of restarts) assert.ok(r.delayMs <= r.backoffMs && r.delayMs >= r.backoffMs / 2, `jitter within 50%: ${JSON.stringify(r)}`);
  // Every restarted child crashed at start: its exit code 3 is in the log, each child gone.
  const exits = s.log.events("upstream_exit");
  assert.deepEqual(exits.map((l) => l.code), [1, 3, 3, 3, 3]);
  for (const e of exits) assert.ok(!alive(e.pid), `pid ${e.pid} gone`);
  assert.deepEqual(connector.pids(), []);
  // The closed channel refuses further calls instead of hanging.
  await assert.rejects(client.callTool({ name: "echo", arguments: { text: "x" } }));
  rmSync(crashFlag);
});

test("maxRestarts 0: the first crash closes the channel", async (t) => {
  const s = setup((fn) => t.after(fn), { restart: { maxRestarts: 0 } });
  const { client, channel } = await connect(s);
  const closedP = new Promise<void>((resolve) => {
    const prev = channel.onclose;
    channel.onclose = () => {
      prev?.();
      resolve();
    };
  });
  await assert.rejects(client.callTool({ name: "crash", arguments: { code: 7 } }), /exited with code 7/);
  await closedP;
  assert.equal(s.log.events("upstream_restart").length, 0);
  assert.equal(s.log.events("upstream_gave_up").length, 1);
});

test("stderr lands in the agent log, long lines cut, a noisy child rate-bounded", async (t) => {
  const s = setup((fn) => t.after(fn), { stderr: { burst: 20, perSecond: 1, maxLineChars: 100 } });
  const { client } = await connect(s);
  const pid = await pidOf(client);
  const started = await s.log.waitFor((l) => l.event === "upstream_stderr" && /stdio-server: started pid=/.test(l.line), "the child's start line");
  assert.equal(started.pid, pid);
  assert.equal(started.identity, "spiffe://example.org/alice");
  assert.equal(started.level, 30);

  await client.callTool({ name: "stderr", arguments: { lines: 1, length: 5000 } });
  const long = await s.log.waitFor((l) => l.event === "upstream_stderr" && l.truncatedChars !== undefined, "a cut line");
  assert.equal(long.line, "x".repeat(100));
  assert.equal(long.truncatedChars, 4900);

  await client.callTool({ name: "stderr", arguments: { lines: 5000, length: 10 } });
  // Drops are counted and reported (a line with the count) shortly after; every line is either logged or counted.
  const logged = () => s.log.events("upstream_stderr").filter((l) => l.line === "x".repeat(10)).length;
  const dropped = () => s.log.events("upstream_stderr_dropped").reduce((n, l) => n + l.dropped, 0);
  await s.log.waitFor(() => logged() + dropped() === 5000, "all 5000 lines accounted for");
  assert.ok(logged() < 100, `at most the burst plus the refill got through (${logged()})`);
  assert.ok(dropped() > 4900, `the rest was counted as dropped (${dropped()})`);
});

test("stdout that is not JSON-RPC is logged and dropped, never forwarded", async (t) => {
  const s = setup((fn) => t.after(fn));
  const { client, seen } = await connect(s);
  assert.equal(text(await client.callTool({ name: "stdout-noise", arguments: {} })), "noisy");
  const dropped = s.log.events("upstream_stdout_dropped");
  assert.deepEqual(dropped.map((l) => l.line), ["this is not json-rpc", JSON.stringify({ hello: "not a jsonrpc message" })]);
  assert.equal(seen.length, 1, "only the call's response reached the client");
  assert.equal(seen[0].result.content[0].text, "noisy");
});

test("a child that writes an over-long stdout line is killed and restarted; its caller gets an error", async (t) => {
  const s = setup((fn) => t.after(fn), { maxStdoutLineBytes: 100_000, restart: { initialDelayMs: 20 } });
  const { client, seen } = await connect(s);
  const pid1 = await pidOf(client);
  await assert.rejects(client.callTool({ name: "stdout-flood", arguments: { bytes: 300_000 } }), /upstream process was killed by SIGKILL/);
  const overflow = s.log.events("upstream_stdout_overflow");
  assert.equal(overflow.length, 1);
  assert.equal(overflow[0].pid, pid1);
  assert.ok(!seen.some((m) => JSON.stringify(m).includes("xxxxxxxx")), "nothing of the line was forwarded");
  await s.log.waitFor((l) => l.event === "upstream_spawn" && l.pid !== pid1, "the restart");
  assert.notEqual(await pidOf(client), pid1);
});

test("a child that stops reading its stdin: requests beyond the buffer bound get an error instead of piling up", async (t) => {
  const s = setup((fn) => t.after(fn), { maxStdinBufferBytes: 256 * 1024 });
  const { channel, client, seen } = await connect(s);
  assert.equal(text(await client.callTool({ name: "stop-reading", arguments: {} })), "deaf");
  // Raw requests on the channel (the SDK client would wait for each): 40 KiB each, far more than pipe + bound.
  const big = "y".repeat(40 * 1024);
  for (let i = 0; i < 100; i++) await channel.send({ jsonrpc: "2.0", id: `big-${i}`, method: "tools/call", params: { name: "echo", arguments: { text: big } } });
  const refused = seen.filter((m) => typeof m.id === "string" && m.id.startsWith("big-") && m.error?.message === "upstream is not reading its input");
  assert.ok(refused.length > 50, `most were refused (${refused.length})`);
  assert.ok(refused.every((m) => m.error.code === -32000));
  assert.ok(s.log.events("upstream_input_full").length === refused.length);
});

test("the child's environment: the default allow-list, inheritEnv and env only — no agent secret", async (t) => {
  process.env.MCPMESH_TEST_AGENT_SECRET = "s3cr3t-token";
  process.env.MCPMESH_TEST_PASSED = "passed-through";
  t.after(() => {
    delete process.env.MCPMESH_TEST_AGENT_SECRET;
    delete process.env.MCPMESH_TEST_PASSED;
  });
  const s = setup((fn) => t.after(fn), { env: { FOO: "bar", PATH: "/custom/bin:" + process.env.PATH }, inheritEnv: ["MCPMESH_TEST_PASSED"] });
  const { client } = await connect(s);
  const env = async (name: string) => text(await client.callTool({ name: "env", arguments: { name } }));
  assert.equal(await env("MCPMESH_TEST_AGENT_SECRET"), "<unset>");
  assert.equal(await env("FOO"), "bar");
  assert.equal(await env("MCPMESH_TEST_PASSED"), "passed-through");
  assert.equal(await env("PATH"), "/custom/bin:" + process.env.PATH, "env wins over the inherited value");
  assert.equal(await env("HOME"), process.env.HOME ?? "<unset>");
  // The whole environment, as the connector computes it.
  const all = childEnvironment({ env: { A: "1" }, inheritEnv: ["X"], baseEnv: { PATH: "/bin", HOME: "/h", X: "x", AWS_SECRET_ACCESS_KEY: "k", MCPMESH_PASSPHRASE: "p", LANG: "C.UTF-8" } });
  assert.deepEqual(all, { PATH: "/bin", HOME: "/h", LANG: "C.UTF-8", X: "x", A: "1" });
});

test("close kills the child; one that ignores SIGTERM is SIGKILLed after the grace period; its own children go too", async (t) => {
  const s = setup((fn) => t.after(fn));
  const { client } = await connect(s);
  const pid = await pidOf(client);
  await client.close();
  await gone(pid);
  assert.deepEqual(s.connector.pids(), []);

  const stubborn = setup((fn) => t.after(fn), { env: { MCPMESH_TEST_IGNORE_SIGTERM: "1" }, killGraceMs: 300 });
  const c2 = await connect(stubborn);
  const pid2 = await pidOf(c2.client);
  await stubborn.log.waitFor((l) => l.event === "upstream_stderr" && /started/.test(l.line), "start line");
  await c2.client.close();
  assert.ok(!alive(pid2), "close() returned only after the child was gone");
  const exit = await stubborn.log.waitFor((l) => l.event === "upstream_exit" && l.pid === pid2, "the stubborn child's exit");
  assert.equal(exit.signal, "SIGKILL");

  // A wrapper (sh, like npx) whose child is the server: close() reaches the whole process group.
  const [node, ...args] = stdioServerCommand();
  const quoted = [node, ...args].map((a) => `'${a}'`).join(" ");
  const wrapped = setup((fn) => t.after(fn), { command: ["/bin/sh", "-c", `${quoted}; exit $?`] });
  const c3 = await connect(wrapped);
  const grandchild = await pidOf(c3.client);
  const [shPid] = wrapped.connector.pids();
  assert.notEqual(grandchild, shPid, "the server runs under the shell");
  await wrapped.connector.close();
  await gone(grandchild);
  await gone(shPid);
});

test("a command that cannot be started: start() fails with a MeshError naming it; other kinds are refused", async (t) => {
  const s = setup((fn) => t.after(fn), { command: ["/nonexistent/mcp-server", "--x"] });
  const channel = s.connector.open({ identity: "spiffe://example.org/alice", sessionId: "x" });
  await assert.rejects(channel.start(), (e: any) => e instanceof MeshError && e.code === "MCPMESH_UPSTREAM" && /\/nonexistent\/mcp-server/.test(e.message) && /ENOENT/.test(e.message));
  assert.equal(s.log.events("upstream_restart").length, 0, "a failed start is not restarted");

  const log = captureLog();
  const base = { unsafeUpstream: false, timeoutMs: 1000, restart: DEFAULT_RESTART };
  assert.throws(() => createMessageConnector({ ...base, url: "http://127.0.0.1:1/mcp" }, { logger: log.logger }), (e: any) => e instanceof MeshError && /upstream\.url/.test(e.message));
  assert.throws(() => createMessageConnector(base, { logger: log.logger }), MeshError);
  assert.equal(createMessageConnector({ ...base, command: ["x"] }, { logger: log.logger }).kind, "stdio");
  assert.equal(createMessageConnector({ ...base, sse: "http://127.0.0.1:1/sse" }, { logger: log.logger }).kind, "sse");
});

test("a third-party stdio server (@modelcontextprotocol/server-filesystem) behind the connector, restarted after a kill", async (t) => {
  const root = tmpdir((fn) => t.after(fn), "mcpmesh-fs-");
  writeFileSync(join(root, "hello.txt"), "hello from disk\n");
  const bin = fileURLToPath(import.meta.resolve("@modelcontextprotocol/server-filesystem/dist/index.js"));
  const s = setup((fn) => t.after(fn), { command: [process.execPath, bin, root], restart: { initialDelayMs: 20 } });
  const { client } = await connect(s);
  const tools = (await client.listTools()).tools.map((x) => x.name);
  assert.ok(tools.includes("read_text_file") || tools.includes("read_file"), tools.join(","));
  const read = tools.includes("read_text_file") ? "read_text_file" : "read_file";
  const r1 = await client.callTool({ name: read, arguments: { path: join(root, "hello.txt") } });
  assert.match(text(r1), /hello from disk/);
  // Killed from outside (OOM killer, operator): the next call after the restart works in the same session.
  const [pid] = s.connector.pids();
  process.kill(pid, "SIGKILL");
  const respawn = await s.log.waitFor((l) => l.event === "upstream_spawn" && l.pid !== pid, "the restart");
  await s.log.waitFor((l) => l.event === "upstream_replay_initialize" && l.pid === respawn.pid, "the replay");
  const r2 = await client.callTool({ name: read, arguments: { path: join(root, "hello.txt") } });
  assert.match(text(r2), /hello from disk/);
  assert.equal(s.log.events("upstream_exit")[0].signal, "SIGKILL");
});

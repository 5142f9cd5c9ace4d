/**
 * The HTTP upstream loads undici's pool and request call from their own files instead of the package entry (which
 * loads all of undici: ~7 MB of idle RSS). These tests pin those files to what the entry exports, check that an agent's
 * module graph does not pull the entry in, and that the pool still behaves as the edges expect (the headers-timeout
 * code behind the 504, cancellation through an EventEmitter signal) on real loopback sockets.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { EventEmitter } from "node:events";
import { execFileSync } from "node:child_process";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { HttpUpstream, loadUndiciPool } from "../../agent/upstream/http.ts";

const REPO = join(import.meta.dirname, "..", "..");
const require = createRequire(import.meta.url);

test("the files loaded alone are the very objects undici's entry exports", () => {
  const entry = require("undici") as { Agent: unknown; Dispatcher: { prototype: { request: unknown } } };
  assert.equal(require("undici/lib/dispatcher/agent.js"), entry.Agent);
  assert.equal(require("undici/lib/api/api-request.js"), entry.Dispatcher.prototype.request);
});

test("an undici whose internal files moved or changed: the entry's Agent and request are used instead", () => {
  const entry = require("undici") as { Agent: unknown; Dispatcher: { prototype: { request: unknown } } };
  assert.equal(loadUndiciPool(require).slim, true, "the installed undici has the files");
  const layouts: [string, (id: string) => unknown][] = [
    ["files gone", (id) => (id === "undici" ? require(id) : (() => { throw Object.assign(new Error(`Cannot find module '${id}'`), { code: "MODULE_NOT_FOUND" }); })())],
    ["a file now exports an object", (id) => (id === "undici/lib/dispatcher/agent.js" ? { Agent: entry.Agent } : require(id))],
    ["the request file now exports an object", (id) => (id === "undici/lib/api/api-request.js" ? { request: entry.Dispatcher.prototype.request } : require(id))],
  ];
  for (const [name, load] of layouts) {
    const got = loadUndiciPool(load);
    assert.equal(got.slim, false, name);
    assert.equal(got.Agent, entry.Agent, name);
    assert.equal(got.request, entry.Dispatcher.prototype.request, name);
  }
});

test("the agent's module graph loads undici's pool but not undici's entry (fetch, WebSocket, mocks, caches)", () => {
  const script = `
    await import(${JSON.stringify(join(REPO, "agent", "agent.ts"))});
    const { createRequire } = await import("node:module");
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.includes("/node_modules/undici/")).map((k) => k.replace(/.*\\/node_modules\\/undici\\//, ""));
    console.log(JSON.stringify(loaded));`;
  const loaded = JSON.parse(execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: REPO, encoding: "utf8" })) as string[];
  assert.ok(loaded.includes("lib/dispatcher/agent.js"), `undici's Agent is loaded (${loaded.length} undici files)`);
  for (const file of ["index.js", "lib/web/fetch/index.js", "lib/web/websocket/websocket.js", "lib/mock/mock-agent.js", "lib/interceptor/cache.js"]) {
    assert.ok(!loaded.includes(file), `${file} must not be loaded`);
  }
});

async function listen(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/mcp` };
}

test("requests, the headers timeout (UND_ERR_HEADERS_TIMEOUT, the edge's 504) and an EventEmitter cancel", async (t) => {
  const hung: Array<() => void> = [];
  const { server, url } = await listen((req, res) => {
    if (req.headers["x-hang"]) {
      hung.push(() => res.destroy());
      return;
    }
    let body = "";
    req.on("data", (c) => (body += c)).on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ got: body, identity: req.headers["x-mcpmesh-identity"] })));
  });
  const up = new HttpUpstream({ url, timeoutMs: 300 });
  t.after(async () => {
    for (const h of hung) h();
    await up.close();
    await new Promise<void>((r) => server.close(() => r()));
  });

  const ok = await up.send("POST", { "content-type": "application/json", "x-mcpmesh-identity": "spiffe://example.org/a" }, Buffer.from('{"x":1}'));
  assert.equal(ok.status, 200);
  let text = "";
  for await (const c of ok.body) text += c;
  assert.deepEqual(JSON.parse(text), { got: '{"x":1}', identity: "spiffe://example.org/a" });

  await assert.rejects(up.send("POST", { "x-hang": "1" }, Buffer.from("{}")), (e: Error & { code?: string; cause?: { code?: string } }) => {
    assert.equal(e.code, "MCPMESH_UPSTREAM");
    assert.equal(e.cause?.code, "UND_ERR_HEADERS_TIMEOUT");
    return true;
  });

  const cancel = Object.assign(new EventEmitter(), { aborted: false });
  const pending = up.send("POST", { "x-hang": "1" }, Buffer.from("{}"), cancel);
  setImmediate(() => {
    cancel.aborted = true;
    cancel.emit("abort");
  });
  await assert.rejects(pending, (e: Error & { cause?: { code?: string; name?: string } }) => {
    assert.notEqual(e.cause?.code, "UND_ERR_HEADERS_TIMEOUT");
    assert.match(String(e.cause?.name), /Abort/);
    return true;
  });
});

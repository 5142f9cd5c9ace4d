/**
 * Issue 9 (idle RSS): the real `mcpmesh agent run`, with a CA (CRL loaded and checked, renewal scheduled) and mTLS
 * clients served, never loads @peculiar/x509 or what it drags in (reflect-metadata, tsyringe): SVIDs, CRLs and CSRs
 * go through the @peculiar/asn1-* layer; nor better-sqlite3 (the CA's store). `ws` is loaded by the first WebSocket upgrade, not before; two concurrent
 * first upgrades are both served. The module list comes from a preload that dumps `require.cache` on SIGUSR2.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { Cleanups } from "../helpers/cli.ts";
import { connectClient, rpc } from "../helpers/e2e.ts";
import { rawWs } from "../helpers/raw-transports.ts";

const PRELOAD = join(import.meta.dirname, "..", "helpers", "module-list-preload.mjs");
const cleanups = new Cleanups();
after(() => cleanups.run());

// better-sqlite3 is the CA's store; the CLI imports ca/admin.ts only for the `ca` commands that need it.
const HEAVY = ["/node_modules/@peculiar/x509/", "/node_modules/reflect-metadata/", "/node_modules/tsyringe/", "/node_modules/better-sqlite3/"];
const has = (mods: string[], part: string) => mods.some((m) => m.includes(part));

/** Asks the process for its module list and waits for the file (SIGUSR2 handling is asynchronous). */
async function modulesOf(pid: number, file: string): Promise<string[]> {
  rmSync(file, { force: true });
  process.kill(pid, "SIGUSR2");
  for (let i = 0; i < 400 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 25));
  return JSON.parse(readFileSync(file, "utf8")) as string[];
}

test("the preload sees a CommonJS package imported from ESM (a check that can fail)", () => {
  const file = join(import.meta.dirname, `.modules-${process.pid}.json`);
  cleanups.add(() => rmSync(file, { force: true }));
  const r = spawnSync(process.execPath, ["--import", "tsx", "--import", PRELOAD, "-e", 'await import("./lib/peculiar.ts"); await import("ws"); await import("better-sqlite3");', "--input-type=module"], {
    cwd: join(import.meta.dirname, "..", ".."),
    env: { ...process.env, MCPMESH_TEST_MODULE_LIST: file },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const mods = JSON.parse(readFileSync(file, "utf8")) as string[];
  for (const h of HEAVY) assert.ok(has(mods, h), `${h} should show as loaded`);
  assert.ok(has(mods, "/node_modules/ws/"));
});

test("an agent with a CA never loads @peculiar/x509; ws comes with the first upgrades, two at once both served", async () => {
  const mesh = await createMesh();
  cleanups.add(() => mesh.close());
  await mesh.startCa();
  const up = await startMcpServer();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue("agents/lean", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const bob = await mesh.issue("team-a/bob");
  const file = join(mesh.dir, "modules.json");
  const agent = await startAgentProcess(
    mesh.dir,
    {
      listen: "127.0.0.1:0",
      identity: agentDir,
      ca: mesh.caUrl,
      // The feed is a WebSocket client: with it on, ws is needed from the start and rightly loaded.
      revocation: { feed: false },
      upstream: { url: up.url },
      rules: [{ id: "team-a", clients: ["spiffe://example.org/team-a/*"], tools: ["*"] }],
    },
    { env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import ${PRELOAD}`.trim(), MCPMESH_TEST_MODULE_LIST: file } },
  );
  cleanups.add(() => agent.stop());
  await agent.waitForLog((l) => l.event === "crl_loaded");

  // An mTLS client through the SVID check and the CRL lookup.
  const c = await connectClient(agent.url, alice);
  cleanups.add(() => c.close());
  assert.ok((await c.client.listTools()).tools.length > 0);

  const idle = await modulesOf(agent.child.pid!, file);
  assert.ok(has(idle, "/node_modules/@peculiar/asn1-x509/"), "the module list is real: the asn1 layer is loaded");
  for (const h of HEAVY) assert.ok(!has(idle, h), `the agent loaded ${h}`);
  assert.ok(!has(idle, "/node_modules/ws/"), "ws was loaded before any WebSocket upgrade");

  // Two first upgrades at the same time: both wait for the same import, both get a working session.
  const wsUrl = agent.url.replace(/\/mcp$/, "/ws");
  const [a, b] = await Promise.all([rawWs(wsUrl, alice), rawWs(wsUrl, bob)]);
  cleanups.add(() => a.close());
  cleanups.add(() => b.close());
  for (const s of [a, b]) {
    const init = rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw-ws", version: "1" } });
    s.send(init);
    assert.equal((await s.inbox.reply(init.id)).result?.protocolVersion, "2025-06-18");
  }
  const after = await modulesOf(agent.child.pid!, file);
  assert.ok(has(after, "/node_modules/ws/"), "ws is loaded once WebSocket is used");
  for (const h of HEAVY) assert.ok(!has(after, h), `the agent loaded ${h}`);
});

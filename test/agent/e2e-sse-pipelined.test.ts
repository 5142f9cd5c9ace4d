/**
 * A pipelined SSE stream stalled for drain. HTTP/1.1 lets a client send a second request on a connection before the
 * first response ends; Node queues the second response without a socket, and when the connection closes that queued
 * ServerResponse never emits "close" (Node 20.20: only its request does). A relay that waits for the queued response's
 * "drain" or "close" would then wait forever and keep its upstream stream (and a pool connection) open.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:tls";
import type { AgentProcess } from "../helpers/agent-process.ts";
import { startFloodAgent, type FloodUpstream } from "../helpers/flood-upstream.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rawSession } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";
import { loadIdentity } from "../../identity/store.ts";


const cleanups = new Cleanups();
let up: FloodUpstream;
let agent: AgentProcess;
let alice: string;

before(async () => {
  ({ up, agent, alice } = await startFloodAgent(cleanups, "pipelined"));
});

after(() => cleanups.run());

async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("a client that pipelines two SSE streams and goes away: the agent closes both upstream streams", { timeout: 180_000 }, async () => {
  const f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  const s1 = await rawSession(f, agent.url, "2025-06-18");
  const s2 = await rawSession(f, agent.url, "2025-06-18");
  const id = loadIdentity(alice);
  const u = new URL(agent.url);
  const sock = connect({ host: u.hostname, port: Number(u.port), key: id.keyPem, cert: id.certPem, ca: id.rootsPem });
  cleanups.add(() => sock.destroy());
  await new Promise<void>((resolve, reject) => sock.once("secureConnect", resolve).once("error", reject));
  sock.pause(); // reads nothing: the first stream stalls, the second is queued behind it
  const get = (sid: string) => `GET ${u.pathname} HTTP/1.1\r\nhost: ${u.host}\r\naccept: text/event-stream\r\nmcp-session-id: ${sid}\r\nmcp-protocol-version: 2025-06-18\r\n\r\n`;
  sock.write(get(s1.sid) + get(s2.sid));
  await until(() => up.open() === 2, "both streams open upstream");
  // Let both relays fill what they may (the second into its queued response) and stall.
  let last = -1;
  while (up.written !== last) {
    last = up.written;
    await new Promise((r) => setTimeout(r, 2000));
  }
  assert.equal(up.finished, false);
  sock.destroy();
  await until(() => up.open() === 0, "the agent to close every upstream stream of the departed client", 30_000);
});

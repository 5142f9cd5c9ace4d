/**
 * End to end: a client that reads an SSE stream slowly must slow the upstream down, not make the agent hold the
 * stream in memory. The upstream here writes a 128 MB standalone stream as fast as its socket takes it (it waits for
 * "drain", as a well-behaved server does) and counts what it got rid of. While the client reads nothing, the upstream
 * must stall far short of the end; once the client reads, every event arrives, whole and in order.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { AgentProcess } from "../helpers/agent-process.ts";
import { FLOOD_EVENTS as EVENTS, FLOOD_PAYLOAD as PAYLOAD, startFloodAgent, type FloodUpstream } from "../helpers/flood-upstream.ts";
import { Cleanups } from "../helpers/cli.ts";
import { rawSession } from "../helpers/e2e.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

const TOTAL = EVENTS * (PAYLOAD.length + 100);

const cleanups = new Cleanups();
let up: FloodUpstream;
let agent: AgentProcess;
let alice: string;

before(async () => {
  ({ up, agent, alice } = await startFloodAgent(cleanups, "backpressure"));
});

after(() => cleanups.run());

/** Resolves once `read()` has not changed for `quietPolls` polls in a row (or `done()` is true). */
async function settled(read: () => number, done: () => boolean, quietPolls = 10, everyMs = 250): Promise<number> {
  let last = -1;
  let quiet = 0;
  while (!done() && quiet < quietPolls) {
    await new Promise((r) => setTimeout(r, everyMs));
    const now = read();
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
  return read();
}

test("a client that does not read stalls the upstream's stream; reading resumes it and nothing is lost", { timeout: 180_000 }, async () => {
  const f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  const s = await rawSession(f, agent.url, "2025-06-18");
  const res = await f(agent.url, { method: "GET", headers: { accept: "text/event-stream", "mcp-session-id": s.sid, "mcp-protocol-version": s.version } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);

  // The client reads nothing. Whatever the upstream got rid of sits in socket buffers (the kernel's, the agent's,
  // the client's): about 11-12 MB measured here. The stream is made large enough that even receive buffers grown to
  // a typical tcp_rmem maximum (32 MB) on both hops could not swallow it.
  const stalledAt = await settled(() => up.written, () => up.finished);
  assert.equal(up.finished, false, "the upstream wrote its whole stream while the client read nothing: the agent buffered it");
  assert.ok(stalledAt < TOTAL / 2, `the upstream wrote ${stalledAt} bytes of ~${TOTAL} before stalling`);

  // Now the client reads: every event arrives once, in order, intact.
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let next = 0;
  while (next < EVENTS) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = text.indexOf("\n\n")) >= 0) {
      const block = text.slice(0, cut);
      text = text.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      const m = JSON.parse(data);
      assert.equal(m.method, "notifications/message");
      assert.equal(m.params.data.seq, next, "events arrive in order, none lost or repeated");
      assert.equal(m.params.data.text, PAYLOAD);
      next++;
    }
  }
  await reader.cancel().catch(() => {});
  assert.equal(next, EVENTS);
  assert.equal(up.finished, true);
});

test("a client that goes away while its stream is stalled: the agent closes the upstream stream too", { timeout: 180_000 }, async () => {
  const f = createMeshFetch(alice);
  cleanups.add(() => f.close());
  const s = await rawSession(f, agent.url, "2025-06-18");
  up.written = 0;
  up.finished = false;
  const ac = new AbortController();
  const res = await f(agent.url, { method: "GET", signal: ac.signal, headers: { accept: "text/event-stream", "mcp-session-id": s.sid, "mcp-protocol-version": s.version } });
  assert.equal(res.status, 200);
  await settled(() => up.written, () => up.finished);
  assert.equal(up.finished, false);
  assert.equal(up.open(), 1, "the stalled stream is still open upstream");
  ac.abort();
  // A relay paused for "drain" must not keep the upstream stream open once its client is gone.
  while (up.open() > 0) await new Promise((r) => setTimeout(r, 100));
  assert.equal(up.finished, false);
});

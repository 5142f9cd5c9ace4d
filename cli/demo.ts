import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { connect as tlsConnect } from "node:tls";
import { Writable } from "node:stream";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { stringify } from "yaml";
import { Authority } from "../ca/authority.ts";
import { startCaServer } from "../ca/server.ts";
import { enroll } from "../identity/enroll.ts";
import { renewIdentity } from "../identity/renew.ts";
import { createMeshFetch, type MeshFetch } from "../identity/fetch.ts";
import { loadIdentity } from "../identity/store.ts";
import { loadAgentConfig } from "../agent/config.ts";
import { startAgent, type RunningAgent } from "../agent/agent.ts";
import { AuditLog, verifyAuditFiles, type AuditRecord, type AuditSink } from "../agent/audit.ts";
import { createLogger } from "../lib/log.ts";
import { freePort } from "../lib/net.ts";
import { MeshError } from "../lib/errors.ts";
import { normalizeSerial } from "../lib/x509.ts";
import { startNotesServer } from "../examples/notes-server/server.ts";

/**
 * `mcpmesh demo`: a whole mesh on this machine, run for real and checked step by step. A throwaway CA, an agent in
 * front of the unmodified notes MCP server (examples/notes-server), and three clients: a reader, a writer and an
 * outsider. Every step uses the same library calls as the real commands, states what happened and why (the rule or
 * refusal reason the agent itself reported) and whether that is what the mesh promises. The function prints nothing:
 * `onStep` receives each outcome and the CLI renders it.
 */

export const TRUST_DOMAIN = "demo.mesh";
export const DEMO_IDS = {
  agent: `spiffe://${TRUST_DOMAIN}/agents/notes`,
  reader: `spiffe://${TRUST_DOMAIN}/team/reader`,
  writer: `spiffe://${TRUST_DOMAIN}/team/writer`,
  outsider: `spiffe://${TRUST_DOMAIN}/guests/outsider`,
} as const;

/** Calls the reader may make to one tool per minute (rule `readers-read`), so the demo can show the limit biting. */
export const READER_RATE = 5;

export type DemoStepId =
  | "ca" | "enroll" | "agent" | "reader-list" | "reader-read" | "reader-write-denied" | "schema-rejected" | "writer-write"
  | "outsider-refused" | "rate-limit" | "revocation" | "rotation" | "audit";

export interface DemoStep {
  id: DemoStepId;
  title: string;
  /** The step behaved as the mesh promises. */
  ok: boolean;
  /** What happened, one line each. */
  what: string[];
  /** Why: the rule or refusal reason the agent reported. */
  why: string[];
  /** Set when the step did not behave as expected. */
  error?: string;
  /** Facts the test checks (counts, rule ids, reasons). */
  facts: Record<string, unknown>;
}

export interface DemoMesh {
  dir: string;
  caUrl: string;
  agentUrl: string;
  configFile: string;
  /** Identity directories (written as by `mcpmesh enroll`). */
  identities: { agent: string; reader: string; writer: string; outsider: string };
  /** Stops everything the demo started and removes its directory. */
  stop(): Promise<void>;
}

export interface DemoResult {
  ok: boolean;
  steps: DemoStep[];
  /** The first step that did not behave as expected. */
  failed?: DemoStep;
  /** With `keep`: the running mesh (the caller stops it). */
  mesh?: DemoMesh;
}

export interface DemoOptions {
  /** Leave the mesh running (result.mesh); default: stop everything and remove the directory. */
  keep?: boolean;
  /** Called with each step's outcome as soon as it is known. */
  onStep?: (s: DemoStep) => void;
  /** Aborting stops the demo at the next opportunity; everything started is stopped and removed. */
  signal?: AbortSignal;
  /** Changes the agent's configuration before it starts (tests: a mesh that misbehaves must fail its step). */
  agentConfig?: (config: Record<string, unknown>) => Record<string, unknown>;
}

class StepFailed extends Error {}
const expect = (cond: unknown, message: string): void => {
  if (!cond) throw new StepFailed(message);
};

/** A tee of the agent's audit: the real hash-chained file, plus the records in memory to explain each decision. */
class DemoAudit implements AuditSink {
  readonly records: AuditRecord[] = [];
  constructor(readonly file: AuditLog) {}
  record(r: AuditRecord): void {
    this.records.push(r);
    this.file.record(r);
  }
  flush(): Promise<void> {
    return this.file.flush();
  }
}

interface Session {
  client: Client;
  fetch: MeshFetch;
  close(): Promise<void>;
}

async function openSession(url: string, dir: string, expectId: string): Promise<Session> {
  const fetch = createMeshFetch(dir, { expect: expectId });
  const client = new Client({ name: "mcpmesh-demo", version: "1.0.0" });
  try {
    await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch }));
  } catch (e) {
    await fetch.close();
    throw e;
  }
  return { client, fetch, close: async () => { await client.close().catch(() => {}); await fetch.close(); } };
}

const firstText = (r: any): string => String(r?.content?.[0]?.text ?? JSON.stringify(r));
const short = (serial: string) => `${serial.slice(0, 10)}…`;

/** The serial of the certificate the agent presents on a fresh handshake. */
function agentSerial(url: string, idDir: string): Promise<string> {
  const id = loadIdentity(idDir);
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: u.hostname, port: Number(u.port), cert: id.certPem, key: id.keyPem, ca: id.rootsPem, checkServerIdentity: () => undefined }, () => {
      const serial = normalizeSerial(s.getPeerCertificate().serialNumber);
      s.destroy();
      resolve(serial);
    });
    s.on("error", reject);
  });
}

export async function runDemo(opts: DemoOptions = {}): Promise<DemoResult> {
  const dir = mkdtempSync(join(tmpdir(), "mcpmesh-demo-"));
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  const steps: DemoStep[] = [];
  let stopped = false;
  const stopAll = async () => {
    if (stopped) return;
    stopped = true;
    for (const c of cleanups.reverse()) await Promise.resolve().then(c).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };

  const run = async (id: DemoStepId, title: string, body: (s: DemoStep) => Promise<void>): Promise<boolean> => {
    if (opts.signal?.aborted) throw new MeshError("MCPMESH_INTERRUPTED", "interrupted");
    const s: DemoStep = { id, title, ok: false, what: [], why: [], facts: {} };
    try {
      await body(s);
      s.ok = true;
    } catch (e) {
      s.error = e instanceof StepFailed ? e.message : `unexpected error: ${(e as Error)?.message ?? String(e)}`;
    }
    steps.push(s);
    opts.onStep?.(s);
    return s.ok;
  };

  try {
    const ids = { agent: join(dir, "agent-id"), reader: join(dir, "reader-id"), writer: join(dir, "writer-id"), outsider: join(dir, "outsider-id") };
    let authority!: Authority;
    let caUrl = "";
    let agent!: RunningAgent;
    let notes!: Awaited<ReturnType<typeof startNotesServer>>;
    const configFile = join(dir, "agent.yaml");
    const auditFile = join(dir, "audit.log");
    const audit = new DemoAudit(new AuditLog({ file: auditFile }));
    cleanups.push(() => audit.file.close());
    // The agent's own log (handshake refusals, revocations, reloads) is kept in memory to say why things happened.
    const agentLog: any[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split("\n")) if (l) agentLog.push(JSON.parse(l));
        cb();
      },
    });
    const waitLog = async (pred: (l: any) => boolean, ms = 15_000): Promise<any> => {
      const until = Date.now() + ms;
      for (;;) {
        const hit = agentLog.find(pred);
        if (hit) return hit;
        if (Date.now() > until) return undefined;
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    const lastAudit = (pred: (r: AuditRecord) => boolean) => audit.records.filter(pred).pop();

    // Each step runs only if every step before it behaved (`&&`): later steps build on what earlier ones showed.
    const ok = (await run("ca", "A throwaway certificate authority", async (s) => {
      const caPort = await freePort();
      authority = await Authority.init({ dir: join(dir, "ca"), trustDomain: TRUST_DOMAIN, url: `https://127.0.0.1:${caPort}`, passphrase: randomBytes(18).toString("base64url") });
      cleanups.push(() => authority.close());
      const ca = await startCaServer({ authority });
      cleanups.push(() => ca.close());
      caUrl = ca.url;
      s.what.push(`working directory ${dir} (removed at the end)`);
      s.what.push(`root + intermediate keys (ECDSA P-256, encrypted at rest) for trust domain ${TRUST_DOMAIN}`);
      s.what.push(`CA API on ${ca.url}, root sha256:${authority.config.rootFingerprint.slice(0, 16)}…`);
      s.why.push("identities are SPIFFE IDs spiffe://demo.mesh/<path>, one URI SAN per certificate");
      s.facts.caUrl = ca.url;
    }))
      && (await run("enroll", "One-time tokens: an agent and three clients enroll", async (s) => {
        const who = [["agent", "agents/notes", "agent"], ["reader", "team/reader", "client"], ["writer", "team/writer", "client"], ["outsider", "guests/outsider", "client"]] as const;
        for (const [name, path, kind] of who) {
          const t = authority.createToken({ identity: path, kind, ips: kind === "agent" ? ["127.0.0.1"] : undefined });
          const r = await enroll(t.token, ids[name]);
          s.what.push(`${name.padEnd(8)} ${r.identity.padEnd(36)} cert ${short(r.serial)} until ${r.notAfter}`);
        }
        s.why.push("each party generated its own key; the CA signed a CSR for the identity bound to the single-use token");
      }))
      && (await run("agent", "The notes MCP server on loopback, the agent in front of it", async (s) => {
        notes = await startNotesServer();
        cleanups.push(() => notes.close());
        const agentPort = await freePort();
        const config = demoConfig({ port: agentPort, agentId: ids.agent, caUrl, upstream: notes.url, dir });
        writeFileSync(configFile, stringify(opts.agentConfig ? opts.agentConfig(config) : config));
        agent = await startAgent(loadAgentConfig(configFile), { logger: createLogger({ name: "mcpmesh-agent", level: "debug", destination: sink }), audit });
        cleanups.push(() => agent.close());
        expect(await waitLog((l) => l.event === "feed_connected"), "the agent did not subscribe to the CA's revocation feed");
        s.what.push(`notes server ${notes.url} (unchanged, knows nothing of mcpmesh)`);
        s.what.push(`agent ${agent.url}: TLS 1.3, client certificate required, subscribed to the CA's revocation feed`);
        s.why.push("readers-read:       team/reader may call read tools, 5 calls a minute per tool");
        s.why.push("writers-read-write: team/writer may call read and write tools");
        s.why.push("nobody-deletes:     nobody may call delete-* (deny wins)");
        s.why.push("add-note's title must match ^[a-z0-9-]+$ (operator schema on top of the server's own)");
        s.facts.agentUrl = agent.url;
      }));
    if (!ok) return await finish();

    const reader = await openSession(agent.url, ids.reader, DEMO_IDS.agent);
    cleanups.push(() => reader.close());
    const writer = await openSession(agent.url, ids.writer, DEMO_IDS.agent);
    cleanups.push(() => writer.close());

    await ((await run("reader-list", "The reader lists tools: only what it may call", async (s) => {
      const listed = (await reader.client.listTools()).tools.map((t) => t.name).sort();
      s.what.push(`tools/list shows the reader: ${listed.join(", ")} (the server has list-notes, read-note, add-note, delete-note)`);
      s.why.push("listings are filtered per caller: readers-read allows access class read only");
      s.facts.tools = listed;
      expect(JSON.stringify(listed) === JSON.stringify(["list-notes", "read-note"]), `expected list-notes, read-note; got ${listed.join(", ")}`);
    }))
      && (await run("reader-read", "The reader reads a note: allowed", async (s) => {
        const r: any = await reader.client.callTool({ name: "read-note", arguments: { title: "welcome" } });
        s.what.push(`read-note welcome → "${firstText(r)}"`);
        const a = lastAudit((x) => x.tool === "read-note" && x.identity === DEMO_IDS.reader);
        s.why.push(`allowed by rule ${a?.rule}: ${a?.reason}`);
        s.facts.rule = a?.rule;
        expect(!r.isError && a?.decision === "allow" && a.rule === "readers-read", "the read was not allowed by readers-read");
      }))
      && (await run("reader-write-denied", "The reader tries to write: denied, the server never sees it", async (s) => {
        const before = [...notes.notes.keys()].join(",");
        let code: number | undefined;
        try {
          await reader.client.callTool({ name: "add-note", arguments: { title: "sneaky", body: "x" } });
        } catch (e) {
          code = (e as { code?: number }).code;
          s.what.push(`add-note → JSON-RPC error ${code}: ${(e as Error).message}`);
        }
        const a = lastAudit((x) => x.tool === "add-note" && x.identity === DEMO_IDS.reader);
        s.why.push(`denied (${a?.rule ? `rule ${a.rule}` : "no rule allows it: default deny"}): ${a?.reason}`);
        s.what.push(`notes on the server unchanged: ${[...notes.notes.keys()].join(", ")}`);
        s.facts = { code, decision: a?.decision, reason: a?.reason };
        expect(code === -32602 && a?.decision === "deny" && [...notes.notes.keys()].join(",") === before, "the write was not refused as expected");
      }))
      && (await run("schema-rejected", "The writer sends a bad argument: rejected by the operator's schema", async (s) => {
        const r: any = await writer.client.callTool({ name: "add-note", arguments: { title: "../etc/passwd", body: "x" } }).catch((e: Error & { code?: number }) => ({ isError: true, code: e.code, content: [{ text: e.message }] }));
        s.what.push(`add-note title="../etc/passwd" → ${r.isError ? "rejected" : "ACCEPTED"}: ${firstText(r)}`);
        const a = lastAudit((x) => x.tool === "add-note" && x.identity === DEMO_IDS.writer);
        s.why.push(`${a?.decision}: ${a?.reason}`);
        s.facts = { decision: a?.decision, reason: a?.reason };
        expect(r.isError && a?.decision === "deny" && !notes.notes.has("../etc/passwd"), "the invalid argument was not rejected");
      }))
      && (await run("writer-write", "The writer adds a note: allowed; deleting it: denied", async (s) => {
        const r: any = await writer.client.callTool({ name: "add-note", arguments: { title: "plans", body: "ship the mesh" } });
        s.what.push(`add-note title=plans → "${firstText(r)}"; the server now has: ${[...notes.notes.keys()].join(", ")}`);
        const a = lastAudit((x) => x.tool === "add-note" && x.identity === DEMO_IDS.writer);
        s.why.push(`allowed by rule ${a?.rule}: ${a?.reason}`);
        s.facts.rule = a?.rule;
        expect(!r.isError && notes.notes.get("plans") === "ship the mesh" && a?.rule === "writers-read-write", "the writer's write did not go through");
        let code: number | undefined;
        try {
          await writer.client.callTool({ name: "delete-note", arguments: { title: "plans" } });
        } catch (e) {
          code = (e as { code?: number }).code;
        }
        const d = lastAudit((x) => x.tool === "delete-note" && x.identity === DEMO_IDS.writer);
        s.what.push(`delete-note title=plans → ${code === undefined ? "ALLOWED (!)" : `JSON-RPC error ${code}`}; the note is ${notes.notes.has("plans") ? "still there" : "GONE"}`);
        s.why.push(`denied by rule ${d?.rule}, although writers-read-write allows writes: a deny always wins`);
        s.facts.deleteRule = d?.rule;
        expect(code === -32602 && d?.decision === "deny" && d.rule === "nobody-deletes" && notes.notes.has("plans"), "delete-note was not denied by nobody-deletes");
      }))
      && (await run("outsider-refused", "The outsider holds a valid mesh certificate but no rule admits it", async (s) => {
        let connected = false;
        let err = "";
        try {
          const o = await openSession(agent.url, ids.outsider, DEMO_IDS.agent);
          connected = true;
          await o.close();
        } catch (e) {
          err = (e as Error).message.split("\n")[0];
        }
        s.what.push(connected ? "connected (!)" : `refused at the TLS handshake, before any HTTP or MCP byte (${err})`);
        const l = await waitLog((x) => x.event === "handshake_refused" && x.identity === DEMO_IDS.outsider, 5000);
        s.why.push(`the agent's log: handshake_refused, reason ${l?.reason}: ${l?.detail}`);
        s.facts.reason = l?.reason;
        expect(!connected && l, "the outsider was not refused at the handshake");
      }))
      && (await run("rate-limit", "The reader calls too often: the rate limit bites", async (s) => {
        let allowed = 0;
        let refusal: { code?: number; message: string; data?: any } | undefined;
        for (let i = 0; i < READER_RATE * 3 && !refusal; i++) {
          try {
            await reader.client.callTool({ name: "list-notes", arguments: {} });
            allowed++;
          } catch (e) {
            refusal = e as typeof refusal;
          }
        }
        s.what.push(`${allowed} list-notes calls allowed, then JSON-RPC error ${refusal?.code}: ${refusal?.message}`);
        const a = lastAudit((x) => x.tool === "list-notes" && x.decision === "deny");
        s.why.push(`rule readers-read has rate ${READER_RATE}/m per identity × tool: ${a?.reason}`);
        s.facts = { allowed, code: refusal?.code, reason: a?.reason };
        expect(refusal?.code === -32029 && allowed >= READER_RATE && allowed < READER_RATE * 2, "the rate limit did not bite as expected");
      }))
      && (await run("revocation", "The reader is revoked: its live connection is cut", async (s) => {
        // A stream that stays open, as an MCP client's standalone SSE stream does.
        const f = createMeshFetch(ids.reader, { expect: DEMO_IDS.agent });
        cleanups.push(() => f.close());
        const post = (body: unknown, headers: Record<string, string> = {}) =>
          f(agent.url, { method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers }, body: JSON.stringify(body) });
        const version = "2025-06-18";
        const init = await post({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: version, capabilities: {}, clientInfo: { name: "reader-stream", version: "1" } } });
        await init.text();
        const sid = init.headers.get("mcp-session-id") ?? "";
        expect(init.status === 200 && sid, `the reader could not open a session (HTTP ${init.status})`);
        const session = { "mcp-session-id": sid, "mcp-protocol-version": version };
        await (await post({ jsonrpc: "2.0", method: "notifications/initialized" }, session)).text();
        const stream = await f(agent.url, { method: "GET", headers: { accept: "text/event-stream", ...session } });
        expect(stream.status === 200, `the reader's stream did not open (HTTP ${stream.status})`);
        s.what.push("the reader holds an open SSE stream to the agent");
        const closed = (async () => {
          const r = stream.body!.getReader();
          try {
            for (;;) if ((await r.read()).done) break;
          } catch {
            // a reset ends the stream as an error: closed all the same
          }
          return Date.now();
        })();
        const t0 = Date.now();
        const serials = authority.revoke({ identity: "team/reader", reason: "keyCompromise" });
        s.what.push(`the CA revokes team/reader (what \`mcpmesh ca revoke --identity team/reader\` does): ${serials.length} certificate(s)`);
        const at = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 10_000).unref())]);
        expect(at > 0, "the stream was still open 10 s after the revocation");
        s.what.push(`the agent closed the stream ${at - t0} ms later`);
        const pushed = await waitLog((x) => x.event === "revocation_received" && x.identity === DEMO_IDS.reader);
        s.why.push(`the CA pushed the revocation over its live feed; the agent closed ${pushed?.connectionsClosed} connection(s)`);
        let again: string;
        try {
          await reader.client.callTool({ name: "read-note", arguments: { title: "welcome" } });
          again = "ALLOWED (!)";
        } catch (e) {
          again = `refused (${(e as Error).message.split("\n")[0]})`;
        }
        s.what.push(`the reader tries again: ${again}`);
        const refused = await waitLog((x) => x.event === "handshake_refused" && x.identity === DEMO_IDS.reader, 5000);
        s.why.push(`the agent's log: handshake_refused, reason ${refused?.reason}`);
        s.facts = { connectionsClosed: pushed?.connectionsClosed, reason: refused?.reason, closedAfterMs: at - t0 };
        expect(pushed && refused?.reason === "revoked" && !again.startsWith("ALLOWED"), "the revoked reader was not cut off");
      }))
      && (await run("rotation", "Rotation under traffic: the agent and the writer renew while the writer keeps calling", async (s) => {
        let calls = 0;
        const failures: string[] = [];
        let running = true;
        const traffic = (async () => {
          while (running) {
            try {
              const r: any = await writer.client.callTool({ name: "list-notes", arguments: {} });
              if (r.isError) failures.push(firstText(r));
              calls++;
            } catch (e) {
              failures.push((e as Error).message);
            }
          }
        })();
        const waitCalls = async (n: number) => {
          const target = calls + n;
          while (calls < target && failures.length === 0) await new Promise((r) => setTimeout(r, 10));
        };
        try {
          await waitCalls(5);
          const agentBefore = await agentSerial(agent.url, ids.writer);
          const ar = await renewIdentity(ids.agent);
          await agent.reload("demo");
          const agentAfter = await agentSerial(agent.url, ids.writer);
          s.what.push(`agent renewed over mTLS: ${short(ar.previousSerial)} → ${short(ar.serial)}; new handshakes get ${short(agentAfter)}`);
          await waitCalls(5);
          const wr = await renewIdentity(ids.writer);
          s.what.push(`writer renewed over mTLS: ${short(wr.previousSerial)} → ${short(wr.serial)}; its next connections use the new certificate`);
          await waitCalls(5);
          s.facts = { agentBefore, agentAfter, agentSerial: ar.serial, writerSerial: wr.serial };
          expect(agentBefore !== agentAfter && agentAfter === normalizeSerial(ar.serial), "the agent does not present its renewed certificate");
        } finally {
          running = false;
          await traffic;
        }
        s.what.push(`${calls} calls during the rotation, ${failures.length} failed`);
        s.why.push("each side got a new key and certificate; the agent swapped its certificate for new handshakes without touching open connections");
        s.facts.calls = calls;
        s.facts.failed = failures.length;
        expect(failures.length === 0, `calls failed during the rotation: ${failures[0]}`);
      }))
      && (await run("audit", "Every decision is in the hash-chained audit log", async (s) => {
        await audit.flush();
        const v = verifyAuditFiles([auditFile]);
        const calls = audit.records.filter((r) => r.method === "tools/call");
        const denied = calls.filter((r) => r.decision === "deny").length;
        s.what.push(`${v.records} records (${calls.length} tool calls, ${denied} denied) in ${auditFile}; chain ${v.ok ? "intact" : "BROKEN"}`);
        s.why.push("argument values are hashed, never logged; `mcpmesh audit verify` checks the chain");
        s.facts = { records: v.records, ok: v.ok };
        expect(v.ok && v.records > 0, "the audit chain does not verify");
      })));
    return await finish();

    async function finish(): Promise<DemoResult> {
      const failed = steps.find((x) => !x.ok);
      if (opts.keep && !failed && !opts.signal?.aborted) {
        return { ok: true, steps, mesh: { dir, caUrl, agentUrl: agent.url, configFile, identities: ids, stop: stopAll } };
      }
      await stopAll();
      return { ok: !failed, steps, failed };
    }
  } catch (e) {
    await stopAll();
    throw e;
  }
}

/** The demo agent's configuration (also what `--keep` leaves running; see examples/notes-server/agent.yaml). */
export function demoConfig(o: { port: number; agentId: string; caUrl: string; upstream: string; dir: string }): Record<string, unknown> {
  return {
    listen: `127.0.0.1:${o.port}`,
    identity: o.agentId,
    ca: o.caUrl,
    upstream: { url: o.upstream },
    tools: {
      "list-notes": { access: "read" },
      "read-note": { access: "read" },
      "add-note": { access: "write", schema: { properties: { title: { type: "string", pattern: "^[a-z0-9-]+$" } } } },
      "delete-note": { access: "write" },
    },
    rules: [
      { id: "readers-read", clients: [DEMO_IDS.reader], access: ["read"], rate: `${READER_RATE}/m` },
      { id: "writers-read-write", clients: [DEMO_IDS.writer], access: ["read", "write"] },
      { id: "nobody-deletes", clients: ["*"], tools: ["delete-*"], effect: "deny" },
    ],
    pinning: { file: join(o.dir, "pins.json") },
    reload: { watch: false },
  };
}

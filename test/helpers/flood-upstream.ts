/**
 * A flooding upstream for backpressure tests: just enough Streamable HTTP (initialize, the initialized notification)
 * and a GET stream of FLOOD_EVENTS log messages of FLOOD_PAYLOAD each, written as fast as the socket takes them (it
 * waits for "drain", as a well-behaved server does), counting what it got rid of. `startFloodAgent` puts a real agent
 * process in front of it, with one client identity.
 */
import { createServer, type ServerResponse } from "node:http";
import { join } from "node:path";
import { createMesh, type TestMesh } from "./mesh.ts";
import { startAgentProcess, type AgentProcess } from "./agent-process.ts";
import type { Cleanups } from "./cli.ts";

export const FLOOD_EVENTS = 8192;
export const FLOOD_PAYLOAD = "x".repeat(16 * 1024);

export interface FloodUpstream {
  url: string;
  written: number;
  finished: boolean;
  /** Streams the upstream is still serving. */
  open(): number;
  close(): Promise<void>;
}

export async function startFloodUpstream(): Promise<FloodUpstream> {
  const state = { written: 0, finished: false };
  const streams = new Set<ServerResponse>();
  const flood = async (res: ServerResponse) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (let i = 0; i < FLOOD_EVENTS && !res.destroyed; i++) {
      const ev = `event: message\ndata: ${JSON.stringify({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: { seq: i, text: FLOOD_PAYLOAD } } })}\n\n`;
      if (!res.write(ev)) await new Promise<void>((resolve) => {
        const done = () => {
          res.off("drain", done);
          res.off("close", done);
          resolve();
        };
        res.on("drain", done);
        res.on("close", done);
      });
      state.written += ev.length;
    }
    if (!res.destroyed) {
      state.finished = true;
      res.end();
    }
  };
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    if (req.method === "GET") {
      streams.add(res);
      res.on("close", () => streams.delete(res));
      void flood(res);
      return;
    }
    if (req.method === "DELETE") return void res.writeHead(200).end();
    const msg = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (msg.method === "initialize") {
      res.writeHead(200, { "content-type": "application/json", "mcp-session-id": "flood-session" });
      res.end(JSON.stringify({ jsonrpc: "2.0", id: msg.id, result: { protocolVersion: msg.params.protocolVersion, capabilities: { logging: {} }, serverInfo: { name: "flood", version: "1" } } }));
      return;
    }
    res.writeHead(202).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return Object.assign(state, {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/mcp`,
    open: () => streams.size,
    async close() {
      for (const r of streams) r.destroy();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  });
}

export interface FloodFixture {
  mesh: TestMesh;
  up: FloodUpstream;
  agent: AgentProcess;
  /** Identity directory of spiffe://example.org/team-a/alice, allowed every tool. */
  alice: string;
}

export async function startFloodAgent(cleanups: Cleanups, name: string): Promise<FloodFixture> {
  const mesh = await createMesh();
  cleanups.add(() => mesh.close());
  const up = await startFloodUpstream();
  cleanups.add(() => up.close());
  const agentDir = await mesh.issue(`agents/${name}`, { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["*"] }],
    pinning: { file: join(mesh.dir, `pins-${name}.json`) },
  });
  cleanups.add(() => agent.stop());
  return { mesh, up, agent, alice };
}

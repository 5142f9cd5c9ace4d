/**
 * A small, unmodified MCP server to put behind an agent: notes with read tools (list-notes, read-note) and tools that
 * change things (add-note, delete-note). It uses the SDK's low-level Server with plain JSON Schemas, listens on
 * loopback only, and knows nothing of mcpmesh.
 *
 *   node --import tsx examples/notes-server/server.ts [port]      # serves http://127.0.0.1:PORT/mcp
 */
import { createServer, type Server as HttpServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const TOOLS = [
  { name: "list-notes", description: "List the titles of all notes", inputSchema: { type: "object", properties: {}, additionalProperties: false }, annotations: { readOnlyHint: true } },
  { name: "read-note", description: "Read one note", inputSchema: { type: "object", properties: { title: { type: "string", maxLength: 100 } }, required: ["title"] }, annotations: { readOnlyHint: true } },
  { name: "add-note", description: "Add a note", inputSchema: { type: "object", properties: { title: { type: "string", maxLength: 100 }, body: { type: "string", maxLength: 10000 } }, required: ["title", "body"] } },
  { name: "delete-note", description: "Delete a note", inputSchema: { type: "object", properties: { title: { type: "string" } }, required: ["title"] }, annotations: { destructiveHint: true } },
];

export function createNotesMcpServer(notes: Map<string, string>): Server {
  const server = new Server({ name: "notes", version: "1.0.0" }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (req) => {
    const args = (req.params.arguments ?? {}) as Record<string, string>;
    const text = (t: string, isError = false) => ({ content: [{ type: "text" as const, text: t }], isError });
    switch (req.params.name) {
      case "list-notes":
        return text([...notes.keys()].join("\n") || "(no notes)");
      case "read-note":
        return notes.has(args.title) ? text(notes.get(args.title)!) : text(`no note "${args.title}"`, true);
      case "add-note":
        notes.set(args.title, args.body);
        return text(`added "${args.title}"`);
      case "delete-note":
        return notes.delete(args.title) ? text(`deleted "${args.title}"`) : text(`no note "${args.title}"`, true);
      default:
        return text(`unknown tool ${req.params.name}`, true);
    }
  });
  return server;
}

/** Serves the notes server over Streamable HTTP (stateful) on 127.0.0.1. */
export async function startNotesServer(port = 0): Promise<{ url: string; notes: Map<string, string>; close(): Promise<void> }> {
  const notes = new Map<string, string>([["welcome", "This note lives on a server only the mesh can reach."]]);
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const http: HttpServer = createServer(async (req, res) => {
    const sid = req.headers["mcp-session-id"];
    let t = typeof sid === "string" ? transports.get(sid) : undefined;
    if (!t) {
      if (typeof sid === "string") {
        res.writeHead(404).end();
        return;
      }
      const created: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(), onsessioninitialized: (id) => void transports.set(id, created) });
      created.onclose = () => void (created.sessionId && transports.delete(created.sessionId));
      await createNotesMcpServer(notes).connect(created);
      t = created;
    }
    await t.handleRequest(req, res);
  });
  await new Promise<void>((resolve) => http.listen(port, "127.0.0.1", () => resolve()));
  const actual = (http.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${actual}/mcp`,
    notes,
    close: async () => {
      for (const t of transports.values()) await t.close().catch(() => {});
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const s = await startNotesServer(Number(process.argv[2] ?? 3001));
  console.log(`notes MCP server on ${s.url}`);
}

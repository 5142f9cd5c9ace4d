/**
 * An MCP server with the tools, resources and prompts that `@modelcontextprotocol/conformance server` scenarios call
 * (names, texts and URIs are the scenarios' interface), written for this project on the SDK's McpServer and
 * StreamableHTTPServerTransport: stateful, resumable (an in-memory event store), on 127.0.0.1 only.
 */
import { createServer, type Server } from "node:http";
import { randomUUID } from "node:crypto";
import { z } from "zod";
import { McpServer, ResourceTemplate } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport, type EventStore } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { ElicitResultSchema, ListToolsRequestSchema, CreateMessageResultSchema, type JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";

const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Events per stream, in order, so a client that lost a stream can resume after its Last-Event-ID. */
class MemoryEventStore implements EventStore {
  readonly #events: { id: string; stream: string; message: JSONRPCMessage }[] = [];
  #seq = 0;
  async storeEvent(stream: string, message: JSONRPCMessage): Promise<string> {
    const id = `${stream}_${String(++this.#seq).padStart(10, "0")}`;
    this.#events.push({ id, stream, message });
    return id;
  }
  async replayEventsAfter(lastEventId: string, { send }: { send: (id: string, message: JSONRPCMessage) => Promise<void> }): Promise<string> {
    const at = this.#events.findIndex((e) => e.id === lastEventId);
    if (at < 0) throw new Error(`unknown event id ${lastEventId}`);
    const stream = this.#events[at].stream;
    for (const e of this.#events.slice(at + 1)) if (e.stream === stream && Object.keys(e.message).length > 0) await send(e.id, e.message);
    return stream;
  }
}

function build(transports: Map<string, StreamableHTTPServerTransport>): McpServer {
  const s = new McpServer({ name: "mcpmesh-conformance-server", version: "1.0.0" }, {
    capabilities: { tools: { listChanged: true }, resources: { subscribe: true, listChanged: true }, prompts: { listChanged: true }, logging: {}, completions: {} },
  });
  const text = (t: string) => ({ content: [{ type: "text" as const, text: t }] });
  s.registerTool("test_simple_text", { description: "Simple text" }, async () => text("This is a simple text response for testing."));
  s.registerTool("test_image_content", { description: "Image" }, async () => ({ content: [{ type: "image", data: PNG, mimeType: "image/png" }] }));
  s.registerTool("test_audio_content", { description: "Audio" }, async () => ({ content: [{ type: "audio", data: WAV, mimeType: "audio/wav" }] }));
  s.registerTool("test_embedded_resource", { description: "Embedded resource" }, async () => ({
    content: [{ type: "resource", resource: { uri: "test://embedded-resource", mimeType: "text/plain", text: "This is an embedded resource content." } }],
  }));
  s.registerTool("test_multiple_content_types", { description: "Mixed content" }, async () => ({
    content: [
      { type: "text", text: "Multiple content types test:" },
      { type: "image", data: PNG, mimeType: "image/png" },
      { type: "resource", resource: { uri: "test://mixed-content-resource", mimeType: "application/json", text: JSON.stringify({ test: "data", value: 123 }) } },
    ],
  }));
  s.registerTool("test_tool_with_logging", { description: "Logs while running", inputSchema: {} }, async (_a, extra) => {
    for (const data of ["Tool execution started", "Tool processing data", "Tool execution completed"]) {
      await extra.sendNotification({ method: "notifications/message", params: { level: "info", data } });
      await sleep(30);
    }
    return text("Tool with logging executed successfully");
  });
  s.registerTool("test_tool_with_progress", { description: "Reports progress", inputSchema: {} }, async (_a, extra) => {
    const progressToken = extra._meta?.progressToken ?? 0;
    for (const progress of [0, 50, 100]) {
      await extra.sendNotification({ method: "notifications/progress", params: { progressToken, progress, total: 100, message: `Completed step ${progress} of 100` } });
      await sleep(30);
    }
    return text(String(progressToken));
  });
  s.registerTool("test_error_handling", { description: "Fails" }, async () => {
    throw new Error("This tool intentionally returns an error for testing");
  });
  s.registerTool("test_reconnection", { description: "Closes its SSE stream mid-call", inputSchema: {} }, async (_a, extra) => {
    const t = extra.sessionId ? transports.get(extra.sessionId) : undefined;
    if (t && extra.requestId !== undefined) t.closeSSEStream(extra.requestId);
    await sleep(100);
    return text("Reconnection test completed successfully. If you received this, the client properly reconnected after stream closure.");
  });
  s.registerTool("test_sampling", { description: "Asks the client's LLM", inputSchema: { prompt: z.string() } }, async ({ prompt }, extra) => {
    const r = await extra.sendRequest({ method: "sampling/createMessage", params: { messages: [{ role: "user", content: { type: "text", text: prompt } }], maxTokens: 100 } }, CreateMessageResultSchema);
    return text(`LLM response: ${(r.content as { text?: string }).text ?? "No response"}`);
  });
  const elicit = (message: string, requestedSchema: Record<string, unknown>) => async (_a: unknown, extra: any) => {
    const r = await extra.sendRequest({ method: "elicitation/create", params: { mode: "form", message, requestedSchema } }, ElicitResultSchema);
    return text(`User response: action=${r.action}, content=${JSON.stringify(r.content ?? {})}`);
  };
  s.registerTool("test_elicitation", { description: "Asks the user", inputSchema: { message: z.string() } }, async ({ message }, extra) =>
    elicit(message, { type: "object", properties: { response: { type: "string", description: "User's response" } }, required: ["response"] })(undefined, extra));
  s.registerTool("test_elicitation_sep1034_defaults", { description: "Elicitation with defaults", inputSchema: {} }, elicit("Please review and update the form fields with defaults", {
    type: "object",
    properties: {
      name: { type: "string", description: "User name", default: "John Doe" },
      age: { type: "integer", description: "User age", default: 30 },
      score: { type: "number", description: "User score", default: 95.5 },
      status: { type: "string", description: "User status", enum: ["active", "inactive", "pending"], default: "active" },
      verified: { type: "boolean", description: "Verification status", default: true },
    },
    required: [],
  }));
  s.registerTool("test_elicitation_sep1330_enums", { description: "Elicitation with enums", inputSchema: {} }, elicit("Please select options from the enum fields", {
    type: "object",
    properties: {
      untitledSingle: { type: "string", description: "Select one option", enum: ["option1", "option2", "option3"] },
      titledSingle: { type: "string", description: "Select one option with titles", oneOf: [{ const: "value1", title: "First Option" }, { const: "value2", title: "Second Option" }, { const: "value3", title: "Third Option" }] },
      legacyEnum: { type: "string", description: "Select one option (legacy)", enum: ["opt1", "opt2", "opt3"], enumNames: ["Option One", "Option Two", "Option Three"] },
      untitledMulti: { type: "array", description: "Select multiple options", minItems: 1, maxItems: 3, items: { type: "string", enum: ["option1", "option2", "option3"] } },
      titledMulti: { type: "array", description: "Select multiple options with titles", minItems: 1, maxItems: 3, items: { anyOf: [{ const: "value1", title: "First Choice" }, { const: "value2", title: "Second Choice" }, { const: "value3", title: "Third Choice" }] } },
    },
    required: [],
  }));
  s.registerTool("json_schema_2020_12_tool", { description: "JSON Schema 2020-12", inputSchema: { name: z.string().optional(), address: z.object({ street: z.string().optional(), city: z.string().optional() }).optional() } },
    async (args) => text(`JSON Schema 2020-12 tool called with: ${JSON.stringify(args)}`));

  s.registerResource("static-text", "test://static-text", { title: "Static Text Resource", mimeType: "text/plain" }, async () => ({
    contents: [{ uri: "test://static-text", mimeType: "text/plain", text: "This is the content of the static text resource." }],
  }));
  s.registerResource("static-binary", "test://static-binary", { title: "Static Binary Resource", mimeType: "image/png" }, async () => ({
    contents: [{ uri: "test://static-binary", mimeType: "image/png", blob: PNG }],
  }));
  s.registerResource("template", new ResourceTemplate("test://template/{id}/data", { list: undefined }), { title: "Resource Template", mimeType: "application/json" }, async (uri, { id }) => ({
    contents: [{ uri: uri.toString(), mimeType: "application/json", text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) }],
  }));
  s.registerResource("watched-resource", "test://watched-resource", { title: "Watched Resource", mimeType: "text/plain" }, async () => ({
    contents: [{ uri: "test://watched-resource", mimeType: "text/plain", text: "Watched resource content" }],
  }));
  const log = (data: string) => s.server.notification({ method: "notifications/message", params: { level: "info", logger: "conformance", data } }).catch(() => {});
  s.server.setRequestHandler(z.object({ method: z.literal("resources/subscribe"), params: z.object({ uri: z.string() }).passthrough() }).passthrough(), async (r) => {
    void log(`Subscribed to resource: ${r.params.uri}`);
    return {};
  });
  s.server.setRequestHandler(z.object({ method: z.literal("resources/unsubscribe"), params: z.object({ uri: z.string() }).passthrough() }).passthrough(), async (r) => {
    void log(`Unsubscribed from resource: ${r.params.uri}`);
    return {};
  });

  const user = (content: unknown) => ({ role: "user" as const, content: content as { type: "text"; text: string } });
  s.registerPrompt("test_simple_prompt", { description: "No arguments" }, async () => ({ messages: [user({ type: "text", text: "This is a simple prompt for testing." })] }));
  s.registerPrompt("test_prompt_with_arguments", { description: "Two arguments", argsSchema: { arg1: z.string(), arg2: z.string() } }, async ({ arg1, arg2 }) => ({
    messages: [user({ type: "text", text: `Prompt with arguments: arg1='${arg1}', arg2='${arg2}'` })],
  }));
  s.registerPrompt("test_prompt_with_embedded_resource", { description: "Embeds a resource", argsSchema: { resourceUri: z.string() } }, async ({ resourceUri }) => ({
    messages: [user({ type: "resource", resource: { uri: resourceUri, mimeType: "text/plain", text: "Embedded resource content for testing." } }), user({ type: "text", text: "Please process the embedded resource above." })],
  }));
  s.registerPrompt("test_prompt_with_image", { description: "Includes an image" }, async () => ({
    messages: [user({ type: "image", data: PNG, mimeType: "image/png" }), user({ type: "text", text: "Please analyze the image above." })],
  }));

  s.server.setRequestHandler(z.object({ method: z.literal("logging/setLevel"), params: z.object({ level: z.string() }).passthrough() }).passthrough(), async (r) => {
    void log(`Log level set to: ${r.params.level}`);
    return {};
  });
  s.server.setRequestHandler(z.object({ method: z.literal("completion/complete") }).passthrough(), async () => ({ completion: { values: [], total: 0, hasMore: false } }));
  // The 2020-12 scenario checks that $schema, $defs and additionalProperties survive tools/list as written.
  const listTools = (s.server as any)._requestHandlers.get("tools/list");
  s.server.setRequestHandler(ListToolsRequestSchema, async (req, extra) => {
    const r = await listTools(req, extra);
    for (const t of r.tools) {
      if (t.name === "json_schema_2020_12_tool") {
        t.inputSchema = {
          $schema: "https://json-schema.org/draft/2020-12/schema",
          type: "object",
          $defs: { address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } } },
          properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
          additionalProperties: false,
        };
      }
    }
    return r;
  });
  return s;
}

export interface ConformanceServer {
  url: string;
  close(): Promise<void>;
}

export async function startConformanceServer(): Promise<ConformanceServer> {
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const http: Server = createServer(async (req, res) => {
    if (new URL(req.url ?? "/", "http://x").pathname !== "/mcp") {
      res.writeHead(404).end();
      return;
    }
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    let body: unknown;
    try {
      body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : undefined;
    } catch {
      res.writeHead(400, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } }));
      return;
    }
    const sid = req.headers["mcp-session-id"];
    let t = typeof sid === "string" ? transports.get(sid) : undefined;
    if (!t) {
      if (sid !== undefined || req.method !== "POST" || (body as { method?: string } | undefined)?.method !== "initialize") {
        res.writeHead(sid !== undefined ? 404 : 400, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32000, message: sid !== undefined ? "Session not found" : "Bad Request: no session" } }));
        return;
      }
      const port = (http.address() as { port: number }).port;
      const fresh: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: new MemoryEventStore(),
        retryInterval: 2000,
        enableDnsRebindingProtection: true,
        allowedHosts: [`127.0.0.1:${port}`, `localhost:${port}`],
        onsessioninitialized: (id) => void transports.set(id, fresh),
      });
      fresh.onclose = () => {
        if (fresh.sessionId) transports.delete(fresh.sessionId);
      };
      await build(transports).connect(fresh);
      t = fresh;
    }
    await t.handleRequest(req, res, body);
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
  return {
    url: `http://127.0.0.1:${(http.address() as { port: number }).port}/mcp`,
    async close() {
      for (const t of transports.values()) await t.close().catch(() => {});
      await new Promise<void>((r) => {
        http.close(() => r());
        http.closeAllConnections();
      });
    },
  };
}

/**
 * A multi-tenant MCP server that trusts its `tenant` argument, as many do: it serves whatever tenant the caller names.
 * Put behind the agent with examples/multi-tenant/agent.yaml, each caller is confined to the tenant in its own SPIFFE
 * ID. Knows nothing of mcpmesh; loopback only.
 *
 *   node --import tsx examples/multi-tenant/server.ts [port]      # serves http://127.0.0.1:PORT/mcp
 */
import { createServer } from "node:http";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const tenant = { type: "string", pattern: "^[a-z0-9-]+$" };
const TOOLS = [
  { name: "list-invoices", description: "List a tenant's invoices", inputSchema: { type: "object", properties: { tenant }, required: ["tenant"], additionalProperties: false } },
  { name: "add-invoice", description: "Add an invoice to a tenant", inputSchema: { type: "object", properties: { tenant, id: { type: "string", maxLength: 40 }, amount: { type: "number" } }, required: ["tenant", "id", "amount"], additionalProperties: false } },
];

const invoices = new Map<string, { id: string; amount: number }[]>([
  ["acme", [{ id: "A-1", amount: 1200 }]],
  ["globex", [{ id: "G-1", amount: 99000 }, { id: "G-2", amount: 450 }]],
]);

function mcpServer(): Server {
  const server = new Server({ name: "invoices", version: "1.0.0" }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (req) => {
    const a = (req.params.arguments ?? {}) as { tenant: string; id: string; amount: number };
    const list = invoices.get(a.tenant) ?? [];
    if (req.params.name === "add-invoice") {
      invoices.set(a.tenant, [...list, { id: a.id, amount: a.amount }]);
      return { content: [{ type: "text", text: `added ${a.id} to ${a.tenant}` }] };
    }
    return { content: [{ type: "text", text: JSON.stringify(list) }] };
  });
  return server;
}

// Stateless: one server and transport per request (the agent keeps the caller's session).
const http = createServer(async (req, res) => {
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on("close", () => void transport.close());
  await mcpServer().connect(transport);
  await transport.handleRequest(req, res);
});
http.listen(Number(process.argv[2] ?? 3002), "127.0.0.1", () => {
  console.log(`invoices MCP server on http://127.0.0.1:${(http.address() as { port: number }).port}/mcp`);
});

import { z } from "zod";
import type { McpServer, RegisteredTool } from "@modelcontextprotocol/sdk/server/mcp.js";

/**
 * The tools every test upstream registers (Streamable HTTP, legacy SSE, stdio), defined once so the transport matrix
 * compares like with like: read, write, identity-bound arguments, progress + logging, and `hold`.
 */
export interface TestToolState {
  /** Description overrides (a "rug pull"), applied to servers built after the change too. */
  descriptions: Map<string, string>;
  /** Resolvers of `hold` calls now waiting. */
  waiting: (() => void)[];
}

export function newToolState(): TestToolState {
  return { descriptions: new Map(), waiting: [] };
}

export function releaseHeld(state: TestToolState): void {
  const w = state.waiting;
  state.waiting = [];
  for (const r of w) r();
}

export function buildTestServer(
  server: McpServer,
  state: TestToolState,
): Map<string, RegisteredTool> {
  const tools = new Map<string, RegisteredTool>();
  tools.set("echo", server.registerTool("echo", { description: state.descriptions.get("echo") ?? "Echoes its input", inputSchema: { text: z.string().max(1000) }, annotations: { readOnlyHint: true } },
    async ({ text }) => ({ content: [{ type: "text", text }] })));
  tools.set("get-weather", server.registerTool("get-weather", { description: "Weather for a city", inputSchema: { city: z.string() }, annotations: { readOnlyHint: true } },
    async ({ city }) => ({ content: [{ type: "text", text: `sunny in ${city}` }] })));
  tools.set("add", server.registerTool("add", { description: "Adds two numbers", inputSchema: { a: z.number(), b: z.number() } },
    async ({ a, b }) => ({ content: [{ type: "text", text: String(a + b) }] })));
  tools.set("delete-file", server.registerTool("delete-file", { description: "Deletes a file", inputSchema: { path: z.string() }, annotations: { readOnlyHint: false, destructiveHint: true } },
    async ({ path }) => ({ content: [{ type: "text", text: `deleted ${path}` }] })));
  tools.set("tenant-report", server.registerTool("tenant-report", { description: "Report for one tenant", inputSchema: { tenant: z.string(), month: z.string().optional() } },
    async ({ tenant }) => ({ content: [{ type: "text", text: `report for ${tenant}` }] })));
  tools.set("slow-count", server.registerTool("slow-count", { description: "Counts with progress", inputSchema: { steps: z.number().int().min(1).max(10) } },
    async ({ steps }, extra) => {
      const token = extra._meta?.progressToken;
      for (let i = 1; i <= steps; i++) {
        if (token !== undefined) await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress: i, total: steps } });
      }
      await server.server.sendLoggingMessage({ level: "info", data: `counted to ${steps}` }, extra.sessionId);
      return { content: [{ type: "text", text: `counted ${steps}` }] };
    }));
  tools.set("hold", server.registerTool("hold", { description: "Waits until the test releases it", inputSchema: {} },
    async () => {
      await new Promise<void>((resolve) => state.waiting.push(resolve));
      return { content: [{ type: "text", text: "released" }] };
    }));
  return tools;
}

/** The name and capabilities every test upstream announces. */
export const TEST_SERVER_INFO = { name: "test-upstream", version: "1.0.0" } as const;
export const TEST_SERVER_OPTIONS = { capabilities: { tools: { listChanged: true }, logging: {} } } as const;

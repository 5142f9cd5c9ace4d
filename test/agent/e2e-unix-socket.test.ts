import { test, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";
import { createMeshFetch } from "../../identity/fetch.ts";

// The upstream listens only on a unix socket: no TCP port exists to reach it around the agent.
test("an upstream on a unix socket is reached through the agent", async () => {
  const mesh = await createMesh();
  after(() => mesh.close());
  const socketPath = join(mesh.dir, "upstream.sock");
  const upstream = await startMcpServer({ socketPath });
  after(() => upstream.close());
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: await mesh.issue("agents/unix", { kind: "agent" }),
    upstream: { url: upstream.url, socket: socketPath },
    rules: [{ clients: ["spiffe://example.org/team-a/*"], tools: ["echo"] }],
    pinning: { file: join(mesh.dir, "pins.json") },
  });
  after(() => agent.stop());
  const fetch = createMeshFetch(await mesh.issue("team-a/alice"));
  after(() => fetch.close());
  const client = new Client({ name: "t", version: "1" });
  await client.connect(new StreamableHTTPClientTransport(new URL(agent.url), { fetch }));
  after(() => client.close());

  assert.deepEqual((await client.listTools()).tools.map((t) => t.name), ["echo"]);
  assert.deepEqual(await client.callTool({ name: "echo", arguments: { text: "over a socket" } }), { content: [{ type: "text", text: "over a socket" }] });
  await assert.rejects(client.callTool({ name: "add", arguments: { a: 1, b: 2 } }), /Unknown tool: add/);
  assert.deepEqual(upstream.received.flatMap((r) => r.toolCalls), ["echo"]);
});

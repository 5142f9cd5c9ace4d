/**
 * The documented library entry (`import … from "mcpmesh"`, package.json "exports" → lib/index.ts) works with the SDK
 * client: createMeshFetch as a Streamable HTTP transport's fetch reaches a real agent, and `expect` pins its identity.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMeshFetch, startConnect, MeshWebSocketTransport, RenewalScheduler, PeerRejectedError } from "mcpmesh";
import { createMesh } from "../helpers/mesh.ts";
import { startMcpServer } from "../helpers/mcp-server.ts";
import { startAgentProcess } from "../helpers/agent-process.ts";

const TD = "spiffe://example.org";

test("the library entry point: createMeshFetch from \"mcpmesh\" as the SDK transport's fetch", async () => {
  assert.equal(typeof startConnect, "function");
  assert.equal(typeof MeshWebSocketTransport, "function");
  assert.equal(typeof RenewalScheduler, "function");
  const mesh = await createMesh();
  after(() => mesh.close());
  const up = await startMcpServer();
  after(() => up.close());
  const agentDir = await mesh.issue("agents/weather", { kind: "agent" });
  const alice = await mesh.issue("team-a/alice");
  const agent = await startAgentProcess(mesh.dir, {
    listen: "127.0.0.1:0",
    identity: agentDir,
    upstream: { url: up.url },
    rules: [{ id: "team-a", clients: [`${TD}/team-a/*`], tools: ["echo"] }],
  });
  after(() => agent.stop());

  const fetch = createMeshFetch(alice, { expect: `${TD}/agents/weather` });
  after(() => fetch.close());
  const client = new Client({ name: "library", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(agent.url), { fetch }));
  after(() => client.close());
  assert.deepEqual((await client.listTools()).tools.map((t) => t.name), ["echo"]);
  assert.deepEqual((await client.callTool({ name: "echo", arguments: { text: "lib" } })).content, [{ type: "text", text: "lib" }]);

  const wrong = createMeshFetch(alice, { expect: `${TD}/agents/payments` });
  after(() => wrong.close());
  const err = await wrong(agent.url, { method: "POST", body: "{}" }).then(() => null, (e: Error) => e);
  assert.ok(err, "a fetch to the wrong agent must fail");
  assert.ok(err.cause instanceof PeerRejectedError, String(err.cause));
  assert.match((err.cause as Error).message, /agent is spiffe:\/\/example\.org\/agents\/weather, expected spiffe:\/\/example\.org\/agents\/payments/);
});

/**
 * An MCP SDK application that talks to an agent over mTLS with its own identity: the only mesh-specific line is the
 * `fetch` it hands to the SDK's transport. Renewals on disk (`mcpmesh renew --daemon`) are picked up by new
 * connections; `expect` refuses any server that is not this exact agent.
 *
 *   node --import tsx examples/desktop-client/app.ts https://127.0.0.1:8443/mcp ./writer-id spiffe://example.org/agents/notes
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMeshFetch } from "mcpmesh"; // this repository's own package entry (lib/index.ts)

const [url, identityDir, expect] = process.argv.slice(2);
if (!url || !identityDir) {
  console.error("usage: app.ts AGENT_URL IDENTITY_DIR [EXPECTED_AGENT_SPIFFE_ID]");
  process.exit(2);
}

const fetch = createMeshFetch(identityDir, { expect });
const client = new Client({ name: "desktop-client-example", version: "1.0.0" });
try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch }));
  const { tools } = await client.listTools();
  console.log(`tools: ${tools.map((t) => t.name).join(", ")}`);
  const r = await client.callTool({ name: "list-notes", arguments: {} });
  console.log(`list-notes: ${JSON.stringify((r.content as { text: string }[])[0].text)}`);
} finally {
  await client.close();
  await fetch.close();
}

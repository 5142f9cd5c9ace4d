/**
 * Small programs the network-namespace test runs inside its namespaces (`ip netns exec NS node --import tsx ...`):
 *   upstream             a real SDK MCP server on this namespace's 127.0.0.1; prints {"port": N}, runs until killed
 *   client URL IDDIR     the SDK client over mTLS (createMeshFetch); prints {"tools": [...], "echo": "..."}
 *   probe HOST PORT      a plain TCP connect with a 3 s bound; prints {"result": "connected" | error code}
 */
import { connect } from "node:net";
import { startMcpServer } from "./mcp-server.ts";
import { connectClient } from "./e2e.ts";

const [mode, a, b] = process.argv.slice(2);
if (mode === "upstream") {
  const up = await startMcpServer();
  process.stdout.write(`${JSON.stringify({ port: up.port })}\n`);
  process.on("SIGTERM", () => void up.close().finally(() => process.exit(0)));
} else if (mode === "client") {
  const c = await connectClient(a, b);
  const tools = (await c.client.listTools()).tools.map((t) => t.name).sort();
  const r = (await c.client.callTool({ name: "echo", arguments: { text: "from namespace B" } })) as { content: { text: string }[] };
  await c.close();
  process.stdout.write(`${JSON.stringify({ tools, echo: r.content[0].text })}\n`);
} else if (mode === "probe") {
  const result = await new Promise<string>((resolve) => {
    const s = connect(Number(b), a);
    const t = setTimeout(() => {
      s.destroy();
      resolve("timeout");
    }, 3000);
    s.on("connect", () => {
      clearTimeout(t);
      s.destroy();
      resolve("connected");
    });
    s.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      resolve(e.code ?? e.message);
    });
  });
  process.stdout.write(`${JSON.stringify({ result })}\n`);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}

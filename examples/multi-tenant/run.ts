/**
 * Multi-tenant confinement, end to end on loopback with the real `mcpmesh` command:
 *
 *   node --import tsx examples/multi-tenant/run.ts        # exits 0 when every check passes
 */
import { join } from "node:path";
import { Example, text, refusal } from "../_shared/harness.ts";

const ex = new Example("multi-tenant");
await ex.run(async () => {
  ex.say("1. the invoices server (it serves whichever tenant a call names)");
  const server = await ex.start([process.execPath, "--import", "tsx", join(import.meta.dirname, "server.ts"), "0"], /invoices MCP server on (\S+)/, "invoices server");

  ex.say("2. a CA; the agent; one app of each tenant");
  const { caDir, caUrl } = await ex.startCa("example.org");
  await ex.enroll(caDir, "agents/invoices", "agent", "agent-id");
  const acmeDir = await ex.enroll(caDir, "tenant/acme/app");
  const globexDir = await ex.enroll(caDir, "tenant/globex/app");

  ex.say("3. the agent, with examples/multi-tenant/agent.yaml");
  const { url, configFile } = await ex.startAgent(join(import.meta.dirname, "agent.yaml"), { ca: caUrl, upstream: { url: server.ready } });

  ex.say("4. acme");
  const acme = await ex.client(url, acmeDir);
  ex.check(text(await acme.callTool({ name: "list-invoices", arguments: { tenant: "acme" } })).includes("A-1"), "acme lists its own invoices");
  ex.check((await refusal(acme.callTool({ name: "list-invoices", arguments: { tenant: "globex" } }))) === -32602, "acme listing globex's invoices is refused");
  ex.check((await refusal(acme.callTool({ name: "list-invoices", arguments: {} }))) === -32602, "a call without a tenant argument is refused");
  ex.check((await refusal(acme.callTool({ name: "add-invoice", arguments: { tenant: "globex", id: "FAKE", amount: 1 } }))) === -32602, "acme adding an invoice to globex is refused");
  ex.check(text(await acme.callTool({ name: "add-invoice", arguments: { tenant: "acme", id: "A-2", amount: 10 } })) === "added A-2 to acme", "acme adds an invoice to itself");

  ex.say("5. globex");
  const globex = await ex.client(url, globexDir);
  const own = text(await globex.callTool({ name: "list-invoices", arguments: { tenant: "globex" } }));
  ex.check(own.includes("G-1") && !own.includes("FAKE"), "globex sees its own invoices, and nothing acme tried to add");
  ex.check((await refusal(globex.callTool({ name: "list-invoices", arguments: { tenant: "acme" } }))) === -32602, "globex listing acme's invoices is refused");

  ex.say("6. explained offline");
  const why = await ex.mcpmesh(["agent", "check", "--config", configFile, "--identity", "spiffe://example.org/tenant/acme/app", "--tool", "list-invoices", "--args", '{"tenant":"globex"}'], 3);
  ex.check(/^DENY/.test(why), `agent check: ${why.split("\n").slice(0, 3).join(" / ").replace(/\s+/g, " ")}`);
});

/**
 * The notes MCP server behind an agent, end to end on loopback with the real `mcpmesh` command:
 *
 *   node --import tsx examples/notes-server/run.ts        # exits 0 when every check passes
 */
import { join } from "node:path";
import { Example, text, refusal } from "../_shared/harness.ts";

const ex = new Example("notes-server");
await ex.run(async () => {
  ex.say("1. the MCP server, unchanged, on loopback");
  const server = await ex.start([process.execPath, "--import", "tsx", join(import.meta.dirname, "server.ts"), "0"], /notes MCP server on (\S+)/, "notes server");

  ex.say("2. a CA, and identities for the agent, a reader and a writer");
  const { caDir, caUrl } = await ex.startCa("example.org");
  await ex.enroll(caDir, "agents/notes", "agent", "agent-id");
  const reader = await ex.enroll(caDir, "team/reader");
  const writer = await ex.enroll(caDir, "team/writer");

  ex.say("3. the agent, with examples/notes-server/agent.yaml");
  const { url, configFile } = await ex.startAgent(join(import.meta.dirname, "agent.yaml"), { ca: caUrl, upstream: { url: server.ready } });

  ex.say("4. the reader");
  const r = await ex.client(url, reader);
  const tools = (await r.listTools()).tools.map((t) => t.name).sort();
  ex.check(tools.join(",") === "list-notes,read-note", `sees only the read tools: ${tools.join(", ")}`);
  ex.check(text(await r.callTool({ name: "read-note", arguments: { title: "welcome" } })).includes("only the mesh can reach"), "reads the welcome note");
  ex.check((await refusal(r.callTool({ name: "add-note", arguments: { title: "x", body: "y" } }))) === -32602, "add-note is refused (-32602, as if it did not exist)");

  ex.say("5. the writer");
  const w = await ex.client(url, writer);
  ex.check(text(await w.callTool({ name: "add-note", arguments: { title: "plans", body: "ship it" } })) === 'added "plans"', "adds a note");
  ex.check(String(await refusal(w.callTool({ name: "add-note", arguments: { title: "../etc", body: "x" } }))).includes("must match pattern"), "a title that is not a slug is rejected by the operator's schema");
  ex.check((await refusal(w.callTool({ name: "delete-note", arguments: { title: "plans" } }))) === -32602, "delete-note is refused: nobody-deletes wins over writers-write");
  ex.check(text(await r.callTool({ name: "read-note", arguments: { title: "plans" } })) === "ship it", "the reader reads the writer's note");

  ex.say("6. the same decisions, explained offline");
  const explained = await ex.mcpmesh(["agent", "check", "--config", configFile, "--identity", "spiffe://example.org/team/writer", "--tool", "delete-note"], 3);
  ex.check(/DENY[\s\S]*rule\s+nobody-deletes/.test(explained), "agent check explains: DENY by nobody-deletes");
  const verified = await ex.mcpmesh(["audit", "verify", join(ex.dir, "audit.log")]);
  ex.check(/^OK: \d+ records/.test(verified), `the audit chain verifies (${verified.trim()})`);
});

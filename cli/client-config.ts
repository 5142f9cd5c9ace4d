import { InvalidArgumentError } from "../lib/errors.ts";
import { binPath } from "../lib/paths.ts";
import { resolveConnectOptions, type ConnectTransportKind } from "../identity/connect.ts";

export const CONFIG_CLIENTS = ["claude", "cursor", "vscode"] as const;
export type ConfigClient = (typeof CONFIG_CLIENTS)[number];

/** Where each client reads the snippet from (for the hint printed on stderr). */
export const CONFIG_FILES: Record<ConfigClient, string> = {
  claude: "claude_desktop_config.json (Claude Desktop: Settings → Developer → Edit Config)",
  cursor: ".cursor/mcp.json in the project (or ~/.cursor/mcp.json for every project)",
  vscode: ".vscode/mcp.json in the workspace (or the user profile's mcp.json)",
};

/**
 * The JSON a desktop client needs to start `mcpmesh connect` as a stdio server: absolute paths for node, the
 * mcpmesh entry point and the identity directory, since clients start servers from an unknown working directory.
 * Claude Desktop and Cursor read `mcpServers`; VS Code reads `servers` with `"type": "stdio"`.
 */
export function clientConfig(client: string, o: { url?: string; identityDir?: string; expect?: string; transport?: string; name?: string; renew?: boolean }): Record<string, unknown> {
  if (!(CONFIG_CLIENTS as readonly string[]).includes(client)) throw new InvalidArgumentError("print-config", `"${client}" is not one of ${CONFIG_CLIENTS.join(", ")}`);
  const r = resolveConnectOptions(o);
  const name = o.name ?? "mcpmesh";
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new InvalidArgumentError("name", `"${name}" must be 1-64 letters, digits, '.', '-' or '_'`);
  const args = [binPath(), "connect", r.url.href, "--identity", r.identityDir];
  if (r.expect) args.push("--expect", r.expect);
  if (r.transport !== ("auto" as ConnectTransportKind)) args.push("--transport", r.transport);
  if (o.renew === false) args.push("--no-renew");
  const server = { command: process.execPath, args };
  if (client === "vscode") return { servers: { [name]: { type: "stdio", ...server } } };
  return { mcpServers: { [name]: server } };
}

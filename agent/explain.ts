import { ConfigError, loadAgentConfig, type AgentConfig, type ConfigIssue } from "./config.ts";
import { Policy, type Decision, type ToolAccess } from "./policy.ts";
import { ArgumentValidator, checkLimits } from "./schema.ts";
import { InvalidArgumentError, isMeshError } from "../lib/errors.ts";

export interface ConfigCheck {
  ok: boolean;
  errors: ConfigIssue[];
  /** The parsed config when ok. */
  config?: AgentConfig;
}

/** Loads and validates a config file and compiles its policy; every problem is returned, nothing is thrown for them. */
export function checkConfigFile(path: string): ConfigCheck {
  let cfg: AgentConfig;
  try {
    cfg = loadAgentConfig(path);
  } catch (e) {
    if (e instanceof ConfigError) return { ok: false, errors: e.errors };
    throw e;
  }
  try {
    for (const ep of cfg.endpoints) Policy.forEndpoint(cfg, ep);
  } catch (e) {
    // The loader runs the same pattern checks, so this is a safety net, not an expected path.
    if (isMeshError(e)) return { ok: false, errors: [{ path: "rules", message: e.message }] };
    throw e;
  }
  return { ok: true, errors: [], config: cfg };
}

export interface CallExplanation {
  identity: string;
  tool: string;
  /** From the config's declarations only: `agent check` has no server to ask for annotations. */
  access: ToolAccess;
  decision: Decision;
  /** Would the tool appear in this identity's tools/list? */
  listed: boolean;
  /** Size limits (limits.*): null if within bounds, else the reason. */
  limits: string | null;
  /** The operator's overlay schema (tools.X.schema), if any: null if none is declared. */
  overlay: { ok: boolean; error: string | null } | null;
  /** Assumptions the explanation had to make, to print alongside it. */
  notes: string[];
}

/**
 * Explains how the policy treats one call, without a server: the decision, whether the tool would be listed, the
 * limits and the overlay schema. Step-up assumes a certificate issued at `notBefore` (default: `now`, i.e. fresh).
 */
export function explainCall(cfg: AgentConfig, identity: string, toolName: string, args: unknown, now = Date.now(), notBefore = now, endpoint?: string): CallExplanation {
  const ep = endpoint === undefined ? cfg.endpoints[0] : cfg.endpoints.find((e) => e.id === endpoint);
  if (!ep) throw new InvalidArgumentError("endpoint", `no endpoint "${endpoint}" (have: ${cfg.endpoints.map((e) => e.id).join(", ")})`);
  const policy = Policy.forEndpoint(cfg, ep, { now: () => now });
  const caller = { id: identity, notBefore };
  const tool = { name: toolName };
  const notes: string[] = [];
  if (cfg.endpoints.length > 1) notes.push(`explained for endpoint "${ep.id}" (${ep.path})`);
  if (notBefore === now && (ep.stepUpMs !== undefined || ep.rules.some((r) => r.stepUpMs !== undefined))) {
    notes.push("step-up rules were evaluated for a freshly issued certificate");
  }
  const access = policy.accessOf(tool);
  if (access === "unknown" && cfg.trustAnnotations) notes.push("the server's annotations are not known here; the tool was treated as undeclared");
  const decl = Object.prototype.hasOwnProperty.call(cfg.tools, toolName) ? cfg.tools[toolName] : undefined;
  let overlay: CallExplanation["overlay"] = null;
  if (decl?.schema !== undefined) {
    const error = new ArgumentValidator({ maxEntries: 1 }).validateOverlay(decl.schema, args);
    overlay = { ok: error === null, error };
  }
  notes.push("the server's own input schema is not checked here");
  return {
    identity,
    tool: toolName,
    access,
    decision: policy.tool(caller, tool, args),
    listed: policy.listTool(caller, tool),
    limits: checkLimits(args, cfg.limits),
    overlay,
    notes,
  };
}

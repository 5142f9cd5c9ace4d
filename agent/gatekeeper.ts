import type { LimitsConfig, RateSpec, ToolDeclaration } from "./config.ts";
import type { Limiter } from "./limits.ts";
import { classify, errorResponse, idKey, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RATE_LIMITED, RESOURCE_NOT_FOUND, type Classified, type JsonRpcMessage, type JsonRpcResponse } from "./jsonrpc.ts";
import type { Caller, Decision, Policy, ToolInfo } from "./policy.ts";
import type { PinStore, Tool } from "./pinning.ts";
import { checkLimits, type ArgumentValidator } from "./schema.ts";
import type { Session } from "./session.ts";
import { hashArguments, type AuditSink } from "./audit.ts";
import type { Logger } from "../lib/log.ts";

/**
 * The policy stage, independent of any transport: transports hand it each parsed client message and each server
 * message, and it answers "forward" or the reply to send instead, and filtered server messages. Nothing denied here
 * is ever written to the upstream.
 */
export type Verdict =
  /** `done`, when present, must be called once the upstream has answered (it frees a concurrency slot). */
  | { action: "forward"; done?: () => void }
  | { action: "reply"; reply: JsonRpcResponse | null; status: number; headers?: Record<string, string> };

/** Why a message was refused, for metrics and alerts. */
export type FailureKind = "authorization" | "validation" | "rate" | "invalid";

/** Every decision, as watchers (metrics, alerts) see it. */
export interface DecisionEvent {
  identity: string;
  method: string;
  tool?: string;
  access?: string;
  decision: "allow" | "deny";
  failure?: FailureKind;
  /** For rate-limit refusals: the limit's scope and whether this violation started a cool-down. */
  limitScope?: string;
  coolDown?: boolean;
  seconds: number;
}

export interface ClientMessageContext {
  caller: Caller;
  session: Session;
  transport: string;
  /** Lists the upstream's tools on this session (all pages), when a call arrives before any listing. */
  fetchTools: () => Promise<Tool[]>;
}

export interface GatekeeperOptions {
  policy: Policy;
  validator: ArgumentValidator;
  pins: PinStore;
  tools: Record<string, ToolDeclaration>;
  limits: LimitsConfig;
  audit: AuditSink;
  logger: Logger;
  /** Rate and concurrency limits on tools/call; absent = none. */
  limiter?: Limiter;
  /** Rule-level `rate:` by rule id. */
  ruleRates?: ReadonlyMap<string, RateSpec>;
  /** Sees every decision (metrics, alerts). Must not throw or block. */
  onDecision?: (ev: DecisionEvent) => void;
}

/** The 2025-11-25 revision reports invalid tool arguments as a tool result with isError, so models can self-correct. */
const TOOL_ERROR_RESULT_SINCE = "2025-11-25";

const FORWARD: Verdict = { action: "forward" };

interface AuditExtra {
  tool?: string;
  target?: string;
  args?: unknown;
  access?: string;
  failure?: FailureKind;
  limitScope?: string;
  coolDown?: boolean;
  headers?: Record<string, string>;
}

/** Requests whose responses the agent reads: the negotiated version, and tool listings to pin and filter. */
export const INSPECTED_RESPONSES: ReadonlySet<string> = new Set(["initialize", "tools/list"]);

export class Gatekeeper {
  #o: GatekeeperOptions;

  constructor(opts: GatekeeperOptions) {
    this.#o = opts;
  }

  /** Swaps policy and declarations (config reload); sessions and catalogs stay. */
  update(opts: Partial<GatekeeperOptions>): void {
    this.#o = { ...this.#o, ...opts };
  }

  get policy(): Policy {
    return this.#o.policy;
  }

  /** Decides one message from the client. `parsed` is the JSON value; the transport forwards its original bytes. */
  async checkClientMessage(ctx: ClientMessageContext, parsed: unknown): Promise<Verdict> {
    return this.#check(ctx, classify(parsed));
  }

  /**
   * A JSON-RPC batch (only legal on 2025-03-26 sessions): every element is decided; the batch is forwarded only if
   * all are allowed, else the client gets one reply per element, so a denied call cannot ride along with allowed ones.
   */
  async checkBatch(ctx: ClientMessageContext, items: unknown[]): Promise<{ forward: true; done: () => void } | { forward: false; replies: JsonRpcResponse[] }> {
    const verdicts: Verdict[] = [];
    for (const item of items) {
      const c = classify(item);
      if (c.kind === "request" && c.msg.method === "initialize") {
        verdicts.push({ action: "reply", status: 400, reply: errorResponse(c.msg.id, INVALID_REQUEST, "initialize cannot be part of a batch") });
        continue;
      }
      verdicts.push(await this.#check(ctx, c));
    }
    const done = () => {
      for (const v of verdicts) if (v.action === "forward") v.done?.();
    };
    if (verdicts.every((v) => v.action === "forward")) return { forward: true, done };
    done();
    const replies: JsonRpcResponse[] = [];
    verdicts.forEach((v, i) => {
      if (v.action === "reply") {
        if (v.reply) replies.push(v.reply);
        return;
      }
      const c = classify(items[i]);
      if (c.kind === "request") {
        ctx.session.pending.delete(idKey(c.msg.id));
        replies.push(errorResponse(c.msg.id, INVALID_REQUEST, "not executed: another message in the same batch was refused"));
      }
    });
    return { forward: false, replies };
  }

  async #check(ctx: ClientMessageContext, c: Classified): Promise<Verdict> {
    const started = process.hrtime.bigint();
    const { caller, session } = ctx;
    if (c.kind === "invalid") {
      this.#audit(ctx, started, "(invalid)", { allow: false, rule: null, reason: c.reason }, { failure: "invalid" });
      return { action: "reply", status: 400, reply: errorResponse(c.id, INVALID_REQUEST, `Invalid Request: ${c.reason}`) };
    }
    if (c.kind === "response") {
      // The client answering a server request (sampling, elicitation, roots): it carries no authority of its own.
      return FORWARD;
    }
    const msg = c.msg;
    const params = (msg.params ?? {}) as Record<string, any>;
    const isRequest = c.kind === "request";
    const id = isRequest ? c.msg.id : null;
    const deny = (d: Decision, reply: JsonRpcResponse | null, extra: AuditExtra = {}): Verdict => {
      this.#audit(ctx, started, msg.method, d, { failure: "authorization", ...extra });
      return { action: "reply", status: isRequest ? 200 : 403, reply: isRequest ? reply : null, headers: extra.headers };
    };
    const allow = (d: Decision, extra: AuditExtra = {}, done?: () => void): Verdict => {
      // Only responses the agent must read (handshake, listings) are tracked; the rest pass through untouched.
      if (isRequest && INSPECTED_RESPONSES.has(msg.method)) {
        session.pending.set(idKey(c.msg.id), { method: msg.method, at: Date.now(), paged: typeof params.cursor === "string" });
      }
      this.#audit(ctx, started, msg.method, d, extra);
      return done ? { action: "forward", done } : FORWARD;
    };

    switch (msg.method) {
      case "tools/call": {
        const name = params.name;
        if (typeof name !== "string") return deny({ allow: false, rule: null, reason: "tools/call without a tool name" }, errorResponse(id, INVALID_PARAMS, "Invalid params: name must be a string"));
        const args = params.arguments;
        if (args !== undefined && (args === null || typeof args !== "object" || Array.isArray(args))) {
          return deny({ allow: false, rule: null, reason: "arguments is not an object" }, errorResponse(id, INVALID_PARAMS, "Invalid params: arguments must be an object"), { tool: name });
        }
        let tool = session.tools?.get(name);
        if (!session.tools) {
          try {
            this.catalog(session, caller, await ctx.fetchTools());
          } catch (e) {
            this.#o.logger.warn({ event: "tools_fetch_failed", identity: caller.id, reason: (e as Error).message }, "could not list the upstream's tools");
          }
          // catalog() has just replaced session.tools; TypeScript's narrowing does not know.
          tool = (session.tools as Map<string, Tool> | null)?.get(name);
        }
        const unknown = errorResponse(id, INVALID_PARAMS, `Unknown tool: ${name}`);
        if (!tool) return deny({ allow: false, rule: null, reason: session.tools ? "tool not listed by the upstream, or blocked by pinning" : "tool catalog unavailable" }, unknown, { tool: name });
        const d = this.#o.policy.tool(caller, tool as ToolInfo, args ?? {});
        const access = this.#o.policy.accessOf(tool as ToolInfo);
        // Unauthorized and unknown look the same to the caller: the listing never showed the tool either.
        if (!d.allow) return deny(d, unknown, { tool: name, access });
        const limit = checkLimits(args ?? {}, this.#o.limits);
        const invalid = limit ?? this.#o.validator.validate(tool, this.#o.tools[name]?.schema, args ?? {}, session.protocolVersion);
        if (invalid !== null) {
          return deny({ allow: false, rule: d.rule, reason: `invalid arguments: ${invalid}` }, this.#invalidArguments(id, session, name, invalid), { tool: name, access, failure: "validation" });
        }
        // Limits last: only a call that would otherwise run costs a token, and a limited call never reaches the upstream.
        let release: (() => void) | undefined;
        if (this.#o.limiter) {
          const lv = this.#o.limiter.check({ identity: caller.id, tool: name, access, rule: d.rule ? { id: d.rule, rate: this.#o.ruleRates?.get(d.rule) } : undefined });
          if (!lv.ok) {
            const retry = Math.max(1, lv.retryAfterMs);
            const reply = errorResponse(id, RATE_LIMITED, `Rate limit exceeded: ${lv.scope === "concurrency" ? "too many calls in flight" : `limit ${lv.limit}`}; retry after ${retry} ms`, { retryAfterMs: retry, scope: lv.scope });
            return deny({ allow: false, rule: d.rule, reason: lv.coolDown ? `${lv.reason}; cool-down started` : lv.reason }, reply, {
              tool: name, access, failure: "rate", limitScope: lv.scope, coolDown: lv.coolDown, headers: { "retry-after": String(Math.ceil(retry / 1000)) },
            });
          }
          release = lv.release;
        }
        return allow(d, { tool: name, args, access }, release);
      }
      case "resources/read":
      case "resources/subscribe":
      case "resources/unsubscribe": {
        const uri = params.uri;
        if (typeof uri !== "string") return deny({ allow: false, rule: null, reason: `${msg.method} without a uri` }, errorResponse(id, INVALID_PARAMS, "Invalid params: uri must be a string"));
        const d = this.#o.policy.resource(caller, uri);
        if (!d.allow) return deny(d, errorResponse(id, RESOURCE_NOT_FOUND, "Resource not found", { uri }), { target: uri });
        return allow(d, { target: uri });
      }
      case "prompts/get": {
        const name = params.name;
        if (typeof name !== "string") return deny({ allow: false, rule: null, reason: "prompts/get without a name" }, errorResponse(id, INVALID_PARAMS, "Invalid params: name must be a string"));
        const d = this.#o.policy.prompt(caller, name);
        if (!d.allow) return deny(d, errorResponse(id, INVALID_PARAMS, `Unknown prompt: ${name}`), { target: name });
        return allow(d, { target: name });
      }
      default: {
        const d = this.#o.policy.method(caller, msg.method);
        if (!d.allow) return deny(d, errorResponse(id, METHOD_NOT_FOUND, `Method not found: ${msg.method}`));
        return allow(d);
      }
    }
  }

  #invalidArguments(id: JsonRpcResponse["id"], session: Session, tool: string, reason: string): JsonRpcResponse {
    const text = `Invalid arguments for tool ${tool}: ${reason}`;
    if (session.protocolVersion >= TOOL_ERROR_RESULT_SINCE) {
      return { jsonrpc: "2.0", id, result: { content: [{ type: "text", text }], isError: true } };
    }
    return errorResponse(id, INVALID_PARAMS, text);
  }

  /**
   * Filters one message from the server to the client. Returns the message to send (possibly a changed copy), or
   * the same object when nothing changed, so transports can pass the original bytes through.
   */
  filterServerMessage(session: Session, caller: Caller, msg: JsonRpcMessage): JsonRpcMessage {
    if ("method" in msg) {
      if (msg.method === "notifications/tools/list_changed") {
        // The next listing or call re-reads the tools, and pinning judges every changed definition.
        session.tools = null;
      }
      return msg;
    }
    const res = msg as JsonRpcResponse;
    if (res.id === null || res.id === undefined) return msg;
    const key = idKey(res.id);
    const pending = session.pending.get(key);
    if (!pending) return msg;
    session.pending.delete(key);
    if (!res.result) return msg;
    if (pending.method === "initialize" && typeof res.result.protocolVersion === "string") {
      session.protocolVersion = res.result.protocolVersion;
      return msg;
    }
    if (pending.method === "tools/list" && Array.isArray(res.result.tools)) {
      const visible = this.catalog(session, caller, res.result.tools as Tool[], pending.paged === true);
      return { ...res, result: { ...res.result, tools: visible } };
    }
    return msg;
  }

  /**
   * Records a listing (one page) in the session's catalog after pin review, and returns what this caller may see.
   * `more` pages merge into the catalog instead of replacing it.
   */
  catalog(session: Session, caller: Caller, tools: Tool[], more = false): Tool[] {
    const review = this.#o.pins.review(Array.isArray(tools) ? tools : []);
    for (const b of review.blocked) {
      this.#o.logger.alert({ event: "tool_blocked", alert: "tool_definition_changed", tool: b.name, reason: b.reason, hash: b.hash, pinned: b.pinned }, "tool withheld until an operator approves its definition");
    }
    const map = more && session.tools ? session.tools : new Map<string, Tool>();
    for (const t of review.allowed) map.set(t.name, t);
    session.tools = map;
    return review.allowed.filter((t) => this.#o.policy.listTool(caller, t as ToolInfo));
  }

  /**
   * The whole-request refusal of an identity in cool-down (HTTP 429): milliseconds left, or 0. Audited and counted
   * like any decision.
   */
  coolDown(caller: Caller, transport: string): number {
    const left = this.#o.limiter?.coolDownLeft(caller.id) ?? 0;
    if (left > 0) {
      this.#o.audit.record({ identity: caller.id, session: null, method: "(request)", decision: "deny", rule: null, reason: `rate limit cool-down: ${left} ms left`, decisionUs: 0, transport });
      this.#o.onDecision?.({ identity: caller.id, method: "(request)", decision: "deny", failure: "rate", limitScope: "cool-down", seconds: 0 });
    }
    return left;
  }

  #audit(ctx: ClientMessageContext, started: bigint, method: string, d: Decision, extra: AuditExtra = {}): void {
    const us = Number((process.hrtime.bigint() - started) / 1000n);
    this.#o.onDecision?.({
      identity: ctx.caller.id, method, tool: extra.tool, access: extra.access, decision: d.allow ? "allow" : "deny",
      failure: d.allow ? undefined : (extra.failure ?? "authorization"), limitScope: extra.limitScope, coolDown: extra.coolDown, seconds: us / 1e6,
    });
    this.#o.audit.record({
      identity: ctx.caller.id,
      session: ctx.session.upstreamId,
      method,
      tool: extra.tool,
      target: extra.target,
      decision: d.allow ? "allow" : "deny",
      rule: d.rule,
      reason: d.reason,
      decisionUs: us,
      argsHash: extra.args === undefined ? undefined : hashArguments(extra.args),
      transport: ctx.transport,
    });
  }
}

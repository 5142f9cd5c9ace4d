/**
 * JSON-RPC 2.0 as MCP uses it: message shapes, the agent's error replies and one parse of a request body. Transports
 * hand raw bodies here once; everything downstream works on the parsed value and forwards the original bytes.
 */
export type JsonRpcId = string | number;

export interface JsonRpcRequest {
  jsonrpc: "2.0";
  id: JsonRpcId;
  method: string;
  params?: Record<string, unknown>;
}

export interface JsonRpcNotification {
  jsonrpc: "2.0";
  method: string;
  params?: Record<string, unknown>;
}

export interface JsonRpcResponse {
  jsonrpc: "2.0";
  id: JsonRpcId | null;
  result?: any;
  error?: { code: number; message: string; data?: unknown };
}

export type JsonRpcMessage = JsonRpcRequest | JsonRpcNotification | JsonRpcResponse;

export const PARSE_ERROR = -32700;
export const INVALID_REQUEST = -32600;
export const METHOD_NOT_FOUND = -32601;
export const INVALID_PARAMS = -32602;
export const INTERNAL_ERROR = -32603;
/** MCP's code for an unknown resource. */
export const RESOURCE_NOT_FOUND = -32002;
/** Used by the SDK for "session not found" and by the agent for refusals that are not about the message. */
export const SERVER_ERROR = -32000;
export const SESSION_NOT_FOUND = -32001;
/** A call refused by a rate or concurrency limit; `error.data.retryAfterMs` says when to try again. */
export const RATE_LIMITED = -32029;

export type Classified =
  | { kind: "request"; msg: JsonRpcRequest }
  | { kind: "notification"; msg: JsonRpcNotification }
  | { kind: "response"; msg: JsonRpcResponse }
  | { kind: "invalid"; id: JsonRpcId | null; reason: string };

const MAX_ID_LENGTH = 256;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function validId(id: unknown): id is JsonRpcId {
  return (typeof id === "string" && id.length <= MAX_ID_LENGTH) || (typeof id === "number" && Number.isSafeInteger(id));
}

/** Classifies one parsed JSON value as a JSON-RPC message, strictly: anything off-shape is "invalid". */
export function classify(v: unknown): Classified {
  if (!isObject(v)) return { kind: "invalid", id: null, reason: "not a JSON object" };
  const id = "id" in v ? v.id : undefined;
  const safeId = validId(id) ? id : null;
  if (v.jsonrpc !== "2.0") return { kind: "invalid", id: safeId, reason: "jsonrpc must be \"2.0\"" };
  if ("method" in v) {
    if (typeof v.method !== "string" || v.method.length === 0 || v.method.length > 256) return { kind: "invalid", id: safeId, reason: "method must be a non-empty string" };
    if ("params" in v && v.params !== undefined && !isObject(v.params)) return { kind: "invalid", id: safeId, reason: "params must be an object" };
    if ("result" in v || "error" in v) return { kind: "invalid", id: safeId, reason: "a request cannot carry result or error" };
    // MCP names every notification notifications/*: a request method without an id is a request that dodges its
    // response (and the error a refusal would carry), a notifications/* method with an id pretends to be answerable.
    const isNotificationMethod = v.method.startsWith("notifications/");
    if (id === undefined) {
      if (!isNotificationMethod) return { kind: "invalid", id: null, reason: `${v.method.slice(0, 64)} is a request method and needs an id` };
      return { kind: "notification", msg: v as unknown as JsonRpcNotification };
    }
    if (isNotificationMethod) return { kind: "invalid", id: safeId, reason: "a notification must not carry an id" };
    if (!validId(id)) return { kind: "invalid", id: null, reason: "id must be a string (<= 256 chars) or a safe integer" };
    return { kind: "request", msg: v as unknown as JsonRpcRequest };
  }
  if ("result" in v || "error" in v) {
    if (!validId(id)) return { kind: "invalid", id: null, reason: "a response needs a valid id" };
    if ("result" in v && "error" in v) return { kind: "invalid", id, reason: "a response cannot carry both result and error" };
    return { kind: "response", msg: v as unknown as JsonRpcResponse };
  }
  return { kind: "invalid", id: safeId, reason: "neither a request nor a response" };
}

export function errorResponse(id: JsonRpcId | null, code: number, message: string, data?: unknown): JsonRpcResponse {
  const error: JsonRpcResponse["error"] = { code, message };
  if (data !== undefined) error.data = data;
  return { jsonrpc: "2.0", id, error };
}

/** Map key for a request id: numbers and strings must not collide (1 vs "1"). */
export function idKey(id: JsonRpcId): string {
  return typeof id === "number" ? `n:${id}` : `s:${id}`;
}

/**
 * Shared pieces of the agent's end-to-end tests (test/agent/e2e-*.test.ts): an SDK client over mTLS, raw JSON-RPC over
 * the mesh fetch (for what the SDK cannot express: other protocol versions, batches, foreign session ids, odd headers),
 * raw TLS probes for the certificate matrix, and bad certificates signed by the mesh's own intermediate.
 */
import { connect, type TLSSocket } from "node:tls";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMeshFetch, type MeshFetch } from "../../identity/fetch.ts";
import { createTestPki, type TestPki } from "./pki.ts";
import { PASSPHRASE, type TestMesh } from "./mesh.ts";

export interface MeshClient {
  client: Client;
  fetch: MeshFetch;
  close(): Promise<void>;
}

/** The real SDK client over mTLS as the identity in `idDir`. */
export async function connectClient(url: string, idDir: string): Promise<MeshClient> {
  const f = createMeshFetch(idDir);
  const client = new Client({ name: "e2e", version: "1.0.0" });
  try {
    await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch: f }));
  } catch (e) {
    await f.close();
    throw e;
  }
  return {
    client,
    fetch: f,
    async close() {
      await client.close().catch(() => {});
      await f.close();
    },
  };
}

/** The error a rejected SDK call threw, or fails the test if it did not throw. */
export async function rejection(p: Promise<unknown>): Promise<{ code?: number; message: string }> {
  try {
    const v = await p;
    throw new Error(`expected a rejection, got ${JSON.stringify(v)}`);
  } catch (e) {
    if (e instanceof Error && e.message.startsWith("expected a rejection")) throw e;
    return e as { code?: number; message: string };
  }
}

export interface RawReply {
  status: number;
  headers: Headers;
  /** JSON-RPC messages of the reply (from a JSON body or from SSE `data:` lines); [] when there is no body. */
  messages: any[];
  /** The body as sent, when it was JSON (an object or a batch array). */
  json: unknown;
}

/** Reads a Streamable HTTP reply: JSON, or an SSE stream that ends once the request is answered. */
export async function readReply(res: Response): Promise<RawReply> {
  const text = await res.text();
  const type = res.headers.get("content-type") ?? "";
  let messages: any[] = [];
  let json: unknown;
  if (type.startsWith("text/event-stream")) {
    for (const block of text.split(/\r?\n\r?\n/)) {
      const data = block
        .split(/\r?\n/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) messages.push(JSON.parse(data));
    }
  } else if (text) {
    json = JSON.parse(text);
    messages = Array.isArray(json) ? json : [json];
  }
  return { status: res.status, headers: res.headers, messages, json };
}

export interface RawSession {
  f: MeshFetch;
  url: string;
  sid: string;
  version: string;
  /** POSTs a JSON-RPC body (object or array) on this session. */
  post(body: unknown, headers?: Record<string, string>): Promise<RawReply>;
}

let rawIds = 0;

/** A tools/call request with a fresh id. */
export function call(name: string, args: Record<string, unknown>): { jsonrpc: "2.0"; id: number; method: "tools/call"; params: { name: string; arguments: Record<string, unknown> } } {
  return { jsonrpc: "2.0", id: ++rawIds, method: "tools/call", params: { name, arguments: args } };
}

export function rpc(method: string, params: Record<string, unknown> = {}): { jsonrpc: "2.0"; id: number; method: string; params: Record<string, unknown> } {
  return { jsonrpc: "2.0", id: ++rawIds, method, params };
}

export async function rawPost(f: MeshFetch, url: string, body: unknown, headers: Record<string, string> = {}): Promise<RawReply> {
  const res = await f(url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return readReply(res);
}

/** Opens a session by hand (initialize + notifications/initialized) at an explicit protocol version. */
export async function rawSession(f: MeshFetch, url: string, version: string): Promise<RawSession> {
  const init = await rawPost(f, url, rpc("initialize", { protocolVersion: version, capabilities: {}, clientInfo: { name: "raw", version: "1" } }));
  if (init.status !== 200) throw new Error(`initialize: HTTP ${init.status} ${JSON.stringify(init.messages)}`);
  const negotiated = init.messages[0]?.result?.protocolVersion;
  if (negotiated !== version) throw new Error(`asked for ${version}, server negotiated ${negotiated}`);
  const sid = init.headers.get("mcp-session-id");
  if (!sid) throw new Error("initialize answered without Mcp-Session-Id");
  const base = { "mcp-session-id": sid, "mcp-protocol-version": version };
  const ack = await rawPost(f, url, { jsonrpc: "2.0", method: "notifications/initialized" }, base);
  if (ack.status !== 202) throw new Error(`notifications/initialized: HTTP ${ack.status}`);
  return { f, url, sid, version, post: (body, headers = {}) => rawPost(f, url, body, { ...base, ...headers }) };
}

// ---------------------------------------------------------------------------------------------------------------------
// TLS probes

export interface ProbeResult {
  /** The client finished its side of the handshake (in TLS 1.3 the server judges the client certificate after this). */
  secureConnected: boolean;
  /** Bytes the agent sent back after the request was written: must stay empty for a refused peer. */
  received: string;
  /** The error the socket ended with, if any (alerts, ECONNRESET). */
  error: string | null;
  sessionReused: boolean;
  /** The TLS session the agent let the client keep (for resumption attempts), if any. */
  session: Buffer | null;
  /** The probe's own port: the agent logs refused peers as `remote: "127.0.0.1:<port>"`. */
  localPort: number;
}

export interface ProbeOptions {
  cert?: string;
  key?: string;
  /** Roots the probe trusts for the agent's certificate. */
  ca: string;
  /** A session to offer for resumption. */
  session?: Buffer;
  /** OpenSSL cipher string; `DEFAULT:@SECLEVEL=0` lets the probe present keys its own OpenSSL calls too weak. */
  ciphers?: string;
}

/**
 * Connects with raw TLS, writes one HTTP request to /mcp and collects whatever comes back until the socket closes.
 * A peer the gate refuses gets its connection closed without a single HTTP byte.
 */
export function tlsProbe(agentUrl: string, o: ProbeOptions): Promise<ProbeResult> {
  const u = new URL(agentUrl);
  return new Promise((resolve) => {
    let received = "";
    let error: string | null = null;
    let secureConnected = false;
    let session: Buffer | null = null;
    let localPort = 0;
    let sessionReused = false;
    const socket: TLSSocket = connect({
      host: u.hostname,
      port: Number(u.port),
      servername: undefined,
      ca: o.ca,
      ciphers: o.ciphers,
      cert: o.cert,
      key: o.key,
      session: o.session,
      minVersion: "TLSv1.3",
      checkServerIdentity: () => undefined,
    });
    socket.on("connect", () => (localPort = socket.localPort ?? 0));
    socket.on("session", (s: Buffer) => (session = s));
    socket.on("secureConnect", () => {
      secureConnected = true;
      localPort ||= socket.localPort ?? 0;
      // Read now: once the socket is closed Node has no handle to ask.
      sessionReused = socket.isSessionReused();
      const body = JSON.stringify(rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "probe", version: "1" } }));
      socket.write(
        `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => (received += d));
    socket.on("error", (e) => (error ??= (e as NodeJS.ErrnoException).code ?? e.message));
    socket.on("close", () => resolve({ secureConnected, received, error, sessionReused, session: session ?? socket.getSession() ?? null, localPort }));
    // A safety net: the agent closes refused peers itself, and answers good ones (Connection: close).
    socket.setTimeout(20_000, () => socket.destroy(new Error("probe timed out")));
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// bad certificates from the mesh's own intermediate

/**
 * An openssl PKI whose intermediate IS the mesh CA's intermediate: leaves made with `.leaf()` chain to the mesh roots,
 * so the agent's chain check passes and only its own checks (EKU, SANs, dates, ...) stand between them and the upstream.
 */
export function meshSignedPki(mesh: TestMesh, dir: string): TestPki {
  return createTestPki(dir, {
    trustDomain: mesh.trustDomain,
    intermediate: { certPath: join(mesh.dir, "ca", "intermediate.pem"), keyPath: join(mesh.dir, "ca", "intermediate.key"), passphrase: PASSPHRASE },
  });
}

export function meshRoots(mesh: TestMesh): string {
  return readFileSync(join(mesh.dir, "ca", "root.pem"), "utf8");
}

/** Everything the upstream received, summarised for assertion messages. */
export function summary(received: { method: string; rpcMethods: string[]; toolCalls: string[] }[]): string {
  return JSON.stringify(received.map((r) => `${r.method} ${r.rpcMethods.join(",")} ${r.toolCalls.join(",")}`.trim()));
}

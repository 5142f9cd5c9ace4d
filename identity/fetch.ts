import { checkServerIdentity, type PeerCertificate } from "node:tls";
import { Agent, fetch as undiciFetch, type Dispatcher } from "undici";
import { statSync } from "node:fs";
import { join } from "node:path";
import { IDENTITY_FILES, loadIdentity, type Identity } from "./store.ts";
import { checkPeerSvid } from "../agent/svid.ts";
import { MeshError } from "../lib/errors.ts";

/** The agent's certificate failed the `expect` check: a configuration or attack problem, never worth retrying. */
export class PeerRejectedError extends MeshError {
  constructor(message: string) {
    super("MCPMESH_PEER_REJECTED", message);
  }
}

export interface MeshFetchOptions {
  /** Require the server (agent) to present exactly this SPIFFE ID. */
  expect?: string;
  /** Re-read the identity directory when its certificate changed on disk (renewal). Default true. */
  follow?: boolean;
}

export type MeshFetch = typeof fetch & { close(): Promise<void> };

/**
 * A `fetch` that speaks mTLS with an enrolled identity, for the MCP SDK's transports (`{ fetch: createMeshFetch(dir) }`).
 * The agent's certificate is verified against the mesh roots only (never the system store) and, with `expect`, must
 * carry that SPIFFE ID. When the identity is renewed on disk, new connections use the new certificate.
 */
export function createMeshFetch(dir: string, opts: MeshFetchOptions = {}): MeshFetch {
  let identity: Identity = loadIdentity(dir);
  let dispatcher: Dispatcher = makeDispatcher(identity, opts);
  const old: Dispatcher[] = [];
  // A stat per request, not a reload: the files are re-read only when the certificate file changed.
  const stamp = () => {
    try {
      const st = statSync(join(dir, IDENTITY_FILES.cert));
      return `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      return "";
    }
  };
  let seen = stamp();
  const current = (): Dispatcher => {
    if (opts.follow === false) return dispatcher;
    const now = stamp();
    if (now === seen) return dispatcher;
    seen = now;
    const next = loadIdentity(dir);
    if (next.serial !== identity.serial) {
      identity = next;
      old.push(dispatcher);
      dispatcher = makeDispatcher(identity, opts);
      // Old connections finish their in-flight requests, then close.
      void old.shift()?.close();
    }
    return dispatcher;
  };
  const f = ((input: any, init?: any) => undiciFetch(input, { ...(init ?? {}), dispatcher: current() }) as unknown as Promise<Response>) as MeshFetch;
  f.close = async () => {
    await Promise.all([dispatcher, ...old].map((d) => d.close()));
  };
  return f;
}

function makeDispatcher(identity: Identity, opts: MeshFetchOptions): Dispatcher {
  return new Agent({ connect: meshTlsOptions(identity, opts.expect) });
}

/**
 * TLS client options for the mesh: this identity's certificate, the mesh roots only (never the system store), TLS 1.3,
 * and with `expect` the agent's SPIFFE ID checked instead of its DNS/IP names. Shared by the fetch and the WebSocket
 * transport so both verify the agent the same way.
 */
export function meshTlsOptions(identity: Identity, expect?: string) {
  return {
    cert: identity.certPem,
    key: identity.keyPem,
    ca: identity.rootsPem,
    minVersion: "TLSv1.3" as const,
    checkServerIdentity: (host: string, cert: PeerCertificate): Error | undefined => {
      // Without an expected SPIFFE ID the agent is checked like any HTTPS server: by its DNS/IP SANs.
      if (!expect) return checkServerIdentity(host, cert);
      const res = checkPeerSvid(cert.raw, { trustDomains: [new URL(expect).host], purpose: "server" });
      if (!res.ok) return new PeerRejectedError(`agent certificate rejected: ${res.reason}: ${res.detail}`);
      if (res.id !== expect) return new PeerRejectedError(`agent is ${res.id}, expected ${expect}`);
      return undefined;
    },
  };
}

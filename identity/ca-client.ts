import { request } from "node:https";
import { MeshError } from "../lib/errors.ts";

/** The CA answered with an error; `code` is the CA's stable code, `message` its explanation for the caller. */
export class CaRequestError extends MeshError {
  readonly status: number;
  constructor(code: string, message: string, status: number) {
    super(code, message);
    this.status = status;
  }
}

export class CaUnreachableError extends MeshError {
  constructor(url: string, cause: unknown) {
    super("MCPMESH_CA_UNREACHABLE", `cannot reach the CA at ${url}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
  }
}

export interface CaRequest {
  baseUrl: string;
  method: "GET" | "POST";
  path: string;
  body?: unknown;
  /** Roots to verify the CA with; omitted only for the first, fingerprint-checked fetch of the roots. */
  ca?: string;
  cert?: string;
  key?: string;
  insecureSkipVerify?: boolean;
  timeoutMs?: number;
}

/** One HTTPS request to the CA with an explicit trust anchor (never the system store). */
export function caRequest(r: CaRequest): Promise<{ status: number; body: Buffer; type: string }> {
  const url = new URL(r.path, r.baseUrl);
  const payload = r.body === undefined ? undefined : Buffer.from(JSON.stringify(r.body));
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: r.method,
        ca: r.ca ?? [],
        cert: r.cert,
        key: r.key,
        rejectUnauthorized: !r.insecureSkipVerify,
        minVersion: "TLSv1.3",
        agent: false,
        timeout: r.timeoutMs ?? 15_000,
        headers: payload ? { "content-type": "application/json", "content-length": payload.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), type: String(res.headers["content-type"] ?? "") }));
        res.on("error", (e) => reject(new CaUnreachableError(r.baseUrl, e)));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", (e) => reject(new CaUnreachableError(r.baseUrl, e)));
    req.end(payload);
  });
}

export async function caJson<T>(r: CaRequest): Promise<T> {
  const res = await caRequest(r);
  let parsed: any;
  try {
    parsed = JSON.parse(res.body.toString("utf8"));
  } catch {
    throw new CaRequestError("MCPMESH_BAD_RESPONSE", `the CA answered ${res.status} with a body that is not JSON`, res.status);
  }
  if (res.status >= 400) {
    const code = typeof parsed?.error?.code === "string" ? parsed.error.code : "MCPMESH_CA_ERROR";
    const message = typeof parsed?.error?.message === "string" ? parsed.error.message : `the CA answered ${res.status}`;
    throw new CaRequestError(code, message, res.status);
  }
  return parsed as T;
}

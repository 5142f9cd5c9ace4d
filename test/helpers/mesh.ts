import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Authority } from "../../ca/authority.ts";
import { newKeyAndCsr } from "../../identity/enroll.ts";
import { saveIdentity } from "../../identity/store.ts";
import { startCaServer, type RunningCaServer } from "../../ca/server.ts";
import { freePort } from "./ports.ts";

export const PASSPHRASE = "test-passphrase-123";

/**
 * A throwaway mesh for agent tests: a real CA (in-process Authority over the real SQLite store) that issues real
 * identities through the same token + CSR path `mcpmesh enroll` uses. `startCa()` serves its HTTPS API.
 */
export interface TestMesh {
  dir: string;
  authority: Authority;
  trustDomain: string;
  caUrl: string;
  issue(path: string, opts?: { kind?: "client" | "agent"; certTtlMs?: number; dns?: string[]; ips?: string[] }): Promise<string>;
  startCa(): Promise<RunningCaServer>;
  close(): Promise<void>;
}

export async function createMesh(trustDomain = "example.org"): Promise<TestMesh> {
  const dir = mkdtempSync(join(tmpdir(), "mcpmesh-mesh-"));
  const port = await freePort();
  const caUrl = `https://127.0.0.1:${port}`;
  const authority = await Authority.init({ dir: join(dir, "ca"), trustDomain, url: caUrl, passphrase: PASSPHRASE, admins: ["ops/admin"] });
  const servers: RunningCaServer[] = [];
  let n = 0;
  return {
    dir,
    authority,
    trustDomain,
    caUrl,
    async issue(path, opts = {}) {
      const idDir = join(dir, `id-${++n}-${path.replace(/\//g, "_")}`);
      const { token } = authority.createToken({ identity: path, kind: opts.kind ?? "client", certTtlMs: opts.certTtlMs, dns: opts.dns, ips: opts.ips ?? (opts.kind === "agent" ? ["127.0.0.1"] : undefined) });
      const { keyPem, csrPem } = await newKeyAndCsr();
      const issued = await authority.enroll(token, csrPem);
      saveIdentity(idDir, { keyPem, certPem: issued.chainPem, rootsPem: issued.rootsPem, meta: { caUrl, rootFingerprint: authority.config.rootFingerprint, identity: issued.identity, kind: issued.kind } });
      return idDir;
    },
    async startCa() {
      const s = await startCaServer({ authority });
      servers.push(s);
      return s;
    },
    async close() {
      for (const s of servers) await s.close();
      authority.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

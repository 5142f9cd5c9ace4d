import { spawn } from "node:child_process";
import { MeshError } from "../lib/errors.ts";

/**
 * `--exec CMD`: the operator's own command, run through the shell after a renewal (it is their command line, like a
 * cron entry), with MCPMESH_IDENTITY_DIR set so it can find the new files.
 */
export function runAfterRenewal(cmd: string, dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("/bin/sh", ["-c", cmd], { stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, MCPMESH_IDENTITY_DIR: dir } });
    child.on("error", (e) => reject(new MeshError("MCPMESH_EXEC_FAILED", `--exec: ${e.message}`)));
    child.on("exit", (code, signal) => {
      if (code === 0) resolve();
      else reject(new MeshError("MCPMESH_EXEC_FAILED", `--exec: command exited with ${signal ?? code}`));
    });
  });
}

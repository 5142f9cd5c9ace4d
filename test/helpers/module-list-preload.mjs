// Preloaded into a child process with `--import`: writes the paths of every CommonJS module the process has loaded
// (package code imported from ESM goes through the CommonJS loader too: @peculiar/x509, reflect-metadata, tsyringe,
// ws) to $MCPMESH_TEST_MODULE_LIST on SIGUSR2 and at exit.
import process from "node:process";
import { createRequire } from "node:module";
import { writeFileSync, renameSync } from "node:fs";

const out = process.env.MCPMESH_TEST_MODULE_LIST;
if (out) {
  const require = createRequire(import.meta.url);
  const dump = () => {
    writeFileSync(`${out}.tmp`, JSON.stringify(Object.keys(require.cache)));
    renameSync(`${out}.tmp`, out);
  };
  process.on("SIGUSR2", dump);
  process.on("exit", dump);
}

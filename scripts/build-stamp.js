// Written after a successful `tsc`: bin/mcpmesh.js runs dist/ only when this stamp is newer than every source file.
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const file = join(import.meta.dirname, "..", "dist", "build-stamp.json");
writeFileSync(file, JSON.stringify({ builtAt: new Date().toISOString(), node: process.version }) + "\n");

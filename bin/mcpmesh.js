#!/usr/bin/env node
// The CLI is written in TypeScript; tsx compiles it on load so the checkout runs as is (no build step to forget).
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
const code = await main(process.argv.slice(2));
// Servers and daemons keep the event loop alive; one-shot commands simply end.
if (code !== 0) process.exit(code);

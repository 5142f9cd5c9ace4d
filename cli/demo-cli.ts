import { join } from "node:path";
import { binPath } from "../lib/paths.ts";
import { runDemo, DEMO_IDS, type DemoMesh, type DemoStep } from "./demo.ts";

/**
 * Renders `mcpmesh demo` for a terminal: colour when stdout is a TTY (and NO_COLOR is unset), plain text when piped.
 * Returns the exit code: 0 when every step behaved as expected, 1 otherwise, 130 when interrupted.
 */
export function painter(colour: boolean) {
  const paint = (code: string) => (s: string) => (colour ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { bold: paint("1"), green: paint("32"), red: paint("31"), dim: paint("2") };
}

/** One step as the terminal shows it: a PASS/FAIL line, what happened, why, and what was expected instead. */
export function renderStep(s: DemoStep, n: number, colour: boolean): string {
  const { bold, green, red, dim } = painter(colour);
  const lines = [`${s.ok ? green("✔ PASS") : red("✘ FAIL")} ${bold(`[${n}] ${s.title}`)}`];
  for (const w of s.what) lines.push(`    ${w}`);
  for (const w of s.why) lines.push(`    ${dim("why:")} ${w}`);
  if (s.error) lines.push(`    ${red(`expected otherwise: ${s.error}`)}`);
  return lines.join("\n");
}

export async function runDemoCli(opts: { keep: boolean }): Promise<number> {
  const colour = !!process.stdout.isTTY && !process.env.NO_COLOR;
  const { bold, green, red, dim } = painter(colour);
  const out = (s = "") => process.stdout.write(`${s}\n`);

  const controller = new AbortController();
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    controller.abort();
  };
  // Ctrl-C, kill, or the terminal going away: stop the mesh and remove its files either way.
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, onSignal);

  out(bold("mcpmesh demo: a CA, an agent in front of an MCP server and three clients, all on 127.0.0.1"));
  let n = 0;
  const render = (s: DemoStep) => {
    out();
    out(renderStep(s, ++n, colour));
  };

  let result;
  try {
    result = await runDemo({ keep: opts.keep, onStep: render, signal: controller.signal });
  } catch (e) {
    if (!interrupted) throw e;
  }
  if (interrupted || !result) {
    out();
    out("interrupted: everything the demo started was stopped and its files removed");
    return 130;
  }
  out();
  if (!result.ok) {
    out(red(`${bold("FAILED")} at step "${result.failed!.title}" (${result.failed!.id}): ${result.failed!.error}`));
    out("everything the demo started was stopped and its files removed");
    return 1;
  }
  out(green(`${bold("All")} ${result.steps.length} steps behaved as expected.`));
  if (!result.mesh) {
    out("everything the demo started was stopped and its files removed");
    return 0;
  }
  printConnectHelp(result.mesh, { bold, dim, out });
  out();
  out(bold("The mesh keeps running; press Ctrl-C to stop it and remove its files."));
  await new Promise<void>((resolvePromise) => {
    if (controller.signal.aborted) resolvePromise();
    else controller.signal.addEventListener("abort", () => resolvePromise(), { once: true });
  });
  await result.mesh.stop();
  out("stopped; files removed");
  return 0;
}

function printConnectHelp(m: DemoMesh, p: { bold: (s: string) => string; dim: (s: string) => string; out: (s?: string) => void }): void {
  const bin = binPath();
  const args = [bin, "connect", m.agentUrl, "--identity", m.identities.writer, "--expect", DEMO_IDS.agent];
  const server = { command: process.execPath, args };
  const { out, bold, dim } = p;
  out();
  out(bold("Connect an MCP client as the writer (the reader was revoked by the demo):"));
  out(`  ${process.execPath} ${args.join(" ")}`);
  out(dim("  (`mcpmesh connect` is a stdio ⇄ mTLS bridge: any stdio MCP client can launch it)"));
  out();
  out(bold("Claude Desktop") + " (claude_desktop_config.json) and " + bold("Cursor") + " (.cursor/mcp.json):");
  out(JSON.stringify({ mcpServers: { "mcpmesh-notes": server } }, null, 2));
  out();
  out(bold("VS Code") + " (.vscode/mcp.json):");
  out(JSON.stringify({ servers: { "mcpmesh-notes": { type: "stdio", ...server } } }, null, 2));
  out(dim(`  or let mcpmesh write them: mcpmesh connect --print-config claude|cursor|vscode --identity ${m.identities.writer} ${m.agentUrl}`));
  out();
  out(bold("MCP Inspector:"));
  out(`  npx @modelcontextprotocol/inspector ${process.execPath} ${args.join(" ")}`);
  out();
  out(bold("Look around:"));
  out(`  agent config    ${m.configFile}`);
  out(`  audit log       ${join(m.dir, "audit.log")}   (mcpmesh audit verify ${join(m.dir, "audit.log")})`);
  out(`  certificates    mcpmesh ca list --dir ${join(m.dir, "ca")}`);
  out(`  revoke live     mcpmesh ca revoke --dir ${join(m.dir, "ca")} --identity team/writer`);
  out(`  explain a call  mcpmesh agent check --config ${m.configFile} --identity ${DEMO_IDS.writer} --tool delete-note`);
}

import { readFileSync } from "node:fs";
import { Command, Option, CommanderError } from "commander";
import { isMeshError, InvalidArgumentError, MeshError } from "../lib/errors.ts";
import { createLogger } from "../lib/log.ts";
import { parseDuration, formatDuration } from "../lib/duration.ts";
import { runAfterRenewal } from "./exec.ts";
// Each command imports what it uses when it runs: the X.509 library, the MCP SDK, ajv and the rest take several
// hundred milliseconds to load, and `ca revoke` (whose start is part of revocation latency), `ca token` and `ca list`
// need none of them.

/**
 * The `mcpmesh` command line. Every command is a thin shell over a library function; this is the only place that
 * prints or exits.
 */
function passphrase(opts: { passphraseFile?: string }): string {
  if (opts.passphraseFile) {
    try {
      return readFileSync(opts.passphraseFile, "utf8").replace(/\r?\n$/, "");
    } catch (e) {
      throw new InvalidArgumentError("passphrase-file", `cannot read ${opts.passphraseFile}: ${(e as Error).message}`);
    }
  }
  const env = process.env.MCPMESH_CA_PASSPHRASE;
  if (!env) throw new InvalidArgumentError("passphrase", "set MCPMESH_CA_PASSPHRASE or pass --passphrase-file FILE");
  return env;
}

/** The "Example:" block every command's help ends with. */
function example(...lines: string[]): string {
  return `\nExample${lines.length > 1 ? "s" : ""}:\n${lines.map((l) => `  ${l}`).join("\n")}`;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** A whole number flag within [min, max]; the error names the flag. */
function wholeNumber(text: string, flag: string, min: number, max: number): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(flag.replace(/^--/, ""), `"${text}" is not a whole number from ${min} to ${max}`);
  return n;
}

function onSignals(stop: () => Promise<void> | void): void {
  let stopping = false;
  const handler = () => {
    if (stopping) return;
    stopping = true;
    Promise.resolve(stop()).finally(() => process.exit(0));
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
}

export function buildProgram(): Command {
  const program = new Command("mcpmesh")
    .description("zero-trust mTLS mesh for MCP servers")
    .addHelpText("after", example("mcpmesh demo                                  # the whole mesh on this machine, narrated", "mcpmesh ca init --dir ./ca --trust-domain example.org --url https://127.0.0.1:9443", "mcpmesh agent run --config agent.yaml"))
    .version("0.1.0")
    .showHelpAfterError()
    .exitOverride();

  const ca = program.command("ca").description("the certificate authority")
    .addHelpText("after", example("MCPMESH_CA_PASSPHRASE=... mcpmesh ca init --dir ./ca --trust-domain example.org --url https://127.0.0.1:9443", "mcpmesh ca token --dir ./ca --identity team-a/alice"));

  ca.command("init")
    .description("create a new CA (root + intermediate, ECDSA P-256, keys encrypted with the passphrase)")
    .addHelpText("after", example("MCPMESH_CA_PASSPHRASE='a long passphrase' mcpmesh ca init --dir ./ca --trust-domain example.org --url https://127.0.0.1:9443 --admin ops/admin"))
    .requiredOption("--dir <dir>", "CA directory (created 0700)")
    .requiredOption("--trust-domain <td>", "SPIFFE trust domain, e.g. example.org")
    .requiredOption("--url <url>", "the URL clients and agents reach the CA at, https://HOST:PORT")
    .option("--passphrase-file <file>", "read the key passphrase from this file (else MCPMESH_CA_PASSPHRASE)")
    .option("--admin <path>", "identity allowed to revoke over the API (repeatable)", collect, [])
    .action(async (o) => {
      const { Authority } = await import("../ca/authority.ts");
      const a = await Authority.init({ dir: o.dir, trustDomain: o.trustDomain, url: o.url, passphrase: passphrase(o), admins: o.admin });
      console.log(`CA created in ${o.dir}`);
      console.log(`  trust domain      ${a.trustDomain}`);
      console.log(`  url               ${a.config.url}`);
      console.log(`  root fingerprint  sha256:${a.config.rootFingerprint}`);
      a.close();
    });

  ca.command("serve")
    .description("serve the CA's HTTPS API (enroll, renew, revoke, crl, bundle)")
    .addHelpText("after", example("mcpmesh ca serve --dir ./ca --passphrase-file /run/secrets/ca-passphrase --listen 10.0.0.2:9443"))
    .requiredOption("--dir <dir>", "CA directory")
    .option("--listen <host:port>", "address to listen on (default: the host and port of the CA URL)")
    .option("--passphrase-file <file>", "read the key passphrase from this file (else MCPMESH_CA_PASSPHRASE)")
    .option("--signing-threads <n>", "worker threads that check CSRs and sign certificates (0: on the main thread; default: cores − 1, 1 to 4)")
    .action(async (o) => {
      const log = createLogger({ name: "mcpmesh-ca" });
      const { Authority } = await import("../ca/authority.ts");
      const { startCaServer } = await import("../ca/server.ts");
      const { defaultSigningThreads } = await import("../ca/signing-pool.ts");
      const signingThreads = o.signingThreads === undefined ? defaultSigningThreads() : wholeNumber(o.signingThreads, "--signing-threads", 0, 64);
      const authority = await Authority.open({
        dir: o.dir,
        passphrase: passphrase(o),
        signingThreads,
        onSigningFailure: (e) => log.error({ event: "signing_thread_failed", err: e.message }, "a CA signing thread stopped; it is replaced on the next request"),
      });
      let srv;
      try {
        srv = await startCaServer({ authority, listen: o.listen, logger: log });
      } catch (e) {
        authority.close(); // leave the database closed cleanly (WAL checkpointed) when we cannot serve
        throw e;
      }
      onSignals(async () => {
        await srv.close();
        authority.close();
      });
    });

  ca.command("token")
    .description("create a one-time enrollment token bound to one identity")
    .addHelpText("after", example("mcpmesh ca token --dir ./ca --identity team-a/alice --cert-ttl 1h", "mcpmesh ca token --dir ./ca --identity agents/notes --kind agent --ip 127.0.0.1 --dns notes.internal"))
    .requiredOption("--dir <dir>", "CA directory")
    .requiredOption("--identity <path>", "SPIFFE path, e.g. team-a/alice")
    .addOption(new Option("--kind <kind>", "certificate kind").choices(["client", "agent"]).default("client"))
    .option("--ttl <duration>", "how long the token stays valid", "15m")
    .option("--cert-ttl <duration>", "lifetime of the certificates (default 1h clients, 24h agents; max 24h)")
    .option("--dns <name>", "DNS SAN for an agent certificate (repeatable)", collect, [])
    .option("--ip <addr>", "IP SAN for an agent certificate (repeatable)", collect, [])
    .option("--json", "print JSON")
    .action(async (o) => {
      const { createToken, openCaStore } = await import("../ca/admin.ts");
      const { config, store } = openCaStore(o.dir);
      try {
        const t = createToken(store, config, {
          identity: o.identity, kind: o.kind, ttlMs: parseDuration(o.ttl, "ttl"),
          certTtlMs: o.certTtl ? parseDuration(o.certTtl, "cert-ttl") : undefined, dns: o.dns, ips: o.ip,
        }, Date.now());
        if (o.json) console.log(JSON.stringify({ token: t.token, identity: t.identity, kind: t.kind, expiresAt: new Date(t.expiresAt).toISOString() }));
        else {
          console.log(t.token);
          console.error(`token for ${t.identity} (${t.kind}, certificates ${formatDuration(t.certTtlMs)}), valid until ${new Date(t.expiresAt).toISOString()}, single use`);
        }
      } finally {
        store.close();
      }
    });

  ca.command("revoke")
    .description("revoke certificates by serial or by identity")
    .addHelpText("after", example("mcpmesh ca revoke --dir ./ca --identity team-a/alice --reason keyCompromise"))
    .requiredOption("--dir <dir>", "CA directory")
    .option("--identity <path>", "revoke every certificate of this identity")
    .option("--serial <hex>", "revoke one certificate")
    .option("--reason <reason>", "keyCompromise, superseded, cessationOfOperation, affiliationChanged, privilegeWithdrawn, or free text")
    .action(async (o) => {
      const { revoke, openCaStore } = await import("../ca/admin.ts");
      const { config, store } = openCaStore(o.dir);
      try {
        const serials = revoke(store, config, { serial: o.serial, identity: o.identity, reason: o.reason }, Date.now(), "cli");
        if (serials.length === 0) console.log("nothing to revoke: already revoked");
        for (const s of serials) console.log(`revoked ${s}`);
      } finally {
        store.close();
      }
    });

  ca.command("list")
    .description("list issued certificates")
    .addHelpText("after", example("mcpmesh ca list --dir ./ca --json"))
    .requiredOption("--dir <dir>", "CA directory")
    .option("--json", "print JSON")
    .action(async (o) => {
      // ca/admin.ts brings better-sqlite3; imported here so `mcpmesh agent run` does not carry it (issue 9).
      const { listCertificates, openCaStore } = await import("../ca/admin.ts");
      const { store } = openCaStore(o.dir);
      try {
        const rows = listCertificates(store, Date.now());
        if (o.json) {
          console.log(JSON.stringify(rows.map((r) => ({ serial: r.serial, identity: r.identity, kind: r.kind, notBefore: new Date(r.notBefore).toISOString(), notAfter: new Date(r.notAfter).toISOString(), status: r.status, revokedAt: r.revokedAt ? new Date(r.revokedAt).toISOString() : null, reason: r.reason })), null, 2));
        } else {
          console.log(["SERIAL".padEnd(34), "KIND".padEnd(7), "STATUS".padEnd(8), "NOT AFTER".padEnd(25), "IDENTITY"].join(" "));
          for (const r of rows) console.log([r.serial.padEnd(34), r.kind.padEnd(7), r.status.padEnd(8), new Date(r.notAfter).toISOString().padEnd(25), r.identity].join(" "));
        }
      } finally {
        store.close();
      }
    });

  program.command("enroll")
    .description("enroll with a one-time token: generate a key here, get a certificate from the CA")
    .addHelpText("after", example("mcpmesh enroll \"$(mcpmesh ca token --dir ./ca --identity team-a/alice)\" --dir ./alice-id"))
    .argument("<token>", "the token from `mcpmesh ca token`")
    .requiredOption("--dir <dir>", "identity directory to write (key.pem, cert.pem, ca.pem)")
    .option("--force", "replace an identity already in --dir")
    .action(async (token, o) => {
      const { enroll } = await import("../identity/enroll.ts");
      const r = await enroll(token, o.dir, { force: o.force });
      console.log(`enrolled as ${r.identity}`);
      console.log(`  certificate ${r.serial}, valid until ${r.notAfter}`);
      console.log(`  written to ${r.dir}/{key.pem,cert.pem,ca.pem}`);
    });

  program.command("renew")
    .description("renew the certificate in an identity directory over mTLS")
    .addHelpText("after", example("mcpmesh renew --dir ./alice-id", "mcpmesh renew --dir ./agent-id --daemon --exec 'systemctl reload my-server'"))
    .requiredOption("--dir <dir>", "identity directory")
    .option("--daemon", "keep running and renew at half-life (±10% jitter), retrying with backoff")
    .option("--exec <cmd>", "run this command after each renewal (e.g. to reload a server)")
    .action(async (o) => {
      if (!o.daemon) {
        const { renewIdentity } = await import("../identity/renew.ts");
        const r = await renewIdentity(o.dir);
        console.log(`renewed ${r.identity}: ${r.previousSerial} -> ${r.serial}, valid until ${new Date(r.notAfter).toISOString()}`);
        if (o.exec) await runAfterRenewal(o.exec, o.dir);
        return;
      }
      const log = createLogger({ name: "mcpmesh-renew" });
      const { RenewalScheduler } = await import("../identity/rotation.ts");
      const s = new RenewalScheduler({ dir: o.dir, logger: log });
      await new Promise<void>((resolve, reject) => {
        s.on("renewed", () => {
          if (o.exec) runAfterRenewal(o.exec, o.dir).catch((e) => log.error({ event: "exec_failed", reason: (e as Error).message }, "--exec command failed"));
        });
        s.on("expired", () => reject(new MeshError("MCPMESH_CERT_EXPIRED", `the certificate in ${o.dir} has expired; enroll again with a new token`)));
        onSignals(() => {
          s.stop();
          resolve();
        });
        s.start();
      });
    });

  const agent = program.command("agent").description("the sidecar in front of an MCP server")
    .addHelpText("after", example("mcpmesh agent check --config agent.yaml", "mcpmesh agent run --config agent.yaml"));

  agent.command("run")
    .description("run the agent: mTLS gate, policy and validation in front of the configured MCP server")
    .addHelpText("after", example("mcpmesh agent run --config agent.yaml          # SIGHUP reloads, SIGTERM drains; see docs/policy.md"))
    .requiredOption("--config <file>", "agent configuration (YAML or JSON)")
    .action(async (o) => {
      const log = createLogger({ name: "mcpmesh-agent" });
      const { loadAgentConfig } = await import("../agent/config.ts");
      const { startAgent } = await import("../agent/agent.ts");
      const cfg = loadAgentConfig(o.config);
      const running = await startAgent(cfg, { logger: log });
      process.on("SIGHUP", () => void running.reload().catch(() => {}));
      onSignals(() => running.close());
    });

  agent.command("check")
    .description("validate a config and its policy; optionally explain one call")
    .addHelpText("after", example("mcpmesh agent check --config agent.yaml", "mcpmesh agent check --config agent.yaml --identity spiffe://example.org/team-a/alice --tool add-note --args '{\"title\":\"x\"}'"))
    .requiredOption("--config <file>", "agent configuration (YAML or JSON)")
    .option("--identity <spiffe-id>", "explain: the caller's SPIFFE ID")
    .option("--tool <name>", "explain: the tool called")
    .option("--args <json>", "explain: the call's arguments as JSON", "{}")
    .option("--endpoint <id>", "explain: the endpoint whose rules apply (default: the first)")
    .option("--json", "print JSON")
    .action(async (o) => {
      const { checkConfigFile, explainCall } = await import("../agent/explain.ts");
      const check = checkConfigFile(o.config);
      if (!check.ok) {
        if (o.json) console.log(JSON.stringify({ ok: false, errors: check.errors }, null, 2));
        else {
          console.error(`${o.config}: ${check.errors.length} error(s)`);
          for (const e of check.errors) console.error(`  ${e.path || "(config)"}: ${e.message}`);
        }
        process.exitCode = 1;
        return;
      }
      if (!o.identity && !o.tool) {
        if (o.json) console.log(JSON.stringify({ ok: true, errors: [] }));
        else {
          const eps = check.config!.endpoints;
          console.log(`${o.config}: OK (${eps.length === 1 ? `${eps[0].rules.length} rules` : eps.map((e) => `${e.id}: ${e.rules.length} rules`).join("; ")})`);
        }
        return;
      }
      if (!o.identity || !o.tool) throw new InvalidArgumentError(o.identity ? "tool" : "identity", "explaining a call needs both --identity and --tool");
      let args: unknown;
      try {
        args = JSON.parse(o.args);
      } catch {
        throw new InvalidArgumentError("args", "is not valid JSON");
      }
      const ex = explainCall(check.config!, o.identity, o.tool, args, undefined, undefined, o.endpoint);
      const allowed = ex.decision.allow && ex.limits === null && (ex.overlay?.ok ?? true);
      if (o.json) console.log(JSON.stringify({ ok: true, allowed, ...ex }, null, 2));
      else {
        console.log(`${allowed ? "ALLOW" : "DENY"}: ${o.identity} -> ${o.tool}`);
        console.log(`  rule      ${ex.decision.rule ?? "(none: default deny)"}`);
        console.log(`  reason    ${ex.decision.reason}`);
        console.log(`  access    ${ex.access}`);
        console.log(`  listed    ${ex.listed ? "yes" : "no"}`);
        if (ex.limits) console.log(`  limits    ${ex.limits}`);
        if (ex.overlay) console.log(`  overlay   ${ex.overlay.ok ? "arguments pass" : ex.overlay.error}`);
        for (const n of ex.notes) console.log(`  note      ${n}`);
      }
      if (!allowed) process.exitCode = 3;
    });

  agent.command("status")
    .description("a human summary from a running agent's admin listener: traffic, denials, certificates, upstream")
    .addHelpText("after", example("mcpmesh agent status --config agent.yaml", "mcpmesh agent status --admin http://127.0.0.1:9100 --json"))
    .option("--admin <url>", "the admin listener, e.g. http://127.0.0.1:9100")
    .option("--config <file>", "find the admin listener in this agent configuration")
    .option("--json", "print the raw JSON status")
    .action(async (o) => {
      let base: string | undefined = o.admin;
      if (!base && o.config) {
        const { loadAgentConfig } = await import("../agent/config.ts");
        const cfg = loadAgentConfig(o.config);
        if (!cfg.admin) throw new InvalidArgumentError("config", `${o.config} has no admin.listen; the agent serves no status`);
        if (cfg.admin.listen.port === 0) throw new InvalidArgumentError("config", "admin.listen uses port 0 (a random port): pass --admin URL");
        const h = cfg.admin.listen.host.includes(":") ? `[${cfg.admin.listen.host}]` : cfg.admin.listen.host;
        base = `http://${h}:${cfg.admin.listen.port}`;
      }
      if (!base) throw new InvalidArgumentError("admin", "pass --admin URL or --config FILE");
      const { fetchStatus, formatStatus } = await import("../agent/status.ts");
      const st = await fetchStatus(base);
      console.log(o.json ? JSON.stringify(st, null, 2) : formatStatus(st));
    });

  const tools = agent.command("tools").description("tool pinning")
    .addHelpText("after", example("mcpmesh agent tools list --config agent.yaml"));
  tools.command("approve")
    .description("approve a changed tool definition (or pin a given hash)")
    .addHelpText("after", example("mcpmesh agent tools approve --config agent.yaml add-note"))
    .requiredOption("--config <file>", "agent configuration")
    .argument("<tool>", "tool name")
    .option("--hash <sha256>", "pin exactly this definition hash")
    .action(async (name, o) => {
      const { loadAgentConfig } = await import("../agent/config.ts");
      const { PinStore } = await import("../agent/pinning.ts");
      const cfg = loadAgentConfig(o.config);
      const store = PinStore.fromConfig(cfg);
      const r = store.approve(name, o.hash);
      console.log(`approved ${r.name}: ${r.previous ?? "(none)"} -> ${r.hash}`);
    });
  tools.command("list")
    .description("list pinned tools and changes waiting for approval")
    .addHelpText("after", example("mcpmesh agent tools list --config agent.yaml"))
    .requiredOption("--config <file>", "agent configuration")
    .action(async (o) => {
      const { loadAgentConfig } = await import("../agent/config.ts");
      const { PinStore } = await import("../agent/pinning.ts");
      const cfg = loadAgentConfig(o.config);
      const store = PinStore.fromConfig(cfg);
      for (const p of store.list()) console.log(`${p.name.padEnd(32)} ${p.hash}${p.pending ? `  CHANGED -> ${p.pending.hash} (approve with: mcpmesh agent tools approve --config ${o.config} ${p.name})` : ""}`);
    });

  const audit = program.command("audit").description("the agent's tamper-evident audit log")
    .addHelpText("after", example("mcpmesh audit verify audit.log.1 audit.log"));
  audit.command("verify")
    .description("check the hash chain of audit files (oldest first, e.g. audit.log.2 audit.log.1 audit.log)")
    .addHelpText("after", example("mcpmesh audit verify audit.log.2 audit.log.1 audit.log"))
    .argument("<files...>", "audit log files, oldest first")
    .option("--json", "print JSON")
    .action(async (files: string[], o) => {
      const { verifyAuditFiles, GENESIS } = await import("../agent/audit.ts");
      const r = verifyAuditFiles(files);
      if (o.json) console.log(JSON.stringify(r, null, 2));
      else if (r.ok) {
        console.log(`OK: ${r.records} records in ${r.files} file(s), seq ${r.lastSeq === null ? "-" : `..${r.lastSeq}`}, last hash ${r.lastHash ?? "-"}`);
        if (r.anchoredAt && r.anchoredAt !== GENESIS) console.log(`  (starts after a rotated-away record with hash ${r.anchoredAt})`);
      } else {
        console.error(`BROKEN: ${r.problem!.file}:${r.problem!.line}: ${r.problem!.reason}`);
        console.error(`  ${r.records} records verified before it`);
      }
      if (!r.ok) process.exitCode = 1;
    });

  program.command("connect")
    .description("a stdio MCP server for a local client (Claude Desktop, Cursor, VS Code) that forwards over mTLS to an agent")
    .argument("[url]", "the agent's endpoint: https://HOST:PORT/mcp (Streamable HTTP, falls back to SSE), https://HOST:PORT/sse, wss://HOST:PORT/ws")
    .option("--identity <dir>", "identity directory written by `mcpmesh enroll` (key.pem, cert.pem, ca.pem)")
    .option("--expect <spiffe-id>", "refuse an agent that is not exactly this SPIFFE ID")
    .addOption(new Option("--transport <kind>", "how to reach the agent").choices(["auto", "streamable-http", "sse", "ws"]).default("auto"))
    .option("--no-renew", "do not renew the certificate in-process (when `mcpmesh renew --daemon` already does)")
    .addOption(new Option("--print-config <client>", "print the JSON to paste into this client's MCP configuration, then exit").choices(["claude", "cursor", "vscode"]))
    .option("--name <name>", "the server's name in the printed configuration", "mcpmesh")
    .addHelpText("after", `
stdout is the MCP channel; logs go to stderr. Examples:
  mcpmesh connect https://agent.example.org:8443/mcp --identity ~/.mcpmesh/alice --expect spiffe://example.org/agents/weather
  mcpmesh connect --print-config claude --identity ~/.mcpmesh/alice https://agent.example.org:8443/mcp --name weather`)
    .action(async (url: string | undefined, o) => {
      if (o.printConfig) {
        const { clientConfig, CONFIG_FILES } = await import("./client-config.ts");
        const cfg = clientConfig(o.printConfig, { url, identityDir: o.identity, expect: o.expect, transport: o.transport, name: o.name, renew: o.renew });
        console.log(JSON.stringify(cfg, null, 2));
        console.error(`paste into ${CONFIG_FILES[o.printConfig as keyof typeof CONFIG_FILES]}`);
        return;
      }
      const { startConnect } = await import("../identity/connect.ts");
      // Logs on stderr only: stdout carries nothing but the local client's JSON-RPC.
      const log = createLogger({ name: "mcpmesh-connect", destination: 2 });
      const conn = await startConnect({ url: url!, identityDir: o.identity, expect: o.expect, transport: o.transport, renew: o.renew, logger: log });
      process.on("SIGINT", () => void conn.close());
      process.on("SIGTERM", () => void conn.close());
      const result = await conn.closed;
      // Undici keeps idle sockets and stdin stays referenced: end explicitly once the session is over, after the
      // last answers written to stdout are flushed (pipes are asynchronous on some platforms).
      await new Promise<void>((resolve) => process.stdout.write("", () => resolve()));
      if (result.error) throw result.error;
      process.exit(0);
    });

  program.command("demo")
    .description("run a whole mesh on this machine, narrated and checked: CA, enrollment, agent, policy, limits, revocation, rotation")
    .option("--keep", "leave the mesh running and print how to connect MCP clients to it (Ctrl-C stops it)")
    .addHelpText("after", example("mcpmesh demo            # exits 0 when every step behaved as expected", "mcpmesh demo --keep     # then connect Claude Desktop, Cursor, VS Code or the MCP Inspector"))
    .action(async (o) => {
      const { runDemoCli } = await import("./demo-cli.ts");
      process.exitCode = await runDemoCli({ keep: !!o.keep });
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (isMeshError(e)) {
      console.error(`mcpmesh: ${e.message}`);
      return 1;
    }
    console.error(`mcpmesh: unexpected error: ${(e as Error)?.stack ?? String(e)}`);
    return 1;
  }
}

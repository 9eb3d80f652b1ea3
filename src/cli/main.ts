/**
 * The `vbus` command line: run the broker, publish, subscribe, request, reply, read stats, and
 * print the QEMU flags or libvirt XML for a VM. Runs under Deno and Bun (and through Node via
 * `bin/vbus.mjs`, which starts one of them).
 *
 * @example
 * ```sh
 * vbus broker --config broker.jsonc
 * vbus sub 'sensors.>' --server /run/vbus/broker.sock
 * vbus pub sensors.vm1.temp '{"c": 21.5}' --port org.vbus.0
 * ```
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { type Bus, connect } from "../client/bus.ts";
import type { ConnectOptions } from "../client/options.ts";
import type { Msg } from "../client/msg.ts";
import { Broker, RELOAD_SUBJECT, STATS_SUBJECT } from "../broker/broker.ts";
import { serveBroker } from "../broker/lifecycle.ts";
import { logSettingsFromEnv } from "../util/log.ts";
import { loadConfig } from "../broker/config.ts";
import { qemuArgs, shellQuote } from "../vm/qemu_args.ts";
import { libvirtXml } from "../vm/libvirt_xml.ts";
import { parseValue, toJsonLine } from "./values.ts";
import { DEFAULT_TOP_INTERVAL_MS, runTop } from "./top.ts";

/** Usage text, printed by `--help` and on bad arguments. */
export const USAGE = `vbus: publish/subscribe between VMs and their host over virtio-serial

Usage:
  vbus broker --config FILE
  vbus pub SUBJECT VALUE [--count N] [--header K=V]...
  vbus sub SUBJECT [--count N] [--queue Q]
  vbus req SUBJECT VALUE [--timeout MS]
  vbus reply SUBJECT VALUE [--count N] [--queue Q]
  vbus stats
  vbus reload
  vbus top [--interval MS]
  vbus qemu-args VM --config FILE
  vbus libvirt-xml VM --config FILE

VALUE is JSON; a bare word is taken as a string ('hello' -> "hello").
sub and reply print one JSON line per message: {"subject", "data", "reply"?, "headers"?};
binary data prints as {"$binary": "<base64>"}. A message whose value cannot be decoded (another
VM sent bytes that are not a value vbus accepts) is reported on stderr and skipped; sub and reply
go on (reply still answers it), req exits 1.

Client commands connect through:
  --port PATH      a guest's virtio-serial port (name under /dev/virtio-ports, or a path)
  --server SOCKET  the broker's host socket
defaulting to $VBUS_SERVER, then $VBUS_PORT, then the guest port org.vbus.0.

Options:
  --count N       stop after N messages (pub: publish N times; default 1 for pub, unlimited otherwise)
  --queue Q       join queue group Q
  --timeout MS    request timeout (default 5000)
  --header K=V    add a message header (repeatable)
  --wake W        host clients on rings: how the broker wakes this one, doorbell (default) or futex
  --interval MS   top: refresh every MS milliseconds (default 1000; q quits)
  --config FILE   broker configuration (JSON with comments; see README)
  -h, --help      show this help

The broker reloads its config file on SIGHUP or \`vbus reload\` (which prints what changed, or
why the new file was refused: then the old config keeps running), and drains on SIGTERM:
nothing new is accepted, queued messages get drainTimeoutMs to go out, then it exits 0.
With NOTIFY_SOCKET set (systemd Type=notify) it sends READY=1 once it serves.

Environment: VBUS_LOG=debug|info|warn|error|silent (default info),
VBUS_LOG_FORMAT=text|json (default text); any other value is an error.
`;

/** A usage error: printed with the usage text, exit code 2. */
export class UsageError extends Error {}

const OPTIONS = {
  config: { type: "string" },
  count: { type: "string" },
  queue: { type: "string" },
  timeout: { type: "string" },
  header: { type: "string", multiple: true },
  port: { type: "string" },
  server: { type: "string" },
  wake: { type: "string" },
  interval: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

type Values = ReturnType<
  typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>
>["values"];

/** What each command takes: positional names and allowed options. */
const COMMANDS: Record<string, { args: string[]; options: (keyof typeof OPTIONS)[] }> = {
  broker: { args: [], options: ["config"] },
  pub: { args: ["SUBJECT", "VALUE"], options: ["count", "header", "port", "server", "wake"] },
  sub: { args: ["SUBJECT"], options: ["count", "queue", "port", "server", "wake"] },
  req: { args: ["SUBJECT", "VALUE"], options: ["timeout", "header", "port", "server", "wake"] },
  reply: { args: ["SUBJECT", "VALUE"], options: ["count", "queue", "port", "server", "wake"] },
  stats: { args: [], options: ["timeout", "port", "server"] },
  reload: { args: [], options: ["timeout", "server"] },
  top: { args: [], options: ["interval", "port", "server"] },
  "qemu-args": { args: ["VM"], options: ["config"] },
  "libvirt-xml": { args: ["VM"], options: ["config"] },
};

/**
 * Run the CLI with `argv` (without the runtime and script). Returns the exit code.
 *
 * @example
 * ```ts
 * const code = await main(["pub", "greetings", "hello", "--server", "/tmp/vbus.sock"]);
 * ```
 */
export async function main(
  argv: string[],
  out: (line: string) => void = printLine,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    return usageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    out(USAGE.trimEnd());
    return 0;
  }
  const [command, ...args] = positionals;
  if (!command) return usageError("no command given");
  const spec = COMMANDS[command];
  if (!spec) return usageError(`unknown command "${command}"`);
  if (args.length !== spec.args.length) {
    return usageError(
      `${command} takes ${spec.args.join(" ") || "no arguments"}, got ${args.length} argument(s)`,
    );
  }
  for (const key of Object.keys(values) as (keyof typeof OPTIONS)[]) {
    if (key !== "help" && !spec.options.includes(key)) {
      return usageError(`${command} does not take --${key}`);
    }
  }
  try {
    logSettingsFromEnv(); // a bad VBUS_LOG / VBUS_LOG_FORMAT stops every command at once
  } catch (err) {
    process.stderr.write(`vbus: ${(err as Error).message}\n`);
    return 2;
  }
  try {
    return await run(command, args, values, out);
  } catch (err) {
    if (err instanceof UsageError) return usageError(err.message);
    process.stderr.write(`vbus ${command}: ${(err as Error).message}\n`);
    return 1;
  }
}

/**
 * Print one received message as a JSON line; a message that cannot be decoded or printed is
 * reported on stderr instead, and the command goes on. Returns whether it was printed.
 */
function printMessage(command: string, msg: Msg, out: (line: string) => void): boolean {
  let line: string;
  try {
    line = toJsonLine(msg.toJSON());
  } catch (err) {
    const why = msg.decodeError
      ? (err as Error).message
      : `message on "${msg.subject}": ${(err as Error).message}`;
    process.stderr.write(`vbus ${command}: skipped a bad message: ${why}\n`);
    return false;
  }
  out(line);
  return true;
}

function usageError(message: string): number {
  process.stderr.write(`vbus: ${message}\n\n${USAGE}`);
  return 2;
}

function printLine(line: string) {
  process.stdout.write(line + "\n");
}

function positiveInt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) {
    throw new UsageError(`--${name} must be a positive integer, got "${v}"`);
  }
  return n;
}

function headersOf(list: string[] | undefined): Record<string, string> | undefined {
  if (!list?.length) return undefined;
  const out: Record<string, string> = {};
  for (const h of list) {
    const eq = h.indexOf("=");
    if (eq <= 0) throw new UsageError(`--header must be KEY=VALUE, got "${h}"`);
    out[h.slice(0, eq)] = h.slice(eq + 1);
  }
  return out;
}

function connectOptions(values: Values): ConnectOptions {
  const wake = values.wake;
  if (wake !== undefined && wake !== "doorbell" && wake !== "futex") {
    throw new UsageError(`--wake must be doorbell or futex, got "${wake}"`);
  }
  return { port: values.port, server: values.server, name: "vbus-cli", reconnect: true, wake };
}

async function withBus<T>(
  command: string,
  values: Values,
  fn: (bus: Bus) => Promise<T>,
): Promise<T> {
  const bus = await connect(connectOptions(values));
  // The client reconnects by itself; say when publishes may have been lost on the way.
  bus.on("disconnected", (e) => {
    if (e.maybeLost > 0) {
      process.stderr.write(
        `vbus ${command}: disconnected (${e.reason}); ${e.maybeLost} publishes may have been lost\n`,
      );
    }
  });
  const stop = () => void bus.drain();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    return await fn(bus);
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
    await bus.drain();
  }
}

async function run(
  command: string,
  args: string[],
  values: Values,
  out: (line: string) => void,
): Promise<number> {
  switch (command) {
    case "broker":
      return await runBroker(values);
    case "pub": {
      const [subject, raw] = args;
      const value = parseValue(raw);
      const count = positiveInt(values.count, "count") ?? 1;
      const headers = headersOf(values.header);
      await withBus(command, values, async (bus) => {
        for (let i = 0; i < count; i++) await bus.publish(subject, value, { headers });
        await bus.flush();
      });
      return 0;
    }
    case "sub": {
      const [subject] = args;
      const count = positiveInt(values.count, "count");
      await withBus(command, values, async (bus) => {
        const sub = bus.subscribe(subject, { queue: values.queue, max: count });
        await bus.flush(); // the subscription is active once this resolves
        for await (const msg of sub) printMessage(command, msg, out);
      });
      return 0;
    }
    case "req": {
      const [subject, raw] = args;
      const timeout = positiveInt(values.timeout, "timeout") ?? 5000;
      await withBus(command, values, async (bus) => {
        const msg = await bus.request(subject, parseValue(raw), {
          timeout,
          headers: headersOf(values.header),
        });
        let line: string;
        try {
          line = toJsonLine(msg.toJSON());
        } catch (err) {
          throw new Error(`the reply to "${subject}" could not be read: ${(err as Error).message}`);
        }
        out(line);
      });
      return 0;
    }
    case "reply": {
      const [subject, raw] = args;
      const value = parseValue(raw);
      const count = positiveInt(values.count, "count");
      await withBus(command, values, async (bus) => {
        const sub = bus.subscribe(subject, { queue: values.queue, max: count });
        await bus.flush();
        for await (const msg of sub) {
          printMessage(command, msg, out);
          // The answer does not depend on the request's value: answer a bad one too, so its
          // sender does not wait for a timeout.
          if (msg.reply) await msg.respond(value);
        }
      });
      return 0;
    }
    case "stats": {
      const timeout = positiveInt(values.timeout, "timeout") ?? 5000;
      await withBus(command, values, async (bus) => {
        const msg = await bus.request(STATS_SUBJECT, null, { timeout });
        out(JSON.stringify(msg.data, null, 2));
      });
      return 0;
    }
    case "top": {
      const intervalMs = positiveInt(values.interval, "interval") ?? DEFAULT_TOP_INTERVAL_MS;
      return await runTop({ intervalMs, connect: connectOptions(values) });
    }
    case "reload": {
      const timeout = positiveInt(values.timeout, "timeout") ?? 30_000;
      let failed = "";
      await withBus(command, values, async (bus) => {
        const msg = await bus.request(RELOAD_SUBJECT, null, { timeout });
        const answer = msg.data as { ok?: boolean; changes?: string[]; error?: string };
        if (answer?.ok) {
          out(answer.changes?.length ? answer.changes.join("\n") : "reloaded: nothing changed");
        } else failed = answer?.error ?? "the broker gave no reason";
      });
      if (failed) {
        process.stderr.write(
          `vbus reload: refused, the broker keeps its running config: ${failed}\n`,
        );
        return 1;
      }
      return 0;
    }
    case "qemu-args":
    case "libvirt-xml": {
      const vm = await findVm(values, args[0]);
      out(command === "qemu-args" ? qemuArgs(vm).map(shellQuote).join(" ") : libvirtXml(vm));
      return 0;
    }
  }
  throw new UsageError(`unknown command "${command}"`);
}

async function findVm(values: Values, name: string) {
  if (!values.config) throw new UsageError("--config FILE is required");
  const config = await loadConfig(values.config);
  const vm = config.vms.find((v) => v.name === name);
  if (!vm) {
    throw new Error(
      `${values.config}: no VM named "${name}" (VMs: ${
        config.vms.map((v) => v.name).join(", ") || "none"
      })`,
    );
  }
  return vm;
}

async function runBroker(values: Values): Promise<number> {
  if (!values.config) throw new UsageError("broker needs --config FILE");
  const config = await loadConfig(values.config);
  // Reload on SIGHUP, drain on SIGTERM/SIGINT, READY=1 to systemd: see lifecycle.ts.
  return await serveBroker(new Broker(config));
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}

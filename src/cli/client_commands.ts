/**
 * The CLI commands that talk to a broker: `pub`, `sub`, `req`, `reply`, `stats`, `reload`.
 * Each connects (`--server` / `--port`, `--connect-timeout`), does its work and drains.
 * Every refusal is an error with exit code 1, including a publish the broker refuses: its ERR
 * arrives asynchronously, so `pub` waits for a PING round trip after publishing, which the
 * broker answers only after it has handled (and refused) everything before it.
 *
 * @example
 * ```ts
 * import { runClientCommand } from "./client_commands.ts";
 * const code = await runClientCommand({ command: "pub", args: ["a", "1"], values: { server: "/tmp/b.sock" } });
 * ```
 * @module
 */
import process from "node:process";
import { type Bus, connect } from "../client/bus.ts";
import type { ConnectOptions } from "../client/options.ts";
import type { Msg } from "../client/msg.ts";
import { RELOAD_SUBJECT, STATS_SUBJECT } from "../broker/broker.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import { ErrorCode } from "../protocol/errors.ts";
import { type CommandLine, type OptionValues, UsageError } from "./args.ts";
import { COMMANDS } from "./commands.ts";
import { parseDuration } from "./durations.ts";
import { type InputMode, readStdin, valueFromArgument, valueFromBytes } from "./payload.ts";
import {
  formatHuman,
  headerLines,
  type OutputMode,
  rawBytes,
  toJsonLine,
  valueText,
} from "./message_output.ts";
import { PCI_DEVICES_DIR, pciAddress } from "../shm/find_ivshmem.ts";

/** Where the CLI writes: text lines and, for `--raw`, bytes. */
export interface CliOutput {
  line(text: string): void;
  bytes(data: Uint8Array): void;
}

/**
 * stdout.
 *
 * @example
 * ```ts
 * STDOUT.line("hello");
 * ```
 */
export const STDOUT: CliOutput = {
  line: (text) => void process.stdout.write(text + "\n"),
  bytes: (data) => void process.stdout.write(data),
};

const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
const DEFAULT_RELOAD_TIMEOUT_MS = 30_000;

function positiveInt(v: string | undefined, name: string, command: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) {
    throw new UsageError(`--${name} must be a positive integer, got "${v}"`, command);
  }
  return n;
}

function headersOf(
  list: string[] | undefined,
  command: string,
): Record<string, string> | undefined {
  if (!list?.length) return undefined;
  const out: Record<string, string> = {};
  for (const h of list) {
    const eq = h.indexOf("=");
    if (eq <= 0) throw new UsageError(`--header must be KEY=VALUE, got "${h}"`, command);
    out[h.slice(0, eq)] = h.slice(eq + 1);
  }
  return out;
}

function only(values: OptionValues, names: (keyof OptionValues)[], command: string) {
  const given = names.filter((n) => values[n]);
  if (given.length > 1) {
    const both = COMMANDS[command].options.includes("output") &&
      COMMANDS[command].options.includes("stdin");
    const hint = both ? " (--output F prints differently from how VALUE is read)" : "";
    throw new UsageError(
      `${given.map((n) => `--${n}`).join(" and ")} exclude each other${hint}`,
      command,
    );
  }
  return given[0];
}

/**
 * How VALUE is read: --string, --raw, else JSON.
 *
 * @example
 * ```ts
 * inputMode({ raw: true }, "pub"); // "raw"
 * ```
 */
export function inputMode(values: OptionValues, command: string): InputMode {
  const m = only(values, ["json", "string", "raw"], command);
  return m === "string" || m === "raw" ? m : "json";
}

const OUTPUT_MODES: readonly OutputMode[] = ["human", "json", "raw"];

/**
 * How messages are printed: --output, else --json, --raw or --human, else human on a terminal
 * and JSON lines otherwise.
 *
 * @example
 * ```ts
 * outputMode({}, "sub", false); // "json"
 * ```
 */
export function outputMode(values: OptionValues, command: string, isTTY: boolean): OutputMode {
  if (values.output !== undefined) {
    if (!(OUTPUT_MODES as readonly string[]).includes(values.output)) {
      throw new UsageError(
        `--output must be ${OUTPUT_MODES.join(", ")}, got "${values.output}"`,
        command,
      );
    }
    return values.output as OutputMode;
  }
  const m = only(values, ["json", "raw", "human"], command);
  if (m === "json" || m === "raw" || m === "human") return m;
  return isTTY ? "human" : "json";
}

/**
 * The connect options of the CLI's flags (`--server`, `--port`, `--connect-timeout`, `--wake`,
 * `--ivshmem`).
 *
 * @example
 * ```ts
 * connectOptions({ server: "/run/vbus/broker.sock", "connect-timeout": "2s" }, "pub");
 * ```
 */
export function connectOptions(values: OptionValues, command: string): ConnectOptions {
  const wake = values.wake;
  if (wake !== undefined && wake !== "doorbell" && wake !== "futex") {
    throw new UsageError(`--wake must be doorbell or futex, got "${wake}"`, command);
  }
  let shm: string | undefined;
  if (values.ivshmem !== undefined) {
    try {
      shm = `${PCI_DEVICES_DIR}/${pciAddress(values.ivshmem)}/resource2`;
    } catch (err) {
      throw new UsageError(`--ivshmem: ${(err as Error).message}`, command);
    }
  }
  return {
    port: values.port,
    server: values.server,
    name: "vbus-cli",
    reconnect: true,
    wake,
    timeout: parseDuration(values["connect-timeout"], "connect-timeout", command),
    // Asking for a connect timeout is asking to wait for a broker that is starting.
    waitOnFirstConnect: values["connect-timeout"] !== undefined,
    ...(shm ? { shm } : {}),
  };
}

/** A refusal the broker reported (an ERR) while a command ran. */
interface Refusal {
  code: string;
  message: string;
}

function refusalText(r: Refusal): string {
  return `refused by the broker: ${r.message} (${r.code})`;
}

/**
 * Connect, run `fn`, drain. `onRefusal` sees every ERR the broker sends (except undecodable
 * messages, which the printing reports) until the connection is closed, drain included.
 */
async function withBus<T>(
  command: string,
  values: OptionValues,
  fn: (bus: Bus) => Promise<T>,
  onRefusal?: (r: Refusal) => void,
): Promise<T> {
  const bus = await connect(connectOptions(values, command));
  const offError = bus.on("error", (e) => {
    if (e.code !== ErrorCode.Codec) onRefusal?.({ code: e.code, message: e.message });
  });
  // The client reconnects by itself; say when publishes may have been lost on the way.
  const offDisconnect = bus.on("disconnected", (e) => {
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
    offError();
    offDisconnect();
  }
}

/** VALUE from the argument or, for `-` / `--stdin`, from standard input (read once). */
async function commandValue(cl: CommandLine, index: number, bus: Bus): Promise<unknown> {
  const command = cl.command!;
  const mode = inputMode(cl.values, command);
  const arg = cl.args[index];
  if (arg !== undefined && arg !== "-") return valueFromArgument(arg, mode, command);
  if (process.stdin.isTTY) {
    process.stderr.write(
      `vbus ${command}: reading VALUE from standard input (end it with Ctrl-D)\n`,
    );
  }
  const max = bus.info?.maxFrameBytes ?? DEFAULT_LIMITS.maxFrameBytes;
  return valueFromBytes(await readStdin(max), mode);
}

/** Find a bad VALUE argument (a usage mistake) before connecting. */
function checkValueArgument(cl: CommandLine, index: number): void {
  const command = cl.command!;
  const mode = inputMode(cl.values, command);
  const arg = cl.args[index];
  if (arg !== undefined && arg !== "-") valueFromArgument(arg, mode, command);
}

/** Prints messages in one output mode, reporting (not printing) undecodable ones. */
class MessagePrinter {
  #count = 0;
  constructor(
    private readonly command: string,
    private readonly mode: OutputMode,
    private readonly out: CliOutput,
  ) {}

  /** Print `msg`; returns false when it could not be decoded (reported on stderr). */
  print(msg: Msg): boolean {
    let printed;
    try {
      printed = msg.toJSON();
    } catch (err) {
      const why = msg.decodeError
        ? (err as Error).message
        : `message on "${msg.subject}": ${(err as Error).message}`;
      process.stderr.write(`vbus ${this.command}: skipped a bad message: ${why}\n`);
      return false;
    }
    if (this.mode === "raw") this.out.bytes(rawBytes(printed.data));
    else if (this.mode === "json") this.out.line(toJsonLine(printed));
    else this.out.line(formatHuman(++this.#count, printed));
    return true;
  }
}

async function pub(cl: CommandLine): Promise<number> {
  const [subject] = cl.args;
  const { values } = cl;
  const count = positiveInt(values.count, "count", "pub") ?? 1;
  const headers = headersOf(values.header, "pub");
  checkValueArgument(cl, 1);
  const refusals: Refusal[] = [];
  let failure: unknown;
  try {
    await withBus("pub", values, async (bus) => {
      const value = await commandValue(cl, 1, bus);
      for (let i = 0; i < count && refusals.length === 0; i++) {
        await bus.publish(subject, value, { headers });
        // The broker answers a PING after it has handled every publish before it, so a
        // refusal (its ERR, sent asynchronously) has arrived once the flush resolves. After
        // the first publish too: a refused subject stops the loop before the broker's error
        // limit closes the session.
        if (i === 0 || i === count - 1) await bus.flush();
      }
    }, (r) => refusals.push(r));
  } catch (err) {
    failure = err; // a refusal explains it better (the broker closes a session that errs on)
  }
  if (refusals.length === 0) {
    if (failure !== undefined) throw failure;
    return 0;
  }
  const more = refusals.length > 1 ? ` (and ${refusals.length - 1} more)` : "";
  process.stderr.write(`vbus pub: ${refusalText(refusals[0])}${more}\n`);
  return 1;
}

async function sub(cl: CommandLine, out: CliOutput): Promise<number> {
  const [subject] = cl.args;
  const { values } = cl;
  const count = positiveInt(values.count, "count", "sub");
  const printer = new MessagePrinter("sub", outputMode(values, "sub", !!process.stdout.isTTY), out);
  await withBus("sub", values, async (bus) => {
    const s = bus.subscribe(subject, { queue: values.queue, max: count });
    await bus.flush(); // the subscription is active once this resolves
    for await (const msg of s) printer.print(msg);
  });
  return 0;
}

async function req(cl: CommandLine, out: CliOutput): Promise<number> {
  const [subject] = cl.args;
  const { values } = cl;
  const timeout = parseDuration(values.timeout, "timeout", "req") ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const headers = headersOf(values.header, "req");
  const mode = outputMode(values, "req", !!process.stdout.isTTY);
  checkValueArgument(cl, 1);
  await withBus("req", values, async (bus) => {
    const msg = await bus.request(subject, await commandValue(cl, 1, bus), { timeout, headers });
    let printed;
    try {
      printed = msg.toJSON();
    } catch (err) {
      throw new Error(`the reply to "${subject}" could not be read: ${(err as Error).message}`);
    }
    if (mode === "raw") out.bytes(rawBytes(printed.data));
    else if (mode === "json") out.line(toJsonLine(printed));
    else {
      const h = headerLines(printed.headers);
      out.line([...h, ...(h.length ? [""] : []), valueText(printed.data)].join("\n"));
    }
  });
  return 0;
}

async function reply(cl: CommandLine, out: CliOutput): Promise<number> {
  const [subject] = cl.args;
  const { values } = cl;
  const count = positiveInt(values.count, "count", "reply");
  const printer = new MessagePrinter(
    "reply",
    outputMode(values, "reply", !!process.stdout.isTTY),
    out,
  );
  checkValueArgument(cl, 1);
  let refused = 0;
  await withBus("reply", values, async (bus) => {
    const value = await commandValue(cl, 1, bus);
    const s = bus.subscribe(subject, { queue: values.queue, max: count });
    await bus.flush();
    for await (const msg of s) {
      printer.print(msg);
      // The answer does not depend on the request's value: answer a bad one too, so its
      // sender does not wait for a timeout.
      if (msg.reply) await msg.respond(value);
    }
  }, (r) => {
    refused++;
    process.stderr.write(`vbus reply: ${refusalText(r)}\n`);
  });
  return refused ? 1 : 0;
}

async function stats(cl: CommandLine, out: CliOutput): Promise<number> {
  const timeout = parseDuration(cl.values.timeout, "timeout", "stats") ??
    DEFAULT_REQUEST_TIMEOUT_MS;
  await withBus("stats", cl.values, async (bus) => {
    const msg = await bus.request(STATS_SUBJECT, null, { timeout });
    out.line(JSON.stringify(msg.data, null, 2));
  });
  return 0;
}

async function reload(cl: CommandLine, out: CliOutput): Promise<number> {
  const timeout = parseDuration(cl.values.timeout, "timeout", "reload") ??
    DEFAULT_RELOAD_TIMEOUT_MS;
  let failed = "";
  await withBus("reload", cl.values, async (bus) => {
    const msg = await bus.request(RELOAD_SUBJECT, null, { timeout });
    const answer = msg.data as { ok?: boolean; changes?: string[]; error?: string };
    if (answer?.ok) {
      out.line(answer.changes?.length ? answer.changes.join("\n") : "reloaded: nothing changed");
    } else failed = answer?.error ?? "the broker gave no reason";
  });
  if (failed) {
    process.stderr.write(`vbus reload: refused, the broker keeps its running config: ${failed}\n`);
    return 1;
  }
  return 0;
}

const CLIENT_COMMANDS: Record<string, (cl: CommandLine, out: CliOutput) => Promise<number>> = {
  pub,
  sub,
  req,
  reply,
  stats,
  reload,
};

/**
 * Is `command` one of this module's?
 *
 * @example
 * ```ts
 * isClientCommand("pub"); // true
 * ```
 */
export function isClientCommand(command: string): boolean {
  return command in CLIENT_COMMANDS;
}

/**
 * Run one client command; resolves with its exit code. Usage mistakes throw {@link UsageError}
 * (before connecting when they can be found then), other failures throw their error.
 *
 * @example
 * ```ts
 * await runClientCommand({ command: "sub", args: ["a.>"], values: { count: "1" } }, STDOUT);
 * ```
 */
export function runClientCommand(cl: CommandLine, out: CliOutput = STDOUT): Promise<number> {
  return CLIENT_COMMANDS[cl.command!](cl, out);
}

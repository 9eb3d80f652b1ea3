/**
 * The `vbus` command line: run the broker, publish, subscribe, request, reply, read stats, and
 * print the QEMU flags or libvirt XML for a VM. Runs under Deno and Bun (and through Node via
 * `bin/vbus.mjs`, which starts one of them). `vbus --help` lists the commands, `vbus COMMAND
 * --help` explains one; the tables behind both are in `commands.ts`.
 *
 * Exit codes: 0 done, 1 the command failed (a refusal, a timeout, an unreachable broker, a
 * bad config), 2 a usage mistake (reported in one line, with the `--help` to read).
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
import { Broker } from "../broker/broker.ts";
import { serveBroker } from "../broker/lifecycle.ts";
import { logSettingsFromEnv } from "../util/log.ts";
import { loadConfig } from "../broker/config.ts";
import { qemuArgs, shellQuote } from "../vm/qemu_args.ts";
import { LIBVIRT_DEVICES, type LibvirtDevice, libvirtXml } from "../vm/libvirt_xml.ts";
import { type CommandLine, parseCommandLine, UsageError } from "./args.ts";
import { commandHelp, COMMANDS, overallHelp } from "./commands.ts";
import { connectOptions, isClientCommand, runClientCommand, STDOUT } from "./client_commands.ts";
import { PayloadError } from "./payload.ts";
import { COMPLETION_SHELLS, completionScript } from "./completion.ts";
import { parseDuration } from "./durations.ts";
import { versionLine } from "./version.ts";
import { DEFAULT_TOP_INTERVAL_MS, runTop } from "./top.ts";

export { UsageError } from "./args.ts";

/**
 * Run the CLI with `argv` (without the runtime and script). Returns the exit code. `out`
 * receives text lines (`--raw` payloads go to stdout as bytes).
 *
 * @example
 * ```ts
 * const code = await main(["pub", "greetings", '"hello"', "--server", "/tmp/vbus.sock"]);
 * ```
 */
export async function main(
  argv: string[],
  out: (line: string) => void = STDOUT.line,
): Promise<number> {
  let cl: CommandLine;
  try {
    cl = parseCommandLine(argv);
  } catch (err) {
    return usageError(err);
  }
  const { command, values } = cl;
  if (values.version) {
    out(versionLine());
    return 0;
  }
  if (values.help || command === undefined) {
    if (command === undefined && !values.help) {
      return usageError(new UsageError("no command given"));
    }
    out(command && command !== "help" ? commandHelp(command) : overallHelp());
    return 0;
  }
  try {
    logSettingsFromEnv(); // a bad VBUS_LOG / VBUS_LOG_FORMAT stops every command at once
  } catch (err) {
    process.stderr.write(`vbus: ${(err as Error).message}\n`);
    return 2;
  }
  try {
    return await run(cl, out);
  } catch (err) {
    if (err instanceof UsageError) return usageError(err);
    process.stderr.write(`vbus ${command}: ${(err as Error).message}\n`);
    return 1;
  }
}

function usageError(err: unknown): number {
  if (!(err instanceof UsageError)) throw err;
  process.stderr.write(err.format() + "\n");
  return 2;
}

async function run(cl: CommandLine, out: (line: string) => void): Promise<number> {
  const command = cl.command!;
  const { values, args } = cl;
  if (isClientCommand(command)) {
    try {
      return await runClientCommand(cl, { line: out, bytes: STDOUT.bytes });
    } catch (err) {
      if (err instanceof PayloadError) {
        process.stderr.write(`vbus ${command}: ${err.message}\n`);
        return 1;
      }
      throw err;
    }
  }
  switch (command) {
    case "broker": {
      if (!values.config) throw new UsageError("broker needs --config FILE", command);
      const config = await loadConfig(values.config);
      // Reload on SIGHUP, drain on SIGTERM/SIGINT, READY=1 to systemd: see lifecycle.ts.
      return await serveBroker(new Broker(config));
    }
    case "agent": {
      const slots = values.slots === undefined ? undefined : Number(values.slots);
      if (slots !== undefined && (!Number.isInteger(slots) || slots < 1 || slots > 256)) {
        throw new UsageError(
          `--slots must be an integer from 1 to 256, got "${values.slots}"`,
          command,
        );
      }
      const { serveAgent, groupId } = await import("../agent/serve.ts");
      const code = await serveAgent({
        socket: values.socket,
        slots,
        port: values.port,
        ...(values.ivshmem ? { shm: connectOptions(values, command).shm as string } : {}),
        ...(values.group ? { socketGroup: groupId(values.group) } : {}),
      });
      // Stopped: everyone disconnected, port and socket closed. But on a guest's virtio-serial
      // device the port's pending read() sits in the runtime's thread pool and cannot be
      // cancelled, so it would keep the process alive until SIGKILL: end it here
      // (tests/vm_agent_stop_test.ts).
      return process.exit(code);
    }
    case "top": {
      const intervalMs = parseDuration(values.interval, "interval", command) ??
        DEFAULT_TOP_INTERVAL_MS;
      return await runTop({ intervalMs, connect: connectOptions(values, command) });
    }
    case "qemu-args": {
      out(qemuArgs(await findVm(cl)).map(shellQuote).join(" "));
      return 0;
    }
    case "libvirt-xml": {
      const device = values.device;
      if (device !== undefined && !(LIBVIRT_DEVICES as readonly string[]).includes(device)) {
        throw new UsageError(
          `--device must be ${LIBVIRT_DEVICES.join(" or ")}, got "${device}"`,
          command,
        );
      }
      out(libvirtXml(await findVm(cl), { device: device as LibvirtDevice | undefined }).trimEnd());
      return 0;
    }
    case "completion": {
      const script = completionScript(args[0]);
      if (!script) {
        throw new UsageError(
          `no completion for "${args[0]}": choose ${COMPLETION_SHELLS.join(" or ")}`,
          command,
        );
      }
      out(script.trimEnd());
      return 0;
    }
    case "help": {
      const topic = args[0];
      if (topic !== undefined && !COMMANDS[topic]) {
        throw new UsageError(`unknown command "${topic}"`);
      }
      out(topic ? commandHelp(topic) : overallHelp());
      return 0;
    }
  }
  throw new UsageError(`unknown command "${command}"`);
}

async function findVm(cl: CommandLine) {
  const { values, command } = cl;
  if (!values.config) throw new UsageError(`${command} needs --config FILE`, command);
  const name = cl.args[0];
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

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}

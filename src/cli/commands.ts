/**
 * What the `vbus` CLI accepts: every option once (its type, argument name and help line), and
 * every command with its arguments, options and help text. The parser (`args.ts`), the help
 * output and the shell completion (`completion.ts`) are all made from these tables, so they
 * cannot disagree.
 *
 * @example
 * ```ts
 * import { COMMANDS, commandHelp } from "./commands.ts";
 * console.log(Object.keys(COMMANDS).join(" ")); // "broker pub sub req reply ..."
 * console.log(commandHelp("pub"));
 * ```
 * @module
 */

/** One option: its parseArgs type, the name of its argument in help, and its help line. */
export interface OptionSpec {
  type: "string" | "boolean";
  /** Argument name shown in help (`--count N`); none for a boolean. */
  arg?: string;
  short?: string;
  multiple?: boolean;
  help: string;
  /** Values the shell may complete, or "file" for a path. */
  complete?: readonly string[] | "file";
}

/** Every option of every command. */
export const OPTIONS = {
  config: {
    type: "string",
    arg: "FILE",
    help: "broker configuration (JSON with comments; see README)",
    complete: "file",
  },
  count: { type: "string", arg: "N", help: "stop after N messages" },
  queue: { type: "string", arg: "Q", help: "join queue group Q (one member gets each message)" },
  timeout: {
    type: "string",
    arg: "DURATION",
    help: "how long to wait for the answer (5s; 30s for reload)",
  },
  "connect-timeout": {
    type: "string",
    arg: "DURATION",
    help:
      "wait this long for the broker, even for its socket (default 10s; no socket fails at once)",
  },
  header: { type: "string", arg: "K=V", multiple: true, help: "add a message header (repeatable)" },
  json: { type: "boolean", help: "VALUE is JSON (the default); print messages as JSON lines" },
  string: { type: "boolean", help: "VALUE is sent as a string, as typed" },
  raw: { type: "boolean", help: "VALUE is bytes (a binary value); print payloads as bare bytes" },
  human: { type: "boolean", help: "print messages for people even when stdout is not a terminal" },
  stdin: { type: "boolean", help: "read VALUE from standard input (same as VALUE -)" },
  output: {
    type: "string",
    arg: "F",
    help: "print messages as human, json or raw, whatever --json/--raw say about VALUE",
    complete: ["human", "json", "raw"],
  },
  port: {
    type: "string",
    arg: "PATH",
    help: "guest: the virtio-serial port (a name under /dev/virtio-ports, or a path)",
    complete: "file",
  },
  server: {
    type: "string",
    arg: "SOCKET",
    help: "host: the broker's unix socket",
    complete: "file",
  },
  wake: {
    type: "string",
    arg: "W",
    help: "host clients on rings: how the broker wakes this one, doorbell (default) or futex",
    complete: ["doorbell", "futex"],
  },
  ivshmem: {
    type: "string",
    arg: "ADDRESS",
    help: "guest: the PCI address of vbus's ivshmem device (default: found by its signature)",
  },
  interval: {
    type: "string",
    arg: "DURATION",
    help: "refresh every DURATION (default 1s; q quits)",
  },
  device: {
    type: "string",
    arg: "D",
    help: "print one attachable device: channel (the virtio-serial port) or shmem (ivshmem)",
    complete: ["channel", "shmem"],
  },
  socket: {
    type: "string",
    arg: "PATH",
    help:
      "agent: the socket local processes connect to (default VBUS_AGENT, else /run/vbus/agent.sock)",
    complete: "file",
  },
  slots: {
    type: "string",
    arg: "N",
    help: "agent: local processes served at once (default: what the broker grants, 8)",
  },
  group: {
    type: "string",
    arg: "G",
    help: "agent: the group that may connect to the socket (mode 0660), e.g. vbus",
  },
  help: { type: "boolean", short: "h", help: "show help" },
  version: { type: "boolean", short: "V", help: "print the version" },
} as const satisfies Record<string, OptionSpec>;

/** An option's name. */
export type OptionName = keyof typeof OPTIONS;

/** One command: its arguments, the options it takes, and its help. */
export interface CommandSpec {
  /** Positional arguments in order; a trailing `?` marks an optional one. */
  args: readonly string[];
  options: readonly OptionName[];
  summary: string;
  /** Paragraphs after the usage line. */
  help: string;
  /** Values the shell may complete for the first argument. */
  completeArg?: readonly string[] | "commands";
  /** Help lines of options that mean something narrower for this command. */
  optionHelp?: Partial<Record<OptionName, string>>;
}

const CLIENT = ["server", "port", "connect-timeout"] as const;
const INPUT_ONLY: Partial<Record<OptionName, string>> = {
  json: "VALUE is JSON (the default; an error if it does not parse)",
  raw: "VALUE is bytes: its UTF-8, or standard input as-is, sent as a binary value",
};
const OUTPUT_ONLY: Partial<Record<OptionName, string>> = {
  json: "print one JSON line per message (the default when stdout is not a terminal)",
  raw: "print only the payloads, as bare bytes",
};
const GUEST_RING = ["wake", "ivshmem"] as const;

const VALUE_HELP =
  `VALUE is JSON ('{"c": 21.5}', 42, '"text"'): anything else is an error, never guessed.
--string sends VALUE as typed, as a string; --raw sends its bytes as a binary value. VALUE -
(or --stdin) reads standard input instead, all of it, as one value: JSON by default, UTF-8 text
with --string, the exact bytes with --raw.`;

const OUTPUT_HELP =
  `Output: on a terminal, each message for people ([#1] Received on "SUBJECT", headers, value);
otherwise (a pipe, a file) one JSON line per message: {"subject", "data", "reply"?, "headers"?},
binary as {"$binary": "<base64>"}. --json and --human choose either; --raw writes only the
payloads: binary values as their bytes, strings as UTF-8, anything else as JSON, nothing between
them (a byte-exact copy: use --count 1 or payloads that carry their own separators). Where a
command reads VALUE too, --json and --raw mean both; --output F sets the printing alone.
A message whose value cannot be decoded is reported on stderr and skipped.`;

/** Every command, in the order `vbus --help` lists them. */
export const COMMANDS: Record<string, CommandSpec> = {
  broker: {
    args: [],
    options: ["config"],
    summary: "run the broker",
    help:
      `Runs the broker with the config FILE (--config is required). It reloads the file on SIGHUP
or \`vbus reload\` (printing what changed, or why the new file was refused: then the old config
keeps running), and drains on SIGTERM: nothing new is accepted, queued messages get
drainTimeoutMs to go out, then it exits 0. With NOTIFY_SOCKET set (systemd Type=notify) it
sends READY=1 once it serves.`,
  },
  pub: {
    args: ["SUBJECT", "VALUE?"],
    options: ["count", "header", "json", "string", "raw", "stdin", ...CLIENT, ...GUEST_RING],
    summary: "publish a value to a subject",
    optionHelp: { ...INPUT_ONLY, count: "publish N times (default 1)" },
    help: `Publishes VALUE to SUBJECT (--count N times) and waits until the broker has taken it:
a publish the broker refuses (permissions, limits) is an error, exit 1.

${VALUE_HELP}`,
  },
  sub: {
    args: ["SUBJECT"],
    options: ["count", "queue", "json", "raw", "human", "output", ...CLIENT, ...GUEST_RING],
    summary: "print the messages published to a subject",
    optionHelp: OUTPUT_ONLY,
    help: `Subscribes to SUBJECT (wildcards: * one token, > the rest) and prints each message until
--count N messages or Ctrl-C.

${OUTPUT_HELP}`,
  },
  req: {
    args: ["SUBJECT", "VALUE?"],
    options: [
      "timeout",
      "header",
      "json",
      "string",
      "raw",
      "stdin",
      "human",
      "output",
      ...CLIENT,
      ...GUEST_RING,
    ],
    summary: "send a request and print the reply",
    help:
      `Sends VALUE to SUBJECT with a reply subject and prints the first reply (--timeout, default
5s). No responders, a timeout or a reply that cannot be read: exit 1.

${VALUE_HELP}

${OUTPUT_HELP}`,
  },
  reply: {
    args: ["SUBJECT", "VALUE?"],
    options: [
      "count",
      "queue",
      "json",
      "string",
      "raw",
      "stdin",
      "human",
      "output",
      ...CLIENT,
      ...GUEST_RING,
    ],
    summary: "answer the requests on a subject with a value",
    optionHelp: { count: "stop after answering N requests" },
    help:
      `Answers every request on SUBJECT with VALUE (also one whose value cannot be decoded, so its
sender does not wait) and prints the requests, until --count N or Ctrl-C.

${VALUE_HELP}

${OUTPUT_HELP}`,
  },
  stats: {
    args: [],
    options: ["timeout", ...CLIENT],
    summary: "print the broker's counters (JSON)",
    help: "Asks the broker for $VBUS.STATS and prints the answer as indented JSON.",
  },
  reload: {
    args: [],
    options: ["timeout", "server", "connect-timeout"],
    summary: "make the broker re-read its config file",
    help: `Asks the broker to reload its config file (host clients only) and prints what changed; a
file the broker refuses is exit 1, and the old config keeps running.`,
  },
  top: {
    args: [],
    options: ["interval", ...CLIENT],
    summary: "a live view of the VMs and sessions",
    help:
      "Redraws the broker's counters every --interval on a terminal; otherwise prints one screen.",
  },
  agent: {
    args: [],
    options: ["socket", "slots", "group", "port", "ivshmem"],
    summary: "in a guest: share the port and the ring with every local process",
    help:
      `Runs in a guest as a service: owns the virtio-serial port and names the ivshmem device, and
serves any number of local processes on --socket (mode 0660, group --group). While it runs,
connect() and every vbus command in this guest go through it with no option; each process gets
its own ring pair (a slot) and session, with the VM's identity and permissions. A process that
exits frees its slot; when all are taken the next is refused, naming the limit. Stops on
SIGTERM (its processes reconnect to the next agent).`,
  },
  "qemu-args": {
    args: ["VM"],
    options: ["config"],
    summary: "the QEMU flags that give a VM its vbus devices",
    help: "Prints the -device/-chardev/-object flags for the VM named VM in the --config FILE.",
  },
  "libvirt-xml": {
    args: ["VM"],
    options: ["config", "device"],
    summary: "the same devices as libvirt domain XML",
    help: `Prints a <devices> element with the VM's <channel> (the virtio-serial port) and <shmem>
(ivshmem-plain, when the VM has shm): paste its children into \`virsh edit DOMAIN\`. With
--device channel or --device shmem it prints that one element alone, which
\`virsh attach-device DOMAIN FILE --config\` takes.`,
  },
  completion: {
    args: ["SHELL"],
    options: [],
    summary: "print a shell completion script (bash or zsh)",
    help: `Prints a completion script for SHELL. Load it with
  source <(vbus completion bash)       # in ~/.bashrc
  source <(vbus completion zsh)        # in ~/.zshrc`,
    completeArg: ["bash", "zsh"],
  },
  help: {
    args: ["COMMAND?"],
    options: [],
    summary: "help on a command",
    help: "Prints the help of COMMAND, or the list of commands.",
    completeArg: "commands",
  },
};

/**
 * The required positional arguments of a command (those without `?`).
 *
 * @example
 * ```ts
 * requiredArgs(COMMANDS.pub); // ["SUBJECT"]
 * ```
 */
export function requiredArgs(spec: CommandSpec): string[] {
  return spec.args.filter((a) => !a.endsWith("?"));
}

function synopsis(name: string, spec: CommandSpec): string {
  const args = spec.args.map((a) => (a.endsWith("?") ? `[${a.slice(0, -1)}]` : a));
  const valueArg = spec.options.includes("stdin")
    ? args.map((a) => (a === "[VALUE]" ? "[VALUE | -]" : a))
    : args;
  return ["vbus", name, ...valueArg, spec.options.length ? "[options]" : ""].filter(Boolean).join(
    " ",
  );
}

function optionLines(spec: CommandSpec, names: readonly OptionName[]): string[] {
  const rows = names.map((n) => {
    const o: OptionSpec = OPTIONS[n];
    const flag = `${o.short ? `-${o.short}, ` : ""}--${n}${o.arg ? ` ${o.arg}` : ""}`;
    return [flag, spec.optionHelp?.[n] ?? o.help];
  });
  const width = Math.max(...rows.map(([f]) => f.length)) + 2;
  return rows.map(([f, h]) => `  ${f.padEnd(width)}${h}`);
}

/**
 * The help of one command: usage line, what it does, its options.
 *
 * @example
 * ```ts
 * commandHelp("sub").split("\n")[0]; // "Usage: vbus sub SUBJECT [options]"
 * ```
 */
export function commandHelp(name: string): string {
  const spec = COMMANDS[name];
  const lines = [`Usage: ${synopsis(name, spec)}`, "", spec.help];
  const options = [...spec.options, "help"] as OptionName[];
  lines.push("", "Options:", ...optionLines(spec, options));
  if (spec.options.includes("server")) {
    lines.push(
      "",
      "Connects through --server (host) or --port (guest), defaulting to $VBUS_SERVER, then",
      "$VBUS_PORT, then the guest port org.vbus.0. Durations: 500ms, 5s, 2m; a bare number is ms.",
    );
  }
  return lines.join("\n");
}

/**
 * The help of `vbus` itself: the commands, how to get more, exit codes and environment.
 *
 * @example
 * ```ts
 * console.log(overallHelp());
 * ```
 */
export function overallHelp(): string {
  const names = Object.keys(COMMANDS);
  const width = Math.max(...names.map((n) => n.length)) + 2;
  return [
    "vbus: publish/subscribe between VMs and their host over virtio-serial",
    "",
    "Usage: vbus COMMAND [ARGUMENTS] [options]",
    "",
    "Commands:",
    ...names.map((n) => `  ${n.padEnd(width)}${COMMANDS[n].summary}`),
    "",
    "Run 'vbus COMMAND --help' for its arguments and options. vbus --version prints the version.",
    "Exit status: 0 done, 1 the command failed (refused, timed out, unreachable), 2 bad usage.",
    "Environment: VBUS_SERVER, VBUS_PORT (where to connect), VBUS_IVSHMEM (a guest's ivshmem",
    "device by PCI address), VBUS_LOG=debug|info|warn|error|silent, VBUS_LOG_FORMAT=text|json.",
  ].join("\n");
}

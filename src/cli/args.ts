/**
 * Parsing the `vbus` command line with node:util's parseArgs against the tables of
 * `commands.ts`. A mistake is a {@link UsageError}: one line that says what is wrong, and the
 * command whose `--help` explains it (exit code 2), instead of the whole usage text.
 *
 * @example
 * ```ts
 * import { parseCommandLine } from "./args.ts";
 * const cl = parseCommandLine(["pub", "greet", '"hi"', "--count", "2"]);
 * // { command: "pub", args: ["greet", '"hi"'], values: { count: "2" } }
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { COMMANDS, type OptionName, OPTIONS, requiredArgs } from "./commands.ts";

/**
 * A usage mistake: printed as one line with a hint, exit code 2.
 *
 * @example
 * ```ts
 * new UsageError("pub needs SUBJECT", "pub").format();
 * // "vbus: pub needs SUBJECT; see 'vbus pub --help'"
 * ```
 */
export class UsageError extends Error {
  constructor(message: string, readonly command?: string) {
    super(message);
    this.name = "UsageError";
  }

  /** The line the CLI prints: the problem, then where help is. */
  format(): string {
    const help = this.command ? `vbus ${this.command} --help` : "vbus --help";
    return `vbus: ${this.message}; see '${help}'`;
  }
}

/** Option values as parsed (strings, booleans, the repeated `header`). */
export type OptionValues = {
  [K in OptionName]?: (typeof OPTIONS)[K] extends { multiple: true } ? string[]
    : (typeof OPTIONS)[K] extends { type: "boolean" } ? boolean
    : string;
};

/** A parsed command line. `command` is undefined for a bare `vbus --help` / `--version`. */
export interface CommandLine {
  command?: string;
  args: string[];
  values: OptionValues;
}

const PARSE_OPTIONS = Object.fromEntries(
  Object.entries(OPTIONS).map(([name, o]) => [
    name,
    {
      type: o.type,
      ...("short" in o ? { short: o.short } : {}),
      ...("multiple" in o ? { multiple: true } : {}),
    },
  ]),
);

/**
 * Parse `argv` (without the runtime and script). Throws a {@link UsageError} for an unknown
 * command or option, an option the command does not take, a missing value, or the wrong
 * number of arguments. `--help` and `--version` skip the argument checks.
 *
 * @example
 * ```ts
 * parseCommandLine(["sub"]); // throws UsageError: sub needs SUBJECT
 * ```
 */
export function parseCommandLine(argv: string[]): CommandLine {
  // Not strict: unknown options and missing values are found in the tokens below, so the
  // message can name the command (parseArgs' own messages are long and know no commands).
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    options: PARSE_OPTIONS,
    allowPositionals: true,
    strict: false,
    tokens: true,
  });
  const command = positionals[0];
  const spec = command === undefined ? undefined : COMMANDS[command];
  if (command !== undefined && !spec) throw new UsageError(`unknown command "${command}"`);
  for (const t of tokens) {
    if (t.kind !== "option") continue;
    const flag = t.rawName;
    const o = (OPTIONS as Record<string, (typeof OPTIONS)[OptionName]>)[t.name];
    if (!o) {
      // parseArgs reads "-5" as short options: a negative number VALUE goes after "--".
      const hint = /^-\d/.test(flag)
        ? ` (a VALUE starting with "-" goes after --, e.g. -- ${flag})`
        : "";
      throw new UsageError(`unknown option ${flag}${hint}`, command);
    }
    if (o.type === "string" && t.value === undefined) {
      throw new UsageError(
        `${flag} needs a value (${flag} ${"arg" in o ? o.arg : "VALUE"})`,
        command,
      );
    }
    if (o.type === "boolean" && t.inlineValue) {
      throw new UsageError(`${flag} takes no value`, command);
    }
    const name = t.name as OptionName;
    if (name === "help" || name === "version") continue;
    if (!spec) throw new UsageError(`${flag} belongs after a command`);
    if (!spec.options.includes(name)) {
      throw new UsageError(`${command} does not take ${flag}`, command);
    }
  }
  const result: CommandLine = {
    command,
    args: positionals.slice(1),
    values: values as OptionValues,
  };
  if (!spec || values.help || values.version) return result;
  const required = requiredArgs(spec);
  const { args } = result;
  if (args.length < required.length) {
    const missing = required.slice(args.length);
    const needsValue = spec.args.includes("VALUE?") && !values.stdin;
    throw new UsageError(
      `${command} needs ${missing.join(" and ")}${needsValue ? " and a VALUE" : ""}`,
      command,
    );
  }
  if (args.length > spec.args.length) {
    const quoted = args.map((a) => JSON.stringify(a)).join(" ");
    const what = spec.args.length
      ? spec.args.map((a) => a.replace("?", "")).join(" and ")
      : "no arguments";
    const hint = spec.args.includes("VALUE?") ? " (quote a VALUE that has spaces)" : "";
    throw new UsageError(`${command} takes ${what}, got ${args.length}: ${quoted}${hint}`, command);
  }
  if (spec.args.includes("VALUE?")) {
    const value = args[required.length];
    if (value === undefined && !values.stdin) {
      throw new UsageError(
        `${command} needs a VALUE after ${
          required.join(" ")
        } (or - / --stdin to read standard input)`,
        command,
      );
    }
    if (value !== undefined && values.stdin) {
      throw new UsageError(`${command}: give VALUE or --stdin, not both`, command);
    }
  }
  return result;
}

/**
 * A small structured logger writing one line per event to stderr: a timestamp, the level, the
 * component, a message and fields. Settings come from the environment unless given:
 *
 * - `VBUS_LOG`: `debug`, `info` (default), `warn`, `error` or `silent`. `debug` adds what an
 *   operator debugs with: shared-memory negotiation, reconnect attempts, every drop decision.
 * - `VBUS_LOG_FORMAT`: `text` (default: `TIME LEVEL [component] message key=value ...`) or
 *   `json` (one JSON object per line: `time`, `level`, `component`, `msg`, then the fields).
 *
 * Any other value is an error ({@link LogSettingsError}) that says which values exist: a typo in
 * `VBUS_LOG=degub` must not silently mean "info".
 *
 * @example
 * ```ts
 * import { createLogger } from "./log.ts";
 * const log = createLogger("broker");
 * log.info("vm connected", { vm: "vm1" });
 * // 2025-01-01T00:00:00.000Z INFO [broker] vm connected vm=vm1
 * const json = createLogger("broker", { level: "debug", format: "json" });
 * json.debug("negotiated", { vm: "vm1", path: "ring" });
 * // {"time":"2025-01-01T00:00:00.000Z","level":"debug","component":"broker","msg":"negotiated","vm":"vm1","path":"ring"}
 * ```
 * @module
 */
import process from "node:process";

/**
 * Log levels, least to most severe (`silent` logs nothing).
 *
 * @example
 * ```ts
 * import { createLogger, type LogLevel } from "./log.ts";
 * const level: LogLevel = "warn";
 * createLogger("bridge", { level }).info("not shown: below warn");
 * ```
 */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";
/**
 * How lines look: `text` for people, `json` for log collectors.
 *
 * @example
 * ```ts
 * import { createLogger, type LogFormat } from "./log.ts";
 * const format: LogFormat = "json";
 * // {"time":"…","level":"info","component":"broker","msg":"started","vms":2}
 * createLogger("broker", { format }).info("started", { vms: 2 });
 * ```
 */
export type LogFormat = "text" | "json";

/** Every level, least to most severe. */
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error", "silent"];
/** Every format. */
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];
const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3, silent: 4 };

/**
 * A logger bound to a component: what the broker uses and what `connect({ logger })` takes.
 * Any object with these four methods works (`console` too).
 *
 * @example
 * ```ts
 * import type { Logger } from "./log.ts";
 * const lines: string[] = [];
 * const collect: Logger = {
 *   debug: () => {},
 *   info: (msg, fields) => lines.push(`${msg} ${JSON.stringify(fields ?? {})}`),
 *   warn: (msg) => lines.push(`warning: ${msg}`),
 *   error: (msg) => lines.push(`error: ${msg}`),
 * };
 * const alsoFine: Logger = console;
 * ```
 */
export interface Logger {
  /** Detail for finding a problem (logged at level `debug` only). */
  debug(msg: string, fields?: Record<string, unknown>): void;
  /** Something normal worth a line (a VM connected, a config reloaded). */
  info(msg: string, fields?: Record<string, unknown>): void;
  /** Something wrong that the process works around (a refused connection, a fallback). */
  warn(msg: string, fields?: Record<string, unknown>): void;
  /** Something failed. */
  error(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * How {@link createLogger} is set up; what is absent comes from the environment.
 *
 * @example
 * ```ts
 * import { createLogger, type LoggerOptions } from "./log.ts";
 * const lines: string[] = [];
 * const options: LoggerOptions = { level: "debug", format: "json", write: (l) => lines.push(l) };
 * createLogger("test", options).debug("captured");
 * console.log(JSON.parse(lines[0]).msg); // "captured"
 * ```
 */
export interface LoggerOptions {
  /** Least severe level logged. Default: `VBUS_LOG`, else `info`. */
  level?: LogLevel;
  /** How lines look. Default: `VBUS_LOG_FORMAT`, else `text`. */
  format?: LogFormat;
  /** Where lines go (without the newline). Default: stderr. */
  write?: (line: string) => void;
}

/**
 * A bad `VBUS_LOG` / `VBUS_LOG_FORMAT` value (or option): the message says what is allowed.
 *
 * @example
 * ```ts
 * import { createLogger, type LogLevel, LogSettingsError } from "./log.ts";
 * try {
 *   createLogger("broker", { level: "verbose" as LogLevel });
 * } catch (err) {
 *   // level="verbose" is not a log level: use one of debug, info, warn, error, silent
 *   if (err instanceof LogSettingsError) console.log(err.message);
 * }
 * ```
 */
export class LogSettingsError extends Error {
  /** `message` says what was given and what is allowed. */
  constructor(message: string) {
    super(message);
    this.name = "LogSettingsError";
  }
}

function env(name: string): string | undefined {
  try {
    return process.env[name] || undefined;
  } catch {
    return undefined; // no env permission: the defaults
  }
}

/**
 * Check a level name; `source` names where it came from in the error.
 *
 * @example
 * ```ts
 * parseLogLevel("debug"); // "debug"
 * parseLogLevel("verbose"); // throws: VBUS_LOG="verbose" is not a log level: use debug, info, ...
 * ```
 */
export function parseLogLevel(value: string, source = "VBUS_LOG"): LogLevel {
  const v = value.trim().toLowerCase();
  if ((LOG_LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  throw new LogSettingsError(
    `${source}=${JSON.stringify(value)} is not a log level: use one of ${LOG_LEVELS.join(", ")}`,
  );
}

/**
 * Check a format name; `source` names where it came from in the error.
 *
 * @example
 * ```ts
 * parseLogFormat("json"); // "json"
 * ```
 */
export function parseLogFormat(value: string, source = "VBUS_LOG_FORMAT"): LogFormat {
  const v = value.trim().toLowerCase();
  if ((LOG_FORMATS as readonly string[]).includes(v)) return v as LogFormat;
  throw new LogSettingsError(
    `${source}=${JSON.stringify(value)} is not a log format: use one of ${LOG_FORMATS.join(", ")}`,
  );
}

/**
 * The level and format the environment asks for (`VBUS_LOG`, `VBUS_LOG_FORMAT`). Commands call
 * it first, so a bad value stops them at once with the message.
 *
 * @throws {LogSettingsError} for a value that is not a level or a format.
 * @example
 * ```ts
 * const { level, format } = logSettingsFromEnv(); // { level: "info", format: "text" } by default
 * ```
 */
export function logSettingsFromEnv(): { level: LogLevel; format: LogFormat } {
  const level = env("VBUS_LOG");
  const format = env("VBUS_LOG_FORMAT");
  return {
    level: level === undefined ? "info" : parseLogLevel(level),
    format: format === undefined ? "text" : parseLogFormat(format),
  };
}

/**
 * Create a logger for a component. A level string is the old short form of `{ level }`.
 *
 * @throws {LogSettingsError} when a setting not given comes from a bad environment value.
 * @example
 * ```ts
 * const log = createLogger("client", "warn");
 * log.warn("reconnecting", { attempt: 3 });
 * const lines: string[] = [];
 * const captured = createLogger("test", { level: "debug", format: "json", write: (l) => lines.push(l) });
 * ```
 */
export function createLogger(component: string, opts: LogLevel | LoggerOptions = {}): Logger {
  const o: LoggerOptions = typeof opts === "string" ? { level: opts } : opts;
  let level = o.level;
  let format = o.format;
  if (level === undefined || format === undefined) {
    const fromEnv = logSettingsFromEnv();
    level ??= fromEnv.level;
    format ??= fromEnv.format;
  }
  if (!(level in RANK)) parseLogLevel(String(level), "level");
  if (!(LOG_FORMATS as readonly string[]).includes(format)) {
    parseLogFormat(String(format), "format");
  }
  const min = RANK[level];
  const write = o.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const line = format === "json" ? jsonLine : textLine;
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[lvl] < min) return;
    write(line(new Date().toISOString(), lvl, component, msg, fields));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
  };
}

/** A field value as a log can hold it: errors by their message, bigints as strings. */
function plain(v: unknown): unknown {
  if (v instanceof Error) return v.message;
  if (typeof v === "bigint") return v.toString();
  return v;
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x) => plain(x)) ?? String(v);
  } catch {
    return JSON.stringify(String(v)); // a cycle: still one line
  }
}

function textLine(
  time: string,
  level: LogLevel,
  component: string,
  msg: string,
  fields?: Record<string, unknown>,
): string {
  let line = `${time} ${level.toUpperCase()} [${component}] ${msg}`;
  if (fields) {
    for (const [k, raw] of Object.entries(fields)) {
      const v = plain(raw);
      line += ` ${k}=${typeof v === "string" && v !== "" && !/[\s"=]/.test(v) ? v : safeJson(v)}`;
    }
  }
  return line;
}

/** The keys every JSON line has; a field with one of these names gets a `field.` prefix. */
const JSON_KEYS = new Set(["time", "level", "component", "msg"]);

function jsonLine(
  time: string,
  level: LogLevel,
  component: string,
  msg: string,
  fields?: Record<string, unknown>,
): string {
  const out: Record<string, unknown> = { time, level, component, msg };
  if (fields) {
    for (const [k, v] of Object.entries(fields)) out[JSON_KEYS.has(k) ? `field.${k}` : k] = v;
  }
  return safeJson(out);
}

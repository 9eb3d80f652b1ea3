/**
 * A small structured logger writing one line per event to stderr: a timestamp, the level, a
 * message and `key=value` fields. Level from `VBUS_LOG` (debug, info, warn, error, silent).
 *
 * @example
 * ```ts
 * import { createLogger } from "./log.ts";
 * const log = createLogger("broker");
 * log.info("vm connected", { vm: "vm1" });
 * ```
 * @module
 */
import process from "node:process";

/** Log levels, least to most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";
const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3, silent: 4 };

/** A logger bound to a component name. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

function envLevel(): LogLevel {
  try {
    const v = process.env.VBUS_LOG as LogLevel | undefined;
    return v && v in RANK ? v : "info";
  } catch {
    return "info"; // no env permission
  }
}

/**
 * Create a logger for a component.
 *
 * @example
 * ```ts
 * const log = createLogger("client", "warn");
 * log.warn("reconnecting", { attempt: 3 });
 * ```
 */
export function createLogger(component: string, level: LogLevel = envLevel()): Logger {
  const min = RANK[level];
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[lvl] < min) return;
    let line = `${new Date().toISOString()} ${lvl.toUpperCase()} [${component}] ${msg}`;
    if (fields) {
      for (const [k, v] of Object.entries(fields)) {
        line += ` ${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`;
      }
    }
    process.stderr.write(line + "\n");
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
  };
}

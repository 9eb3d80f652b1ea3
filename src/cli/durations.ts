/**
 * Durations on the command line: `500ms`, `5s`, `2m`, `1h`, or a bare number of milliseconds
 * (what the options took before units were accepted).
 *
 * @example
 * ```ts
 * import { parseDuration } from "./durations.ts";
 * parseDuration("5s", "timeout"); // 5000
 * parseDuration("250", "timeout"); // 250
 * ```
 * @module
 */
import { UsageError } from "./args.ts";

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Milliseconds of a positive duration; `undefined` stays `undefined`. Anything else is a
 * {@link UsageError} naming the option.
 *
 * @example
 * ```ts
 * parseDuration("1.5s", "connect-timeout"); // 1500
 * ```
 */
export function parseDuration(
  text: string | undefined,
  option: string,
  command?: string,
): number | undefined {
  if (text === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  const ms = m ? Math.round(Number(m[1]) * UNIT_MS[m[2] ?? "ms"]) : NaN;
  if (!Number.isSafeInteger(ms) || ms <= 0) {
    throw new UsageError(
      `--${option} must be a positive integer, got "${text}" (milliseconds, or a duration: 500ms, 5s, 2m)`,
      command,
    );
  }
  return ms;
}

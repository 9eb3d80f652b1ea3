/**
 * How the CLI reads values from arguments and prints messages: VALUE is JSON, a bare word is a
 * string; output is one JSON line per message, with binary as `{"$binary": base64}`.
 *
 * @example
 * ```ts
 * import { parseValue, toJsonLine } from "./values.ts";
 * parseValue('{"a":1}'); // { a: 1 }
 * parseValue("hello"); // "hello"
 * toJsonLine({ data: new Uint8Array([1]) }); // '{"data":{"$binary":"AQ=="}}'
 * ```
 * @module
 */
import { Buffer } from "node:buffer";

/** Parse a VALUE argument: JSON if it parses, otherwise the text itself as a string. */
export function parseValue(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** One JSON line; binary values become `{"$binary": "<base64>"}`, bigints strings. */
export function toJsonLine(value: unknown): string {
  return JSON.stringify(value, function (this: unknown, _key, v) {
    if (v instanceof Uint8Array) return { $binary: Buffer.from(v).toString("base64") };
    // Buffer's own toJSON runs before the replacer: undo that shape too.
    if (
      v && typeof v === "object" && (v as { type?: string }).type === "Buffer" &&
      Array.isArray((v as { data?: unknown }).data)
    ) {
      return { $binary: Buffer.from((v as { data: number[] }).data).toString("base64") };
    }
    if (typeof v === "bigint") return v.toString();
    return v;
  });
}

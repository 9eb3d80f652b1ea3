/**
 * How the CLI prints received messages, in one of three forms:
 *
 * - `human` (the default on a terminal), like the `nats` CLI:
 *   `[#1] Received on "SUBJECT" with reply "R"`, then `Key: value` header lines and a blank
 *   line when there are headers, then the value (a string as its text, anything else as JSON),
 *   then a blank line.
 * - `json` (the default when stdout is a pipe or a file): one JSON line per message,
 *   `{"subject", "data", "reply"?, "headers"?}`, binary as `{"$binary": "<base64>"}`.
 * - `raw`: the payload only, nothing added: a binary value as its bytes, a string as UTF-8,
 *   anything else as JSON. Bytes in = bytes out with `vbus pub --raw`.
 *
 * @example
 * ```ts
 * import { formatHuman, toJsonLine } from "./message_output.ts";
 * toJsonLine({ data: new Uint8Array([1]) }); // '{"data":{"$binary":"AQ=="}}'
 * formatHuman(1, { subject: "a", data: "hi" }); // '[#1] Received on "a"\nhi\n'
 * ```
 * @module
 */
import { Buffer } from "node:buffer";
import type { Headers } from "../protocol/ops.ts";

/** How received messages are printed. */
export type OutputMode = "human" | "json" | "raw";

/** A message as `Msg.toJSON()` gives it. */
export interface PrintedMessage {
  subject: string;
  data: unknown;
  reply?: string;
  headers?: Headers;
}

/**
 * One JSON line; binary values become `{"$binary": "<base64>"}`, bigints strings.
 *
 * @example
 * ```ts
 * toJsonLine({ n: 1n }); // '{"n":"1"}'
 * ```
 */
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
  }) ?? "null"; // JSON.stringify(undefined) is undefined: an empty payload prints as null
}

/**
 * A value for people: a string as its text, anything else as JSON.
 *
 * @example
 * ```ts
 * valueText("hi"); // "hi"
 * valueText({ a: 1 }); // '{"a":1}'
 * ```
 */
export function valueText(data: unknown): string {
  return typeof data === "string" ? data : toJsonLine(data);
}

/**
 * Header lines (`Key: value`), one per header.
 *
 * @example
 * ```ts
 * headerLines({ k: "v" }); // ["k: v"]
 * ```
 */
export function headerLines(headers: Headers | undefined): string[] {
  return Object.entries(headers ?? {}).map(([k, v]) => `${k}: ${v}`);
}

/**
 * The human form of message number `n` (see the module doc), ending with a blank line.
 *
 * @example
 * ```ts
 * formatHuman(2, { subject: "s", data: 1, reply: "r", headers: { k: "v" } });
 * // '[#2] Received on "s" with reply "r"\nk: v\n\n1\n'
 * ```
 */
export function formatHuman(n: number, msg: PrintedMessage): string {
  const head = `[#${n}] Received on ${JSON.stringify(msg.subject)}` +
    (msg.reply ? ` with reply ${JSON.stringify(msg.reply)}` : "");
  const headers = headerLines(msg.headers);
  return [head, ...headers, ...(headers.length ? [""] : []), valueText(msg.data), ""].join("\n");
}

/**
 * The bytes `--raw` writes for a value: binary as-is, a string as UTF-8, else its JSON.
 *
 * @example
 * ```ts
 * rawBytes("hi"); // Uint8Array [104, 105]
 * ```
 */
export function rawBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  return new TextEncoder().encode(valueText(data));
}

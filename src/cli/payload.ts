/**
 * What the CLI sends: VALUE (or standard input) read under one explicit rule, never guessed.
 *
 * | mode     | VALUE argument              | standard input (`-` / `--stdin`)       |
 * | -------- | --------------------------- | -------------------------------------- |
 * | `json`   | parsed as JSON, else error  | all of it, parsed as one JSON value    |
 * | `string` | the text as typed           | all of it, as UTF-8 text (else error)  |
 * | `raw`    | its UTF-8 bytes, as binary  | the exact bytes, as a binary value     |
 *
 * `json` is the default (vbus carries typed values: `42` is a number, `'"42"'` a string).
 * A VALUE that is not JSON is an error that says how to send it as text, instead of quietly
 * becoming a string as it used to.
 *
 * @example
 * ```ts
 * import { valueFromArgument } from "./payload.ts";
 * valueFromArgument('{"a":1}', "json"); // { a: 1 }
 * valueFromArgument("hello", "string"); // "hello"
 * valueFromArgument("hello", "json"); // throws: VALUE is not JSON ...
 * ```
 * @module
 */
import process from "node:process";
import { UsageError } from "./args.ts";

/** How VALUE is read. */
export type InputMode = "json" | "string" | "raw";

/**
 * A payload problem that is not a usage mistake (standard input's content): exit code 1.
 *
 * @example
 * ```ts
 * throw new PayloadError("standard input is not UTF-8 text; use --raw to send its bytes");
 * ```
 */
export class PayloadError extends Error {}

/**
 * The value of a VALUE argument under `mode`. Invalid JSON is a {@link UsageError} naming the
 * parse error and the flag that sends text.
 *
 * @example
 * ```ts
 * valueFromArgument("21.5", "json"); // 21.5
 * ```
 */
export function valueFromArgument(text: string, mode: InputMode, command?: string): unknown {
  if (mode === "string") return text;
  if (mode === "raw") return new TextEncoder().encode(text);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(
      `VALUE ${ellipsis(text)} is not JSON (${(err as Error).message}); to send it as text use ` +
        `--string or quote it as JSON ('"${ellipsis(text, 20, false)}"')`,
      command,
    );
  }
}

/**
 * The value of standard input's bytes under `mode`: bytes as-is (`raw`), UTF-8 text
 * (`string`, an error if not UTF-8), or one JSON value (`json`).
 *
 * @example
 * ```ts
 * valueFromBytes(new Uint8Array([0x31]), "json"); // 1
 * ```
 */
export function valueFromBytes(bytes: Uint8Array, mode: InputMode): unknown {
  if (mode === "raw") return bytes;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new PayloadError("standard input is not UTF-8 text; use --raw to send its bytes");
  }
  if (mode === "string") return text;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new PayloadError(
      `standard input is not one JSON value (${(err as Error).message}); use --string to send ` +
        `it as text or --raw as bytes`,
    );
  }
}

/**
 * Read all of standard input, refusing more than `maxBytes` (the largest message the broker
 * takes) instead of buffering without bound.
 *
 * @example
 * ```ts
 * const bytes = await readStdin(8 << 20);
 * ```
 */
export async function readStdin(maxBytes: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of process.stdin as AsyncIterable<Uint8Array | string>) {
    const bytes = typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk;
    total += bytes.byteLength;
    if (total > maxBytes) {
      throw new PayloadError(
        `standard input is larger than ${maxBytes} bytes, the largest message this broker takes`,
      );
    }
    chunks.push(bytes);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

function ellipsis(text: string, max = 40, quote = true): string {
  const cut = text.length > max ? `${text.slice(0, max)}...` : text;
  return quote ? JSON.stringify(cut) : cut.replaceAll('"', '\\"');
}

/**
 * msgpack encoding of frame heads and message values, one configuration for every peer:
 * plain msgpack maps (no msgpackr records), so a Deno guest, a Bun host and any msgpack
 * implementation read the same bytes.
 *
 * @example
 * ```ts
 * import { decodeValue, encodeValue } from "./codec.ts";
 * const bytes = encodeValue({ temp: 21.5 });
 * decodeValue(bytes); // { temp: 21.5 }
 * ```
 * @module
 */
import { Packr, Unpackr } from "msgpackr";
import { ErrorCode, VbusError } from "./errors.ts";

/** Options shared by every Packr/Unpackr in vbus (see the module doc for why). */
export const MSGPACK_OPTIONS = { useRecords: false, moreTypes: false } as const;

const packr = new Packr(MSGPACK_OPTIONS);
const unpackr = new Unpackr(MSGPACK_OPTIONS);

/**
 * Encode a value with msgpack into a buffer of its own. (msgpackr keeps its write buffer in
 * module state shared by every Packr, and the ring encoder points it into shared memory, so
 * results are copied out rather than left as views of that buffer.)
 *
 * @example
 * ```ts
 * encodeValue(new Uint8Array([1, 2])); // msgpack bin8: c4 02 01 02
 * ```
 */
export function encodeValue(value: unknown): Uint8Array {
  try {
    return packr.pack(value).slice();
  } catch (err) {
    throw new VbusError(ErrorCode.Codec, `cannot encode value: ${(err as Error).message}`);
  }
}

/**
 * Decode msgpack bytes. An empty input decodes to `undefined`. Binary values come back as
 * views of `bytes`: copy them if `bytes` will be reused.
 *
 * @example
 * ```ts
 * decodeValue(encodeValue([1, "a"])); // [1, "a"]
 * ```
 */
export function decodeValue<T = unknown>(bytes: Uint8Array): T {
  if (bytes.length === 0) return undefined as T;
  try {
    return unpackr.unpack(bytes) as T;
  } catch (err) {
    throw new VbusError(ErrorCode.Codec, `cannot decode value: ${(err as Error).message}`);
  }
}

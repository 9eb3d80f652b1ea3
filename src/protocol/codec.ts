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
    // A copy: msgpackr returns a Node Buffer, whose .slice() would only be a view.
    return copyBytes(packr.pack(value));
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
  return decodeValueAt<T>(bytes, 0, bytes.length);
}

/**
 * Decode the msgpack value in `bytes[start, end)` without making a view first (msgpackr keeps
 * one DataView per buffer, so decoding many values from one region allocates nothing extra).
 * A binary value (msgpack bin) comes back as a view of `bytes`.
 *
 * @example
 * ```ts
 * const b = encodeValue("hi");
 * decodeValueAt(b, 0, b.length); // "hi"
 * ```
 */
export function decodeValueAt<T = unknown>(bytes: Uint8Array, start: number, end: number): T {
  if (end <= start) return undefined as T;
  const bin = binBody(bytes, start, end);
  if (bin >= 0) return bytes.subarray(bin, end) as T;
  try {
    return unpackr.unpack(bytes, { start, end }) as T;
  } catch (err) {
    throw new VbusError(ErrorCode.Codec, `cannot decode value: ${(err as Error).message}`);
  }
}

/**
 * A copy of `bytes` in a fresh Uint8Array. (`Buffer.prototype.slice` makes a view, not a
 * copy, and msgpackr, sockets and FFI hand out Buffers in Bun and Deno.)
 *
 * @example
 * ```ts
 * const copy = copyBytes(new Uint8Array([1, 2]));
 * ```
 */
export function copyBytes(bytes: Uint8Array, start = 0, end = bytes.length): Uint8Array {
  const out = new Uint8Array(end - start);
  out.set(start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end));
  return out;
}

/** msgpack bin type bytes. */
const BIN8 = 0xc4, BIN16 = 0xc5, BIN32 = 0xc6;

/** If `bytes[start, end)` is exactly one msgpack bin value, the offset of its body, else -1. */
function binBody(b: Uint8Array, start: number, end: number): number {
  const t = b[start];
  let len: number, body: number;
  if (t === BIN8) {
    len = b[start + 1];
    body = start + 2;
  } else if (t === BIN16) {
    len = (b[start + 1] << 8) | b[start + 2];
    body = start + 3;
  } else if (t === BIN32) {
    len = ((b[start + 1] << 24) >>> 0) + (b[start + 2] << 16) + (b[start + 3] << 8) + b[start + 4];
    body = start + 5;
  } else return -1;
  return body + len === end ? body : -1;
}

/**
 * Write the msgpack bin header for `length` bytes at `offset`; returns the header size. The
 * caller writes the bytes after it. Used to encode binary values straight into a ring slot.
 *
 * @example
 * ```ts
 * const out = new Uint8Array(8);
 * writeBinHeader(out, 0, 3); // 2: c4 03
 * ```
 */
export function writeBinHeader(target: Uint8Array, offset: number, length: number): number {
  if (length < 0x100) {
    target[offset] = BIN8;
    target[offset + 1] = length;
    return 2;
  }
  if (length < 0x10000) {
    target[offset] = BIN16;
    target[offset + 1] = length >>> 8;
    target[offset + 2] = length & 0xff;
    return 3;
  }
  target[offset] = BIN32;
  target[offset + 1] = length >>> 24;
  target[offset + 2] = (length >>> 16) & 0xff;
  target[offset + 3] = (length >>> 8) & 0xff;
  target[offset + 4] = length & 0xff;
  return 5;
}

/**
 * msgpack encoding of an unsigned integer (a subscription id) into `target` at `offset`;
 * returns the number of bytes written.
 */
export function writeUint(target: Uint8Array, offset: number, n: number): number {
  if (n < 0x80) {
    target[offset] = n;
    return 1;
  }
  if (n < 0x100) {
    target[offset] = 0xcc;
    target[offset + 1] = n;
    return 2;
  }
  if (n < 0x10000) {
    target[offset] = 0xcd;
    target[offset + 1] = n >>> 8;
    target[offset + 2] = n & 0xff;
    return 3;
  }
  target[offset] = 0xce;
  target[offset + 1] = n >>> 24;
  target[offset + 2] = (n >>> 16) & 0xff;
  target[offset + 3] = (n >>> 8) & 0xff;
  target[offset + 4] = n & 0xff;
  return 5;
}

/** msgpack fixarray headers of the PUB ([subject, reply, headers]) and MSG heads. */
export const PUB_HEAD_MARK = 0x93;
const MSG_HEAD_MARK = 0x94;

/**
 * Build a MSG head `[sid, subject, reply, headers]` from the tail of a PUB head (its bytes
 * after the 0x93 array marker: subject, reply, headers as the publisher encoded them, already
 * decoded and validated by the caller), without re-encoding anything. Writes into `target` at
 * `offset` and returns the length; with no target, returns a new buffer's worth of length only.
 *
 * @example
 * ```ts
 * const pub = encodeValue(["a.b", null, null]);
 * const head = new Uint8Array(64);
 * const n = writeMsgHead(head, 0, 7, pub.subarray(1)); // encodeValue([7, "a.b", null, null])
 * ```
 */
export function writeMsgHead(target: Uint8Array, offset: number, sid: number, pubTail: Uint8Array): number {
  target[offset] = MSG_HEAD_MARK;
  const n = 1 + writeUint(target, offset + 1, sid);
  target.set(pubTail, offset + n);
  return n + pubTail.length;
}

/** Upper bound of {@link writeMsgHead}'s length. */
export function msgHeadMaxLength(pubTail: Uint8Array): number {
  return 6 + pubTail.length;
}

/**
 * msgpack encoding of frame heads and message values, one configuration for every peer:
 * plain msgpack maps (no msgpackr records), so a Deno guest, a Bun host and any msgpack
 * implementation read the same bytes.
 *
 * What a peer may send as a value (enforced by {@link decodeValue}, which every received
 * payload goes through): plain msgpack (nil, booleans, integers, floats, strings, binary,
 * arrays, maps) plus exactly two extension types, the ones this codec writes itself:
 * -1 (the msgpack timestamp, decoded to a `Date`) and 0 (msgpackr's `undefined`). Every other
 * extension is refused, in particular msgpackr's structured-clone references (0x69, 0x70:
 * shared and cyclic object graphs a consumer would loop on), record definitions (0x72: they
 * change how the rest of the value decodes), bundled strings (0x62), and the Error, RegExp,
 * Set and typed-array extensions (0x65, 0x78, 0x73, 0x74: objects built from a peer's
 * description). Arrays and maps nest at most {@link MAX_VALUE_DEPTH} deep. A value that breaks
 * these rules, or is truncated, or has bytes after it, is a `CODEC` {@link VbusError}: decoding
 * it never builds anything.
 *
 * @example
 * ```ts
 * import { decodeValue, encodeValue } from "./codec.ts";
 * const bytes = encodeValue({ temp: 21.5 });
 * decodeValue(bytes); // { temp: 21.5 }
 * ```
 * @module
 */
import { Buffer } from "node:buffer";
import { Packr, REUSE_BUFFER_MODE, Unpackr } from "msgpackr";
import { ErrorCode, VbusError } from "./errors.ts";
import { copyRange } from "../util/copy_range.ts";
import { copyPayload } from "../util/payload_slab.ts";
import { OWN_BUFFERS_ARE_COSTLY } from "../../ffi/runtime_traits.ts";

/** Options shared by every Packr/Unpackr in vbus (see the module doc for why). */
export const MSGPACK_OPTIONS = { useRecords: false, moreTypes: false } as const;

/** Deepest nesting of arrays and maps accepted in a value from a peer. */
export const MAX_VALUE_DEPTH = 512;

const packr = new Packr(MSGPACK_OPTIONS);
const unpackr = new Unpackr(MSGPACK_OPTIONS);
/** The value decoder: structured clone off as well (the scan in decodeValue refuses it first). */
const valueUnpackr = new Unpackr({ ...MSGPACK_OPTIONS, structuredClone: false });

/**
 * Encode a value with msgpack into memory of its own (in Deno, up to 512 bytes, a view of a
 * shared chunk: see `src/util/payload_slab.ts`). (msgpackr keeps its write buffer in
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
    // A copy: msgpackr returns a Node Buffer, whose .slice() would only be a view. Where a
    // buffer each costs a malloc (Deno), small ones share a chunk (payload_slab.ts).
    const packed = packr.pack(value);
    return OWN_BUFFERS_ARE_COSTLY ? copyPayload(packed, 0, packed.length) : copyBytes(packed);
  } catch (err) {
    throw new VbusError(ErrorCode.Codec, `cannot encode value: ${(err as Error).message}`);
  }
}

/** Room msgpackr needs after its position to encode in place (else it uses its own buffer). */
export const MSGPACK_HEADROOM = 2048 + 64;
/** Where msgpackr writes when not encoding in place (its write buffer is module state). */
const SCRATCH = Buffer.alloc(64 * 1024);

/** msgpackr's result in REUSE_BUFFER_MODE: the encoding is `[start, end)` of it. */
export type Packed = Uint8Array & { start: number; end: number };

/**
 * A Buffer view of `bytes[start, end)` (no copy), the kind of slot {@link packInto} wants:
 * msgpackr writes strings with Buffer's utf8Write where it exists.
 *
 * @example
 * ```ts
 * import { bufferView } from "./codec.ts";
 * const ring = new Uint8Array(4096);
 * bufferView(ring, 64, 128).length; // 64, sharing ring's memory
 * ```
 */
export function bufferView(bytes: Uint8Array, start: number, end: number): Uint8Array {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start);
}

/**
 * msgpack-encode `value` straight into `slot` (a {@link bufferView} of a ring slot or a batch),
 * with no intermediate buffer. The result is `slot` itself when the encoding fitted (from
 * `start`, which msgpackr may move past 0 to align), else msgpackr's own buffer (the value
 * outgrew the slot: the caller copies it). Throws a `CODEC` {@link VbusError} for a value
 * msgpack cannot encode.
 *
 * @example
 * ```ts
 * import { Packr } from "msgpackr";
 * import { bufferView, MSGPACK_HEADROOM, MSGPACK_OPTIONS, packInto } from "./codec.ts";
 * const slot = bufferView(new Uint8Array(MSGPACK_HEADROOM), 0, MSGPACK_HEADROOM);
 * const out = packInto(new Packr(MSGPACK_OPTIONS), slot, { t: 21.5 });
 * console.log(out === slot, out.end - out.start); // true 14 (in place, 14 bytes)
 * ```
 */
export function packInto(
  packer: Packr,
  slot: Uint8Array,
  value: unknown,
  subject?: string,
): Packed {
  try {
    packer.useBuffer(slot);
    packer.position = 0;
    return packer.pack(value, REUSE_BUFFER_MODE) as unknown as Packed;
  } catch (err) {
    throw new VbusError(ErrorCode.Codec, `cannot encode value: ${(err as Error).message}`, subject);
  } finally {
    // msgpackr's write buffer is module state shared by all Packrs: move it off the slot.
    packer.useBuffer(SCRATCH);
  }
}

/**
 * Decode a value received from a peer (a message payload), under the rules of the module doc.
 * An empty input decodes to `undefined`. Binary values come back as views of `bytes`: copy
 * them if `bytes` will be reused. Throws a `CODEC` {@link VbusError} naming the problem.
 *
 * @example
 * ```ts
 * decodeValue(encodeValue([1, "a"])); // [1, "a"]
 * decodeValue(encodeValue({ a: "text" }).subarray(0, 4)); // throws CODEC: truncated
 * ```
 */
export function decodeValue<T = unknown>(
  bytes: Uint8Array,
  start = 0,
  end: number = bytes.length,
): T {
  if (end <= start) return undefined as T;
  const bin = binBody(bytes, start, end);
  if (bin >= 0) return bytes.subarray(bin, end) as T;
  const problem = peerValueProblem(bytes, start, end);
  if (problem !== undefined) {
    throw new VbusError(ErrorCode.Codec, `cannot decode value: ${problem}`);
  }
  try {
    // From a view, not with { start, end }: measured faster in Bun (an object of four fields
    // from a ring: 300 against 450 ns), the same in Deno.
    const view = start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end);
    return valueUnpackr.unpack(view) as T;
  } catch (err) {
    throw new VbusError(ErrorCode.Codec, `cannot decode value: ${(err as Error).message}`);
  }
}

/**
 * Decode the msgpack value in `bytes[start, end)` without making a view first (msgpackr keeps
 * one DataView per buffer, so decoding many values from one region allocates nothing extra).
 * A binary value (msgpack bin) comes back as a view of `bytes`. This is the decoder of frame
 * heads, whose shape `heads.ts` checks right after; it does not apply the value rules of the
 * module doc: decode message values with {@link decodeValue}.
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

/** Values still to be read at each nesting level of the value being checked (reused; each is
 * at most the input length, checked before it is stored). */
const pendingAtLevel = new Int32Array(MAX_VALUE_DEPTH + 1);

/** What msgpackr would build from the extension types a peer may not use. */
const REFUSED_EXTENSIONS: Record<number, string> = {
  0x42: "a big integer",
  0x62: "bundled strings",
  0x65: "an Error",
  0x69: "a structured-clone object id",
  0x70: "a structured-clone reference",
  0x72: "a record definition",
  0x73: "a Set",
  0x74: "a typed array",
  0x78: "a RegExp",
};

/** Extension types a peer may use: the msgpack timestamp (-1) and msgpackr's undefined (0). */
function extensionAllowed(type: number): boolean {
  return type === 0xff || type === 0x00;
}

function refusedExtension(type: number): string {
  const signed = type > 0x7f ? type - 0x100 : type;
  const what = REFUSED_EXTENSIONS[type];
  return `msgpack extension type ${signed} (0x${type.toString(16)})${
    what ? `, ${what},` : ""
  } is not accepted from a peer`;
}

/**
 * Walk the msgpack value in `b[start, end)` without building anything; return why it may not
 * be decoded (truncated, trailing bytes, a refused extension, nesting too deep), or undefined.
 * Every step consumes at least one byte, so the walk is bounded by the input's length.
 */
function peerValueProblem(b: Uint8Array, start: number, end: number): string | undefined {
  const pending = pendingAtLevel;
  let depth = 0;
  let pos = start;
  pending[0] = 1;
  for (;;) {
    while (pending[depth] === 0) {
      if (depth === 0) return pos === end ? undefined : `${end - pos} bytes after the value`;
      depth--;
    }
    if (pos >= end) return "truncated";
    pending[depth]--;
    const t = b[pos++];
    if (t < 0x80 || t >= 0xe0) continue; // fixint
    let children = 0; // values nested in this one
    let skip = 0; // bytes of this value after its header
    let need = 0; // header bytes after the type byte
    if (t < 0x90) children = (t & 0x0f) * 2;
    else if (t < 0xa0) children = t & 0x0f;
    else if (t < 0xc0) skip = t & 0x1f;
    else {
      switch (t) {
        case 0xc0: // nil
        case 0xc2: // false
        case 0xc3: // true
          continue;
        case 0xc1:
          return "the reserved byte 0xc1";
        case 0xcc:
        case 0xd0:
          skip = 1;
          break;
        case 0xcd:
        case 0xd1:
          skip = 2;
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          skip = 4;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          skip = 8;
          break;
        case 0xc4: // bin 8
        case 0xd9: // str 8
          need = 1;
          break;
        case 0xc5:
        case 0xda:
        case 0xdc: // array 16
        case 0xde: // map 16
          need = 2;
          break;
        case 0xc6:
        case 0xdb:
        case 0xdd: // array 32
        case 0xdf: // map 32
          need = 4;
          break;
        case 0xc7: // ext 8
          need = 1;
          break;
        case 0xc8: // ext 16
          need = 2;
          break;
        case 0xc9: // ext 32
          need = 4;
          break;
        default: { // 0xd4..0xd8: fixext 1, 2, 4, 8, 16
          if (pos >= end) return "truncated";
          const type = b[pos++];
          if (!extensionAllowed(type)) return refusedExtension(type);
          skip = 1 << (t - 0xd4);
        }
      }
    }
    if (need > 0) {
      if (need > end - pos) return "truncated";
      let n = 0;
      for (let i = 0; i < need; i++) n = n * 256 + b[pos + i];
      pos += need;
      if (t === 0xdc || t === 0xdd) children = n;
      else if (t === 0xde || t === 0xdf) children = n * 2;
      else if (t >= 0xc7 && t <= 0xc9) {
        if (pos >= end) return "truncated";
        const type = b[pos++];
        if (!extensionAllowed(type)) return refusedExtension(type);
        skip = n;
      } else skip = n;
    }
    if (skip > 0) {
      if (skip > end - pos) return "truncated";
      pos += skip;
    }
    if (children > 0) {
      if (children > end - pos) return "truncated"; // each nested value takes a byte at least
      if (depth === MAX_VALUE_DEPTH) return `arrays and maps nested deeper than ${MAX_VALUE_DEPTH}`;
      pending[++depth] = children;
    }
  }
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
export function writeMsgHead(
  target: Uint8Array,
  offset: number,
  sid: number,
  pubTail: Uint8Array,
): number {
  target[offset] = MSG_HEAD_MARK;
  const n = 1 + writeUint(target, offset + 1, sid);
  copyRange(target, offset + n, pubTail, 0, pubTail.length);
  return n + pubTail.length;
}

/** Upper bound of {@link writeMsgHead}'s length. */
export function msgHeadMaxLength(pubTail: Uint8Array): number {
  return 6 + pubTail.length;
}

/**
 * Framing: how frames are laid out on a port byte stream, and a decoder that cuts a stream of
 * chunks back into frames while enforcing the size limits.
 *
 * ```text
 *  0        2     3       4               8               12
 *  +--------+-----+-------+---------------+---------------+------------------+-------------+
 *  | magic  | op  | flags | head length   | payload length| head (msgpack)   | payload     |
 *  | "vB"   | u8  | u8    | u32 BE        | u32 BE        | headLength bytes | payloadLen  |
 *  +--------+-----+-------+---------------+---------------+------------------+-------------+
 * ```
 *
 * The low 3 bits of `flags` ({@link FrameHeader.FLAGS_PAD_MASK}) count padding bytes between
 * head and payload: in a shared-memory ring msgpackr encodes the payload in place at an
 * 8-byte aligned position. On the port stream they are always 0.
 *
 * The head is a msgpack value whose shape depends on the op (see `ops.ts`). The payload is
 * opaque bytes (for PUB and MSG: the msgpack encoding of the published value), so the broker
 * routes a message without decoding its value. The magic lets a reader notice a stream that
 * lost sync (a guest process that died mid-write) instead of misreading garbage as a length.
 *
 * @example
 * ```ts
 * import { encodeFrame, FrameDecoder } from "./frame.ts";
 * import { Op } from "./ops.ts";
 * const bytes = encodeFrame(Op.Ping, new Uint8Array([0x90]), new Uint8Array(0));
 * const decoder = new FrameDecoder(1 << 20);
 * decoder.push(bytes, (f) => console.log(f.op)); // 7 (PING)
 * ```
 * @module
 */
import { ErrorCode, VbusError } from "./errors.ts";
import { isOp } from "./ops.ts";

/** Offsets and sizes of the frame header, described once. */
export const FrameHeader = {
  /** First magic byte, 'v'. */
  MAGIC_0: 0x76,
  /** Second magic byte, 'B'. */
  MAGIC_1: 0x42,
  MAGIC_OFFSET: 0,
  OP_OFFSET: 2,
  FLAGS_OFFSET: 3,
  HEAD_LENGTH_OFFSET: 4,
  PAYLOAD_LENGTH_OFFSET: 8,
  /** Bytes before the head. */
  LENGTH: 12,
  /** Bits of the flags byte that count padding bytes between head and payload (0..7). */
  FLAGS_PAD_MASK: 0x07,
} as const;

/**
 * One decoded frame. `head` and `payload` are views into the received bytes; `buf`,
 * `headStart` and `headEnd` locate the head without making a view (the hot path decodes it
 * in place).
 */
export interface Frame {
  readonly op: number;
  readonly flags: number;
  readonly head: Uint8Array;
  readonly payload: Uint8Array;
  readonly buf: Uint8Array;
  readonly headStart: number;
  readonly headEnd: number;
  /** Where {@link payload} is in {@link buf} (the hot path copies it without a view). */
  readonly payloadStart: number;
  readonly payloadEnd: number;
}

/**
 * A frame located in a buffer (a port chunk or a ring record): views are made only if someone
 * asks for them, so a flood of PINGs or PONGs costs one small object per frame, nothing more.
 * The fields are writable so that one object can be reused for every record of a ring
 * ({@link parseFrameInto}); every frame the broker sees has this one shape.
 */
export class LocatedFrame implements Frame {
  /** A frame of nothing yet, for {@link parseFrameInto} to fill. */
  constructor(
    public op = 0,
    public flags = 0,
    public buf: Uint8Array = EMPTY,
    public headStart = 0,
    public headEnd = 0,
    public payloadStart = 0,
    public payloadEnd = 0,
  ) {}
  /** The head, a view into {@link buf}. */
  get head(): Uint8Array {
    return this.buf.subarray(this.headStart, this.headEnd);
  }
  /** The payload, a view into {@link buf}. */
  get payload(): Uint8Array {
    return this.buf.subarray(this.payloadStart, this.payloadEnd);
  }
}

/**
 * Write a frame header for the given op and lengths into `target` at `offset`.
 *
 * @example
 * ```ts
 * import { Op } from "./ops.ts";
 * const buf = new Uint8Array(FrameHeader.LENGTH);
 * writeFrameHeader(buf, 0, Op.Ping, 0, 1, 0);
 * ```
 */
export function writeFrameHeader(
  target: Uint8Array,
  offset: number,
  op: number,
  flags: number,
  headLength: number,
  payloadLength: number,
): void {
  target[offset] = FrameHeader.MAGIC_0;
  target[offset + 1] = FrameHeader.MAGIC_1;
  target[offset + FrameHeader.OP_OFFSET] = op;
  target[offset + FrameHeader.FLAGS_OFFSET] = flags;
  writeU32(target, offset + FrameHeader.HEAD_LENGTH_OFFSET, headLength);
  writeU32(target, offset + FrameHeader.PAYLOAD_LENGTH_OFFSET, payloadLength);
}

/**
 * Encode a whole frame into a new buffer.
 *
 * @example
 * ```ts
 * import { Op } from "./ops.ts";
 * const frame = encodeFrame(Op.Pong, new Uint8Array([0x90]));
 * ```
 */
export function encodeFrame(
  op: number,
  head: Uint8Array,
  payload: Uint8Array = EMPTY,
  flags = 0,
): Uint8Array {
  const out = new Uint8Array(FrameHeader.LENGTH + head.length + payload.length);
  writeFrameHeader(out, 0, op, flags, head.length, payload.length);
  out.set(head, FrameHeader.LENGTH);
  out.set(payload, FrameHeader.LENGTH + head.length);
  return out;
}

/**
 * Parse the one frame that fills `bytes[offset, offset + length)`, e.g. a ring record's body
 * in memory the peer can change at any moment: every header field is read once, and the
 * frame must fill the record exactly. Throws a `BAD_FRAME` / `FRAME_TOO_LARGE` VbusError.
 * Allocates the frame; {@link parseFrameInto} fills one the caller reuses.
 *
 * @example
 * ```ts
 * import { Op } from "./ops.ts";
 * const f = encodeFrame(Op.Ping, new Uint8Array([0x90]));
 * parseFrameAt(f, 0, f.length, 1024).op; // Op.Ping
 * ```
 */
export function parseFrameAt(
  bytes: Uint8Array,
  offset: number,
  length: number,
  maxFrameBytes: number,
): Frame {
  return parseFrameInto(new LocatedFrame(), bytes, offset, length, maxFrameBytes);
}

/**
 * The checks of {@link parseFrameAt}, filling `frame` instead of allocating one: a ring's
 * receive loop reuses one frame for every record. Each header field is read once from
 * `bytes` (shared memory the peer may rewrite meanwhile) and the frame must fill the record
 * exactly. Throws a `BAD_FRAME` / `FRAME_TOO_LARGE` VbusError, leaving `frame` unchanged.
 * Returns `frame`.
 *
 * @example
 * ```ts
 * import { Op } from "./ops.ts";
 * const reused = new LocatedFrame();
 * const f = encodeFrame(Op.Ping, new Uint8Array([0x90]));
 * parseFrameInto(reused, f, 0, f.length, 1024) === reused; // true
 * ```
 */
export function parseFrameInto(
  frame: LocatedFrame,
  bytes: Uint8Array,
  offset: number,
  length: number,
  maxFrameBytes: number,
): LocatedFrame {
  if (length < FrameHeader.LENGTH) {
    throw new VbusError(
      ErrorCode.BadFrame,
      `record of ${length} bytes is shorter than a frame header`,
    );
  }
  if (length > maxFrameBytes) {
    throw new VbusError(
      ErrorCode.FrameTooLarge,
      `frame of ${length} bytes exceeds the limit of ${maxFrameBytes}`,
    );
  }
  const m0 = bytes[offset];
  const m1 = bytes[offset + 1];
  const op = bytes[offset + FrameHeader.OP_OFFSET];
  const flags = bytes[offset + FrameHeader.FLAGS_OFFSET];
  const headLength = readU32(bytes, offset + FrameHeader.HEAD_LENGTH_OFFSET);
  const payloadLength = readU32(bytes, offset + FrameHeader.PAYLOAD_LENGTH_OFFSET);
  if (m0 !== FrameHeader.MAGIC_0 || m1 !== FrameHeader.MAGIC_1) {
    throw new VbusError(ErrorCode.BadFrame, "bad frame magic in ring record");
  }
  if (!isOp(op)) throw new VbusError(ErrorCode.BadFrame, `unknown op ${op} in ring record`);
  const pad = flags & FrameHeader.FLAGS_PAD_MASK;
  if (FrameHeader.LENGTH + headLength + pad + payloadLength !== length) {
    throw new VbusError(
      ErrorCode.BadFrame,
      `frame lengths (head ${headLength}, pad ${pad}, payload ${payloadLength}) do not fill the ${length}-byte record`,
    );
  }
  const headStart = offset + FrameHeader.LENGTH;
  const payloadStart = headStart + headLength + pad;
  frame.op = op;
  frame.flags = flags;
  frame.buf = bytes;
  frame.headStart = headStart;
  frame.headEnd = headStart + headLength;
  frame.payloadStart = payloadStart;
  frame.payloadEnd = payloadStart + payloadLength;
  return frame;
}

/** A shared empty payload. */
export const EMPTY: Uint8Array = new Uint8Array(0);

function writeU32(b: Uint8Array, o: number, v: number) {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

function readU32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3];
}

/**
 * What {@link FrameDecoder.push} calls per frame. Returning `false` stops decoding after this
 * frame: the rest stays buffered until {@link FrameDecoder.pump} (a broker bounds the work one
 * session does per turn this way).
 */
export type FrameHandler = (frame: Frame) => unknown;

/**
 * Cuts a byte stream into frames. Chunks are kept by reference (no copy) unless a frame spans
 * chunks, so callers must hand over chunks they will not reuse. A large frame is assembled in a
 * buffer that grows with the bytes that actually arrived, so a peer announcing a huge frame
 * pins only what it sent.
 *
 * Errors are thrown as {@link VbusError} with code `BAD_FRAME` or `FRAME_TOO_LARGE`; after an
 * error the decoder is poisoned until {@link FrameDecoder.reset} or {@link FrameDecoder.resync}.
 */
export class FrameDecoder {
  #buf: Uint8Array = EMPTY;
  #maxFrame: number;
  #maxHead: number;
  #assembly: Uint8Array | undefined;
  #assemblyTotal = 0;
  #filled = 0;

  /**
   * @param maxFrameBytes largest whole frame accepted
   * @param maxHeadBytes largest head accepted (defaults to 64 KiB, far above any valid head)
   */
  constructor(maxFrameBytes: number, maxHeadBytes: number = MAX_HEAD_BYTES) {
    this.#maxFrame = maxFrameBytes;
    this.#maxHead = Math.min(maxHeadBytes, maxFrameBytes);
  }

  /** Bytes received but not yet part of a whole frame. */
  get buffered(): number {
    return this.#assembly ? this.#filled : this.#buf.length;
  }

  /** Change the frame limit (after negotiation). */
  setMaxFrameBytes(n: number): void {
    this.#maxFrame = n;
  }

  /** Drop everything buffered. */
  reset(): void {
    this.#buf = EMPTY;
    this.#assembly = undefined;
  }

  /**
   * Drop bytes up to the next plausible frame start (the magic), for a reader that expects
   * stale bytes before its session starts. Returns how many bytes were dropped.
   */
  resync(): number {
    const b = this.#buf;
    for (let i = 1; i < b.length; i++) {
      if (
        b[i] === FrameHeader.MAGIC_0 && (i + 1 === b.length || b[i + 1] === FrameHeader.MAGIC_1)
      ) {
        this.#buf = b.subarray(i);
        return i;
      }
    }
    this.#buf = EMPTY;
    return b.length;
  }

  /**
   * Feed a chunk; `onFrame` is called for every whole frame, in order. Returns false when the
   * handler stopped early (whole frames may then be left buffered: call {@link pump}).
   */
  push(chunk: Uint8Array, onFrame: FrameHandler): boolean {
    if (this.#assembly) {
      // A large frame is being assembled: copy into its buffer, grown as bytes arrive.
      const total = this.#assemblyTotal;
      const n = Math.min(total - this.#filled, chunk.length);
      let a = this.#assembly;
      if (this.#filled + n > a.length) {
        const grown = new Uint8Array(Math.min(total, Math.max(a.length * 2, this.#filled + n)));
        grown.set(a.subarray(0, this.#filled));
        a = this.#assembly = grown;
      }
      a.set(chunk.subarray(0, n), this.#filled);
      this.#filled += n;
      if (this.#filled < total) return true;
      this.#assembly = undefined;
      this.#buf = EMPTY;
      const rest = chunk.subarray(n);
      if (!this.#emitAll(a, onFrame)) {
        this.#buf = rest;
        return false;
      }
      if (rest.length === 0) return true;
      chunk = rest;
    }
    let b: Uint8Array;
    if (this.#buf.length === 0) {
      b = chunk;
    } else {
      b = new Uint8Array(this.#buf.length + chunk.length);
      b.set(this.#buf, 0);
      b.set(chunk, this.#buf.length);
    }
    return this.#emitAll(b, onFrame);
  }

  /** Decode whole frames left buffered by a handler that stopped early. Same return as push. */
  pump(onFrame: FrameHandler): boolean {
    if (this.#assembly || this.#buf.length === 0) return true;
    return this.#emitAll(this.#buf, onFrame);
  }

  #emitAll(b: Uint8Array, onFrame: FrameHandler): boolean {
    let pos = 0;
    try {
      while (b.length - pos >= FrameHeader.LENGTH) {
        if (b[pos] !== FrameHeader.MAGIC_0 || b[pos + 1] !== FrameHeader.MAGIC_1) {
          throw new VbusError(ErrorCode.BadFrame, "bad frame magic: the stream is out of sync");
        }
        const op = b[pos + FrameHeader.OP_OFFSET];
        if (!isOp(op)) throw new VbusError(ErrorCode.BadFrame, `unknown op ${op}`);
        const headLength = readU32(b, pos + FrameHeader.HEAD_LENGTH_OFFSET);
        const payloadLength = readU32(b, pos + FrameHeader.PAYLOAD_LENGTH_OFFSET);
        const flags = b[pos + FrameHeader.FLAGS_OFFSET];
        const pad = flags & FrameHeader.FLAGS_PAD_MASK;
        const total = FrameHeader.LENGTH + headLength + pad + payloadLength;
        if (headLength > this.#maxHead || total > this.#maxFrame) {
          throw new VbusError(
            ErrorCode.FrameTooLarge,
            `frame of ${total} bytes (head ${headLength}) exceeds the limit of ${this.#maxFrame}`,
          );
        }
        const available = b.length - pos;
        if (available < total) {
          if (total >= ASSEMBLY_THRESHOLD) {
            const a = new Uint8Array(Math.min(total, Math.max(available * 2, ASSEMBLY_THRESHOLD)));
            a.set(b.subarray(pos), 0);
            this.#assembly = a;
            this.#assemblyTotal = total;
            this.#filled = available;
            pos = b.length;
          }
          break;
        }
        const headStart = pos + FrameHeader.LENGTH;
        const payloadStart = headStart + headLength + pad;
        const frame = new LocatedFrame(
          op,
          flags,
          b,
          headStart,
          headStart + headLength,
          payloadStart,
          payloadStart + payloadLength,
        );
        pos += total;
        if (onFrame(frame) === false) return false;
      }
      return true;
    } finally {
      this.#buf = pos === b.length ? EMPTY : b.subarray(pos);
    }
  }
}

/** Largest frame head either side accepts: far above any valid head (subjects, headers). */
export const MAX_HEAD_BYTES = 64 * 1024;

/** Frames at least this large are assembled in their own buffer instead of re-concatenated. */
const ASSEMBLY_THRESHOLD = 16 * 1024;

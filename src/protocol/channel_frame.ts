/**
 * Channel envelopes: how `vbus agent` multiplexes the streams of many local processes over a
 * VM's one port (docs/PROTOCOL.md section 14). An envelope is a 12-byte header (magic "vM",
 * kind, flags, channel, body length; big-endian) and a body. DATA bodies are raw bytes of one
 * channel's ordinary vbus stream; the other kinds carry one msgpack map.
 *
 * The decoder treats its input as hostile: the magic, the kind and the length are checked
 * from the header before the body is buffered, and a violation throws.
 *
 * @example
 * ```ts
 * import { EnvelopeDecoder, EnvelopeKind, encodeEnvelope } from "./channel_frame.ts";
 * const bytes = encodeEnvelope(EnvelopeKind.Data, 3, new Uint8Array([1, 2]));
 * new EnvelopeDecoder().push(bytes, (kind, channel, body) => console.log(kind, channel, body.length)); // 4 3 2
 * ```
 * @module
 */
import { decodeValue, encodeValue } from "./codec.ts";
import { FrameHeader } from "./frame.ts";

/** First byte of an envelope ('v'), shared with frames. */
export const ENVELOPE_MAGIC_0 = 0x76;
/** Second byte of an envelope ('M'; a frame has 'B'). */
export const ENVELOPE_MAGIC_1 = 0x4d;
/** Bytes of an envelope header. */
export const ENVELOPE_HEADER_BYTES = 12;
/** Largest envelope body accepted (a DATA envelope carries at most this much of a stream). */
export const MAX_ENVELOPE_BODY = 1024 * 1024;
/** Version of the mux protocol (MUX_HELLO / MUX_WELCOME / ATTACH `v`). */
export const MUX_VERSION = 1;

/** Envelope kinds. */
export const EnvelopeKind = Object.freeze({
  MuxHello: 1,
  MuxWelcome: 2,
  Open: 3,
  Data: 4,
  Close: 5,
  Error: 6,
  Attach: 7,
});
/** One of {@link EnvelopeKind}. */
export type EnvelopeKind = typeof EnvelopeKind[keyof typeof EnvelopeKind];

const KIND_NAMES = ["", "MUX_HELLO", "MUX_WELCOME", "OPEN", "DATA", "CLOSE", "ERROR", "ATTACH"];

/**
 * Name of an envelope kind, for errors and logs.
 *
 * @example
 * ```ts
 * envelopeKindName(4); // "DATA"
 * ```
 */
export function envelopeKindName(kind: number): string {
  return KIND_NAMES[kind] || `kind ${kind}`;
}

/**
 * The 12-byte header of an envelope with a `length`-byte body.
 *
 * @example
 * ```ts
 * envelopeHeader(EnvelopeKind.Data, 1, 5).length; // 12
 * ```
 */
export function envelopeHeader(kind: EnvelopeKind, channel: number, length: number): Uint8Array {
  const h = new Uint8Array(ENVELOPE_HEADER_BYTES);
  const dv = new DataView(h.buffer);
  h[0] = ENVELOPE_MAGIC_0;
  h[1] = ENVELOPE_MAGIC_1;
  h[2] = kind;
  h[3] = 0;
  dv.setUint32(4, channel >>> 0);
  dv.setUint32(8, length >>> 0);
  return h;
}

/**
 * One envelope as one buffer: the header and `body` (bytes, or a value encoded as msgpack).
 *
 * @example
 * ```ts
 * encodeEnvelope(EnvelopeKind.Close, 2, { reason: "gone" });
 * ```
 */
export function encodeEnvelope(
  kind: EnvelopeKind,
  channel: number,
  body: Uint8Array | Record<string, unknown>,
): Uint8Array {
  const bytes = body instanceof Uint8Array ? body : encodeValue(body);
  const out = new Uint8Array(ENVELOPE_HEADER_BYTES + bytes.length);
  out.set(envelopeHeader(kind, channel, bytes.length), 0);
  out.set(bytes, ENVELOPE_HEADER_BYTES);
  return out;
}

/**
 * Decode the msgpack map of a control envelope; anything but a map is an error.
 *
 * @example
 * ```ts
 * import { encodeValue } from "./codec.ts";
 * decodeEnvelopeBody(encodeValue({ slot: 1 })); // { slot: 1 }
 * ```
 */
export function decodeEnvelopeBody(body: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = decodeValue(body);
  } catch (err) {
    throw new Error(`envelope body is not msgpack: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error("envelope body is not a map");
  }
  return value as Record<string, unknown>;
}

/** Receives each whole envelope; `body` is valid only during the call. */
export type EnvelopeHandler = (kind: EnvelopeKind, channel: number, body: Uint8Array) => void;

/**
 * Cuts envelopes out of a byte stream (chunks of any size). Throws on a bad magic, an unknown
 * kind, or a body above `maxBody`, before buffering it.
 *
 * @example
 * ```ts
 * const d = new EnvelopeDecoder();
 * d.push(encodeEnvelope(EnvelopeKind.Close, 1, { reason: "exit" }), (kind, channel, body) => {
 *   console.log(kind, channel, decodeEnvelopeBody(body)); // 5 1 { reason: "exit" }
 * });
 * ```
 */
export class EnvelopeDecoder {
  #buf = new Uint8Array(0);
  #maxBody: number;

  constructor(maxBody = MAX_ENVELOPE_BODY) {
    this.#maxBody = maxBody;
  }

  /** Bytes of an incomplete envelope held for the next chunk. */
  get buffered(): number {
    return this.#buf.length;
  }

  /**
   * Feed a chunk; `onEnvelope` runs for every envelope completed by it, in order. Returns the
   * bytes from where a vbus frame (the port protocol's magic) stands in place of the next
   * envelope: the agent is gone and a process speaks to the port directly. Decoding stops
   * there; any other bytes that are not an envelope throw.
   */
  push(chunk: Uint8Array, onEnvelope: EnvelopeHandler): Uint8Array | undefined {
    let buf = chunk;
    if (this.#buf.length > 0) {
      buf = new Uint8Array(this.#buf.length + chunk.length);
      buf.set(this.#buf, 0);
      buf.set(chunk, this.#buf.length);
    }
    let at = 0;
    while (buf.length - at >= ENVELOPE_HEADER_BYTES) {
      if (buf[at] !== ENVELOPE_MAGIC_0 || buf[at + 1] !== ENVELOPE_MAGIC_1) {
        if (buf[at] === FrameHeader.MAGIC_0 && buf[at + 1] === FrameHeader.MAGIC_1) {
          this.#buf = new Uint8Array(0);
          return buf.slice(at);
        }
        throw new Error(`bad envelope magic 0x${hex(buf[at])}${hex(buf[at + 1])}`);
      }
      const kind = buf[at + 2];
      if (kind < EnvelopeKind.MuxHello || kind > EnvelopeKind.Attach) {
        throw new Error(`unknown envelope kind ${kind}`);
      }
      const dv = new DataView(buf.buffer, buf.byteOffset + at, ENVELOPE_HEADER_BYTES);
      const channel = dv.getUint32(4);
      const length = dv.getUint32(8);
      if (length > this.#maxBody) {
        throw new Error(`envelope body of ${length} bytes exceeds ${this.#maxBody}`);
      }
      const end = at + ENVELOPE_HEADER_BYTES + length;
      if (end > buf.length) break;
      this.#buf = new Uint8Array(0); // a handler may push again (re-entrancy is not supported)
      onEnvelope(kind as EnvelopeKind, channel, buf.subarray(at + ENVELOPE_HEADER_BYTES, end));
      at = end;
    }
    this.#buf = at === buf.length ? new Uint8Array(0) : buf.slice(at);
    return undefined;
  }
}

function hex(n: number | undefined): string {
  return (n ?? 0).toString(16).padStart(2, "0");
}

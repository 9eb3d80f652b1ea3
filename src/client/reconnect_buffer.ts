/**
 * Publishes waiting for the next session: those made while disconnected (up to a byte bound,
 * beyond which `publish()` rejects with BUFFER_FULL instead of dropping anything silently),
 * and those recovered from the outbound ring of the session that just ended. Recovered
 * publishes had already resolved, so they are never refused; they are bounded by the ring's
 * capacity. Everything is sent on the next session in the order it was added.
 *
 * @example
 * ```ts
 * import { ReconnectBuffer } from "./reconnect_buffer.ts";
 * import { encodeValue } from "../protocol/codec.ts";
 * import { encodeFrame } from "../protocol/frame.ts";
 * import { Op } from "../protocol/ops.ts";
 * const buffer = new ReconnectBuffer(8 * 1024 * 1024);
 * const head = encodeValue(["sensors.temp", null, null]); // [subject, reply, headers]
 * buffer.add(encodeFrame(Op.Pub, head, encodeValue(21.5)), "sensors.temp"); // throws when full
 * const { frames, recovered } = buffer.take(); // on the next session: 1 frame, 0 recovered
 * ```
 * @module
 */
import { ErrorCode, VbusError } from "../protocol/errors.ts";

/** Encoded PUB frames for the next session; see the module doc. */
export class ReconnectBuffer {
  #frames: Uint8Array[] = [];
  #bytes = 0;
  #recovered = 0;
  #limit: number;

  /** @param limit bytes of publishes made while disconnected that are accepted */
  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Bytes waiting. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Frames waiting. */
  get length(): number {
    return this.#frames.length;
  }

  /** Add a publish made while disconnected; throws BUFFER_FULL beyond the bound. */
  add(frame: Uint8Array, subject: string): void {
    if (this.#bytes + frame.length > this.#limit) {
      throw new VbusError(
        ErrorCode.BufferFull,
        `disconnected, and the reconnect buffer (${this.#limit} bytes) is full`,
        subject,
      );
    }
    this.#frames.push(frame);
    this.#bytes += frame.length;
  }

  /** Add a publish that was accepted already (it waited in the ring's queue): never refused. */
  requeue(frame: Uint8Array): void {
    this.#frames.push(frame);
    this.#bytes += frame.length;
  }

  /** Add publishes recovered from a dead session's ring (already resolved: never refused). */
  addRecovered(frames: Uint8Array[]): void {
    for (const frame of frames) {
      this.#frames.push(frame);
      this.#bytes += frame.length;
    }
    this.#recovered += frames.length;
  }

  /** Everything waiting, oldest first, and how many of those frames were recovered ones. */
  take(): { frames: Uint8Array[]; recovered: number } {
    const out = { frames: this.#frames, recovered: this.#recovered };
    this.clear();
    return out;
  }

  /** Drop everything (the connection closed for good). */
  clear(): void {
    this.#frames = [];
    this.#bytes = 0;
    this.#recovered = 0;
  }
}

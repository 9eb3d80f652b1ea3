/**
 * How full a ring is, read from its shared control words without touching its data: for stats
 * and the monitoring endpoint. One of the two positions is the peer's and untrusted, so the
 * result is clamped to `[0, capacity]` (a guest that scribbles its position gets a silly number
 * in the stats, never an exception or a negative fill).
 *
 * @example
 * ```ts
 * import { ringFill } from "./fill.ts";
 * import { initRegion } from "./region.ts";
 * const region = initRegion(new Uint8Array(1 << 16));
 * console.log(ringFill(region.bytes, region.inbound)); // { usedBytes: 0, capacityBytes: … }
 * ```
 * @module
 */
import type { RingDescriptor } from "./ring.ts";

/**
 * Bytes written to a ring and not yet consumed, and its size.
 *
 * @example
 * ```ts
 * import type { RingFill } from "./fill.ts";
 * const percent = (f: RingFill) => Math.round((100 * f.usedBytes) / f.capacityBytes);
 * console.log(percent({ usedBytes: 1024, capacityBytes: 4096 })); // 25
 * ```
 */
export interface RingFill {
  /** Bytes written and not yet consumed (clamped to `[0, capacityBytes]`). */
  usedBytes: number;
  /** The ring's data size. */
  capacityBytes: number;
}

/** The fill of the ring `d` inside `bytes` right now (see the module doc). */
export function ringFill(bytes: Uint8Array, d: RingDescriptor): RingFill {
  const words = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  const producer = Atomics.load(words, d.control.PRODUCER_POSITION >> 2) >>> 0;
  const consumer = Atomics.load(words, d.control.CONSUMER_POSITION >> 2) >>> 0;
  const used = (producer - consumer) >>> 0; // free-running u32 counters
  return { usedBytes: used > d.capacity ? d.capacity : used, capacityBytes: d.capacity };
}

/**
 * Copies of small payloads, carved out of shared chunks instead of one allocation each.
 *
 * A message that must outlive its ring slot (an iterated subscription's, an `async`
 * callback's, a request's reply) gets its payload copied into memory of its own. Such copies
 * wait in queues, and a buffer each was the largest cost of the delivery: in Deno every
 * `new Uint8Array` is a `malloc` of its backing store, freed on another thread (0.35-1.1 us
 * here, against ~20 ns for a view); in Bun many small buffers alive at once cost the
 * collector more than one chunk does. Iterated subscriptions in one process
 * (`bench/subscribe_modes.ts`): Deno 0.52M -> 1.28M msgs/s, Bun 0.81-0.85M -> 1.13-1.21M.
 * Small copies therefore share chunks of {@link SLAB_CHUNK_BYTES}; larger ones get a buffer of
 * their own. The price, as with Node's `Buffer` pool: a copy kept alive keeps its whole chunk
 * alive (at most {@link SLAB_CHUNK_BYTES} per kept message), and its `buffer` holds other
 * copies: each connection has a slab of its own, so they are that connection's messages. Never
 * transfer such a `buffer` (it would detach the other copies in it); `.slice()` a copy before
 * `postMessage` or `structuredClone`, which would copy the whole chunk. The source is read byte by byte when small: no view of it is
 * made (in Bun a view of a mapped ring costs ~30 ns). `encodeValue` copies into a chunk too
 * where buffers are costly (`ffi/runtime_traits.ts`).
 *
 * @example
 * ```ts
 * import { PayloadSlab } from "./payload_slab.ts";
 * const slab = new PayloadSlab();
 * const ring = new Uint8Array([1, 2, 3, 4, 5]);
 * const copy = slab.copy(ring, 1, 4); // [2, 3, 4], no longer tied to `ring`
 * ring[1] = 9;
 * copy[0]; // 2
 * ```
 * @module
 */
import { copyRange } from "./copy_range.ts";

/** Size of one shared chunk. */
export const SLAB_CHUNK_BYTES = 4096;
/** Payloads up to this size share chunks; larger ones get a buffer of their own. */
export const SLAB_MAX_COPY = 512;
/** Copies start on this alignment, so a copy's view can be read as wider words too. */
const ALIGN = 8;

/** A source of copies; see the module doc. One thread's (a Worker has its own). */
export class PayloadSlab {
  #chunk = new Uint8Array(0);
  #at = 0;

  /**
   * A copy of `source[start, end)` that no later write to `source` changes. Throws a
   * RangeError for a range that is not one (a chunk must never be handed out twice).
   */
  copy(source: Uint8Array, start: number, end: number): Uint8Array {
    const length = end - start;
    if (!(length >= 0) || start < 0 || end > source.length) {
      throw new RangeError(`copy: [${start}, ${end}) is not a range of ${source.length} bytes`);
    }
    if (length > SLAB_MAX_COPY) {
      const own = new Uint8Array(length);
      copyRange(own, 0, source, start, length);
      return own;
    }
    if (this.#at + length > this.#chunk.length) {
      this.#chunk = new Uint8Array(SLAB_CHUNK_BYTES);
      this.#at = 0;
    }
    const at = this.#at;
    copyRange(this.#chunk, at, source, start, length);
    this.#at = (at + length + ALIGN - 1) & ~(ALIGN - 1);
    return this.#chunk.subarray(at, at + length);
  }
}

/**
 * This thread's slab for the values vbus encodes to send (`encodeValue` in Deno: heads and
 * payloads that are copied again into a frame). Received payloads are copied with their
 * connection's own slab.
 *
 * @example
 * ```ts
 * import { copyPayload } from "./payload_slab.ts";
 * const copy = copyPayload(new Uint8Array([1, 2, 3]), 0, 2); // [1, 2]
 * ```
 */
export function copyPayload(source: Uint8Array, start: number, end: number): Uint8Array {
  return shared.copy(source, start, end);
}

const shared = new PayloadSlab();

/**
 * Emptied buffers kept for reuse, of any size a queue asks for.
 *
 * A queue that copies frames into private memory (a publisher's batches while its ring is
 * full, a subscriber's backlog in the broker) gets a buffer of a standard size for small
 * frames and one of its own for a frame larger than that. Without reuse every large frame
 * was a fresh allocation: at 64 KiB messages that was 18-24% of a Bun publisher's CPU and 15%
 * of the broker's (`bench/results/profiles`, `#batchWithRoom` and `#room`). So a large buffer
 * is rounded up to {@link BUFFER_POOL_GRANULE} bytes (a stream of same-sized messages then
 * asks for the same size every time) and given back like a small one.
 *
 * The pool bounds what it keeps, in count and in bytes, so a burst of large frames does not
 * hold its memory for the rest of the process's life.
 *
 * @example
 * ```ts
 * import { BufferPool } from "./buffer_pool.ts";
 * const pool = new BufferPool({ standard: 65536, maxBuffers: 8, maxBytes: 1 << 20 });
 * const big = pool.take(70_000); // 73,728 bytes: rounded up to the granule
 * pool.give(big);
 * pool.take(70_000) === big; // true
 * ```
 * @module
 */

/** A buffer larger than the standard size is rounded up to a multiple of this. */
export const BUFFER_POOL_GRANULE = 4096;

/** How a {@link BufferPool} sizes and bounds what it keeps. */
export interface BufferPoolOptions {
  /** Size of a buffer for anything up to it. */
  standard: number;
  /** Emptied buffers kept at most. */
  maxBuffers: number;
  /** Bytes of emptied buffers kept at most. */
  maxBytes: number;
}

/** Emptied buffers for reuse; see the module doc. */
export class BufferPool {
  readonly standard: number;
  #maxBuffers: number;
  #maxBytes: number;
  #spare: Uint8Array[] = [];
  #spareBytes = 0;

  constructor(opts: BufferPoolOptions) {
    if (!(opts.standard > 0) || opts.standard % BUFFER_POOL_GRANULE !== 0) {
      throw new RangeError(
        `a pool's standard size must be a positive multiple of ${BUFFER_POOL_GRANULE}`,
      );
    }
    this.standard = opts.standard;
    this.#maxBuffers = opts.maxBuffers;
    this.#maxBytes = opts.maxBytes;
  }

  /** Bytes of the emptied buffers kept now. */
  get spareBytes(): number {
    return this.#spareBytes;
  }

  /** The size of buffer {@link take} hands out for `min` bytes. */
  sizeFor(min: number): number {
    if (min <= this.standard) return this.standard;
    return Math.ceil(min / BUFFER_POOL_GRANULE) * BUFFER_POOL_GRANULE;
  }

  /**
   * A buffer of {@link sizeFor}(`min`) bytes: a kept one when there is one of that size, else
   * a new one. Its contents are whatever was in it.
   */
  take(min: number): Uint8Array {
    const size = this.sizeFor(min);
    const spare = this.#spare;
    // Newest first: the one given back last is the likeliest still in the cache.
    for (let i = spare.length - 1; i >= 0; i--) {
      const b = spare[i];
      if (b.length !== size) continue;
      spare.splice(i, 1); // keeps the rest oldest first, for give()'s eviction
      this.#spareBytes -= size;
      return b;
    }
    return new Uint8Array(size);
  }

  /**
   * Keep `b` for a later {@link take} when it is one of this pool's sizes and fits the bounds
   * alone; the caller must not use it any more either way. When the pool is full the oldest
   * kept buffers make room: a stream whose message size changes then reuses its new size
   * instead of finding the pool full of the old one.
   */
  give(b: Uint8Array): void {
    const n = b.length;
    if (n !== this.sizeFor(n) || b.byteOffset !== 0 || b.buffer.byteLength !== n) return;
    if (n > this.#maxBytes || this.#maxBuffers < 1) return;
    const spare = this.#spare;
    while (spare.length >= this.#maxBuffers || this.#spareBytes + n > this.#maxBytes) {
      this.#spareBytes -= spare.shift()!.length;
    }
    spare.push(b);
    this.#spareBytes += n;
  }

  /** Drop every kept buffer. */
  clear(): void {
    this.#spare = [];
    this.#spareBytes = 0;
  }
}

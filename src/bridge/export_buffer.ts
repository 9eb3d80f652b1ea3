/**
 * Exports waiting for NATS: while the bridge is not connected (or NATS has not confirmed
 * enough of what it was sent), messages for NATS wait here, in order, up to a bound in
 * messages and in bytes. Beyond it the oldest are dropped and counted: the broker never waits
 * for NATS and never grows without bound because of it.
 *
 * @example
 * ```ts
 * import { ExportBuffer } from "./export_buffer.ts";
 * const buffer = new ExportBuffer<Uint8Array>({ maxMessages: 2, maxBytes: 1024 }, (p) => p.length);
 * buffer.push(new Uint8Array(1));
 * buffer.push(new Uint8Array(2));
 * buffer.push(new Uint8Array(3)); // returns 1: the oldest was dropped
 * buffer.shift()!.length; // 2
 * ```
 * @module
 */
import { Fifo } from "../util/fifo.ts";

/** How much may wait. */
export interface ExportBufferLimits {
  maxMessages: number;
  maxBytes: number;
}

/** See the module doc. */
export class ExportBuffer<T> {
  #items = new Fifo<T>();
  #bytes = 0;
  #limits: ExportBufferLimits;
  #sizeOf: (item: T) => number;

  constructor(limits: ExportBufferLimits, sizeOf: (item: T) => number) {
    this.#limits = limits;
    this.#sizeOf = sizeOf;
  }

  /** Messages waiting. */
  get length(): number {
    return this.#items.length;
  }

  /** Bytes waiting (as {@link sizeOf} counts them). */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Add an item at the tail; returns how many of the oldest were dropped to make room. An item
   * larger than the whole byte bound is not kept (and counts as one dropped).
   */
  push(item: T): number {
    const size = this.#sizeOf(item);
    if (size > this.#limits.maxBytes) return 1;
    let dropped = 0;
    while (
      this.#items.length > 0 &&
      (this.#items.length >= this.#limits.maxMessages ||
        this.#bytes + size > this.#limits.maxBytes)
    ) {
      this.shift();
      dropped++;
    }
    this.#items.push(item);
    this.#bytes += size;
    return dropped;
  }

  /** Remove and return the oldest item. */
  shift(): T | undefined {
    const item = this.#items.shift();
    if (item !== undefined) this.#bytes -= this.#sizeOf(item);
    return item;
  }

  /** Drop everything; returns how many items were dropped. */
  clear(): number {
    const n = this.#items.length;
    this.#items.clear();
    this.#bytes = 0;
    return n;
  }
}

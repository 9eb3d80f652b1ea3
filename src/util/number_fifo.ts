/**
 * A first-in first-out queue of numbers in a `Float64Array` used as a circular buffer: no
 * garbage per item and no boxing of numbers beyond 31 bits (counters and sequence numbers of a
 * long-running broker). The capacity doubles when it is full; an emptied queue that grew
 * large gives its buffer back. `fifo.ts` holds queues of anything else.
 *
 * @example
 * ```ts
 * import { NumberFifo } from "./number_fifo.ts";
 * const q = new NumberFifo();
 * q.push(2 ** 40); q.push(7);
 * q.shift(); // 1099511627776
 * q.peek(); // 7
 * q.length; // 1
 * ```
 * @module
 */
/** Slots of a new queue's buffer (a power of two). */
const INITIAL_CAPACITY = 16;
/** A buffer at least this large is given back when the queue empties. */
const RELEASE_CAPACITY = 1 << 16;

/** A FIFO queue of numbers; see the module doc. */
export class NumberFifo {
  #slots = new Float64Array(INITIAL_CAPACITY);
  #mask = INITIAL_CAPACITY - 1;
  #head = 0;
  #length = 0;

  /** Numbers in the queue. */
  get length(): number {
    return this.#length;
  }

  /** Add a number at the tail. */
  push(value: number): void {
    if (this.#length > this.#mask) this.#grow();
    this.#slots[(this.#head + this.#length++) & this.#mask] = value;
  }

  /** The number at the head, or undefined when empty. */
  peek(): number | undefined {
    return this.#length > 0 ? this.#slots[this.#head] : undefined;
  }

  /** Remove and return the number at the head, or undefined when empty. */
  shift(): number | undefined {
    if (this.#length === 0) return undefined;
    const value = this.#slots[this.#head];
    this.#head = (this.#head + 1) & this.#mask;
    if (--this.#length === 0 && this.#mask + 1 >= RELEASE_CAPACITY) this.clear();
    return value;
  }

  /** Remove everything. */
  clear(): void {
    this.#slots = new Float64Array(INITIAL_CAPACITY);
    this.#mask = INITIAL_CAPACITY - 1;
    this.#head = 0;
    this.#length = 0;
  }

  #grow() {
    const old = this.#slots, mask = this.#mask;
    const slots = new Float64Array(old.length * 2);
    for (let i = 0; i < this.#length; i++) slots[i] = old[(this.#head + i) & mask];
    this.#slots = slots;
    this.#mask = slots.length - 1;
    this.#head = 0;
  }
}

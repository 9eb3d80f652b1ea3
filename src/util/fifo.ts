/**
 * A first-in first-out queue with O(1) `push` and `shift` and no garbage per item: a circular
 * buffer whose capacity doubles when it is full (`Array.prototype.shift` moves every element:
 * on a backlog of 300k messages each dequeue cost ~0.5 ms; slicing a consumed head away, the
 * previous design, made a flood of queued messages cost the broker an array of garbage every
 * few thousand items). An emptied queue that grew large gives its buffer back.
 *
 * The slots are a plain array by default; {@link float64Slots} keeps numbers in a
 * `Float64Array` instead (no boxing of numbers beyond 31 bits, such as the sequence numbers of
 * a long-running broker).
 *
 * @example
 * ```ts
 * import { Fifo, float64Slots } from "./fifo.ts";
 * const q = new Fifo<string>();
 * q.push("a"); q.push("b");
 * q.shift(); // "a"
 * q.peek(); // "b"
 * q.length; // 1
 * const numbers = new Fifo<number>(float64Slots);
 * numbers.push(2 ** 40);
 * numbers.shift(); // 1099511627776
 * ```
 * @module
 */

/** Storage of a {@link Fifo}'s slots: what {@link Slots} a queue of `capacity` items uses. */
export type SlotStorage<T> = (capacity: number) => Slots<T>;

/** Indexed slots (an array or a typed array). */
export interface Slots<T> {
  readonly length: number;
  [index: number]: T | undefined;
}

/** Slots in a plain array (the default). */
export const arraySlots = <T>(capacity: number): Slots<T> => new Array<T | undefined>(capacity);

/** Slots in a `Float64Array`, for queues of numbers. */
export const float64Slots: SlotStorage<number> = (capacity) =>
  new Float64Array(capacity) as unknown as Slots<number>;

/** Slots of a new queue's buffer (a power of two). */
const INITIAL_CAPACITY = 16;
/** A buffer at least this large is given back when the queue empties. */
const RELEASE_CAPACITY = 1 << 16;

/** A FIFO queue; see the module doc. */
export class Fifo<T> {
  #storage: SlotStorage<T>;
  #slots: Slots<T>;
  #mask = INITIAL_CAPACITY - 1;
  #head = 0;
  #length = 0;
  /** Typed slots hold no references: nothing to clear when an item leaves. */
  #clearSlots: boolean;

  /** `storage`: where the slots live ({@link arraySlots} unless given). */
  constructor(storage: SlotStorage<T> = arraySlots) {
    this.#storage = storage;
    this.#slots = storage(INITIAL_CAPACITY);
    this.#clearSlots = Array.isArray(this.#slots);
  }

  /** Items in the queue. */
  get length(): number {
    return this.#length;
  }

  /** Add an item at the tail. */
  push(item: T): void {
    if (this.#length > this.#mask) this.#grow();
    this.#slots[(this.#head + this.#length++) & this.#mask] = item;
  }

  /** The item at the head, or undefined when empty. */
  peek(): T | undefined {
    return this.#length > 0 ? this.#slots[this.#head] : undefined;
  }

  /** Remove and return the item at the head, or undefined when empty. */
  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const item = this.#slots[this.#head];
    if (this.#clearSlots) this.#slots[this.#head] = undefined; // no reference to what left
    this.#head = (this.#head + 1) & this.#mask;
    if (--this.#length === 0 && this.#mask + 1 >= RELEASE_CAPACITY) this.clear();
    return item;
  }

  /** Remove everything. */
  clear(): void {
    this.#slots = this.#storage(INITIAL_CAPACITY);
    this.#mask = INITIAL_CAPACITY - 1;
    this.#head = 0;
    this.#length = 0;
  }

  #grow() {
    const old = this.#slots, mask = this.#mask;
    const slots = this.#storage(2 * (mask + 1));
    for (let i = 0; i < this.#length; i++) slots[i] = old[(this.#head + i) & mask];
    this.#slots = slots;
    this.#mask = slots.length - 1;
    this.#head = 0;
  }
}

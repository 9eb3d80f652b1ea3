/**
 * An async iterator fed by pushes, with a bound: the queue behind a subscription or a status
 * stream. Pushes beyond the bound are refused (the caller counts and reports them), so a
 * consumer that stopped reading cannot grow memory without limit.
 *
 * @example
 * ```ts
 * import { QueuedIterator } from "./queued_iterator.ts";
 * const q = new QueuedIterator<number>(10);
 * q.push(1);
 * q.end();
 * for await (const n of q) console.log(n); // 1
 * ```
 * @module
 */

/** A bounded push queue consumed with `for await`. */
export class QueuedIterator<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #head = 0;
  #waiter?: (r: IteratorResult<T>) => void;
  #ended = false;
  #error?: Error;
  #max: number;
  #iterating = false;

  /** @param max most items held before {@link push} refuses */
  constructor(max = Infinity) {
    this.#max = max;
  }

  /** Items waiting to be consumed. */
  get pending(): number {
    return this.#items.length - this.#head;
  }

  /** True after {@link end} or {@link fail}. */
  get done(): boolean {
    return this.#ended;
  }

  /** Add an item; returns false (and drops it) when the queue is full or ended. */
  push(item: T): boolean {
    if (this.#ended) return false;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = undefined;
      w({ value: item, done: false });
      return true;
    }
    if (this.pending >= this.#max) return false;
    this.#items.push(item);
    return true;
  }

  /** No more items: the iterator finishes after the queued ones. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#wake();
  }

  /** Finish with an error, thrown to the consumer after the queued items. */
  fail(err: Error): void {
    if (this.#ended) return;
    this.#error = err;
    this.end();
  }

  #wake() {
    if (this.#waiter && this.pending === 0) {
      const w = this.#waiter;
      this.#waiter = undefined;
      if (this.#error) {
        // Deliver the error through the pending next(): reject is emulated below.
        w({ value: this.#error as unknown as T, done: true });
      } else w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.#iterating) throw new Error("this iterator is already being consumed");
    this.#iterating = true;
    return {
      next: () => {
        if (this.pending > 0) {
          const value = this.#items[this.#head];
          this.#items[this.#head++] = undefined as T;
          if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
            this.#items = this.#items.slice(this.#head);
            this.#head = 0;
          }
          return Promise.resolve({ value, done: false });
        }
        if (this.#ended) {
          if (this.#error) {
            const err = this.#error;
            this.#error = undefined;
            return Promise.reject(err);
          }
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          this.#waiter = (r) => {
            if (r.done && r.value instanceof Error) {
              this.#error = undefined;
              reject(r.value);
            } else resolve(r);
          };
        });
      },
      return: () => {
        this.#ended = true;
        this.#items = [];
        this.#head = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

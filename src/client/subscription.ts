/**
 * A subscription: an async iterable of messages (or a callback), with `unsubscribe()` and
 * `drain()`. It survives reconnects: the client re-sends it to the broker by itself.
 *
 * A message whose payload cannot be decoded is delivered like any other (see `msg.ts`): its
 * `data` throws a `CODEC` error, the connection emits an `error` status event for it, and the
 * subscription goes on, for iterators and callbacks alike. A callback's `err` argument is for
 * errors of the subscription itself; it is null for every delivered message.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect();
 * const sub = bus.subscribe<number>("counter", { max: 3 });
 * for await (const msg of sub) console.log(msg.data);
 * console.log(sub.received, sub.dropped);
 * ```
 * @module
 */
import { QueuedIterator } from "./queued_iterator.ts";
import type { Msg } from "./msg.ts";
import { DEFAULT_MAX_PENDING, type SubscribeOptions } from "./options.ts";

/** What a subscription needs from its connection. */
export interface SubscriptionOwner {
  unsubscribeSid(sid: number, max?: number): void;
  drainSid(sid: number): Promise<void>;
  slowConsumer(sub: Subscription<unknown>, dropped: number): void;
}

/** A live subscription. Iterate it with `for await`, or pass `callback` when subscribing. */
export class Subscription<T = unknown> implements AsyncIterable<Msg<T>> {
  /** Messages handed to the application. */
  received = 0;
  /** Messages dropped because the iterator did not keep up (see `maxPending`). */
  dropped = 0;
  #queue: QueuedIterator<Msg<T>>;
  #owner: SubscriptionOwner;
  #callback?: (err: Error | null, msg: Msg<T>) => void;
  #closedResolve!: () => void;
  /** Resolves when the subscription has ended (unsubscribed, drained, max reached, or closed). */
  readonly closed: Promise<void>;

  constructor(
    owner: SubscriptionOwner,
    /** Connection-local subscription id. */
    readonly sid: number,
    /** The subject pattern. */
    readonly subject: string,
    readonly opts: SubscribeOptions<T>,
  ) {
    this.#owner = owner;
    this.#callback = opts.callback;
    this.#queue = new QueuedIterator(opts.maxPending ?? DEFAULT_MAX_PENDING);
    this.closed = new Promise((r) => this.#closedResolve = r);
  }

  /** Queue group, if any. */
  get queue(): string | undefined {
    return this.opts.queue;
  }

  /** True when messages are handed to a callback (not queued for an iterator). */
  get hasCallback(): boolean {
    return this.#callback !== undefined;
  }

  /** Messages waiting in the iterator's queue. */
  get pending(): number {
    return this.#queue.pending;
  }

  /** True once the subscription ended. */
  get isClosed(): boolean {
    return this.#queue.done;
  }

  /** Stop receiving. With `max`, stop after that many messages in total. */
  unsubscribe(max?: number): void {
    if (this.isClosed) return;
    this.#owner.unsubscribeSid(this.sid, max);
  }

  /** Stop receiving new messages, let queued ones be consumed, then end. */
  drain(): Promise<void> {
    return this.#owner.drainSid(this.sid);
  }

  /** @internal Called by the connection for each message. */
  dispatch(msg: Msg<T>): void {
    if (this.#callback) {
      this.received++;
      try {
        this.#callback(null, msg);
      } catch (err) {
        // An application callback must not break the connection's read loop. A payload that
        // could not be decoded was already reported (an `error` status event): not again here.
        if (err !== msg.decodeError) {
          console.error(`vbus: subscription callback for "${this.subject}" threw:`, err);
        }
      }
    } else if (this.#queue.push(msg)) {
      this.received++;
    } else if (!this.#queue.done) {
      this.dropped++;
      this.#owner.slowConsumer(this as Subscription<unknown>, 1);
    }
    if (this.opts.max && this.received >= this.opts.max) this.end();
  }

  /** @internal End the subscription (no further messages). */
  end(err?: Error): void {
    if (this.#queue.done) return;
    if (err) this.#queue.fail(err);
    else this.#queue.end();
    this.#closedResolve();
  }

  [Symbol.asyncIterator](): AsyncIterator<Msg<T>> {
    if (this.#callback) throw new Error("a subscription with a callback cannot be iterated");
    const it = this.#queue[Symbol.asyncIterator]();
    return {
      next: () => it.next(),
      // Leaving a `for await` loop early ends the subscription: nobody reads it any more.
      return: (value?: unknown) => {
        this.unsubscribe();
        return it.return!(value);
      },
    };
  }
}

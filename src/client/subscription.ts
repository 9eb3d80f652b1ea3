/**
 * A subscription: an async iterable of messages (or a callback), with `unsubscribe()` and
 * `drain()`. It survives reconnects: the client re-sends it to the broker by itself.
 *
 * A message whose payload cannot be decoded is delivered like any other (see `msg.ts`): its
 * `data` throws a `CODEC` error, the connection emits an `error` status event for it, and the
 * subscription goes on, for iterators and callbacks alike. A callback's `err` argument is for
 * errors of the subscription itself: when the broker refuses it (e.g. PERMISSION_DENIED), the
 * callback is called once with that error and no message, as nats.js does; `err` is null for
 * every delivered message. A callback that throws, or returns a promise that rejects, is
 * logged; it never stops the connection.
 *
 * A callback's message is readable until the callback returns, or until the promise it
 * returns settles (see `msg.ts`).
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
import { expireMsg, keepMsg, type Msg } from "./msg.ts";
import { DEFAULT_MAX_PENDING, type SubscribeOptions } from "./options.ts";

/** What a subscription asks of its connection: closures given at creation, never the Bus. */
export interface SubscriptionHooks {
  /** Stop the subscription `sid` now, or after `max` messages in total. */
  unsubscribe(sid: number, max?: number): void;
  /** Unsubscribe `sid` at the broker, let what is in flight arrive, then end it. */
  drain(sid: number): Promise<void>;
  /** The iterator's queue was full: a message was dropped (counted in `dropped`). */
  slowConsumer(sub: Subscription<unknown>): void;
  /** The callback threw, or the promise it returned rejected. */
  callbackFailed(sub: Subscription<unknown>, err: unknown): void;
}

/** The connection's handle on one of its subscriptions (see {@link openSubscription}). */
export interface SubscriptionHandle<T = unknown> {
  /** The application's object. */
  readonly sub: Subscription<T>;
  /** The options it was made with. */
  readonly opts: SubscribeOptions<T>;
  /** Messages go to a callback (not to the iterator's queue). */
  readonly hasCallback: boolean;
  /** The callback is an `async function`: its payloads are copied out of the ring first. */
  readonly asyncCallback: boolean;
  /** Messages after which it ends by itself (`max`, or `unsubscribe(max)`), if any. */
  max: number | undefined;
  /** Hand it one message. */
  dispatch(msg: Msg<T>): void;
  /**
   * End it (no further messages); with `err`, the iterator throws it, and with `tellCallback`
   * the callback is called once with it (as nats.js does when the server refuses a subscription).
   */
  end(err?: Error, tellCallback?: boolean): void;
}

const AsyncFunction = (async () => {}).constructor;

let open!: <T>(
  hooks: SubscriptionHooks,
  sid: number,
  subject: string,
  opts: SubscribeOptions<T>,
) => SubscriptionHandle<T>;

/**
 * A live subscription. Iterate it with `for await`, or pass `callback` when subscribing.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const sub = bus.subscribe<string>("greetings.>");
 * for await (const msg of sub) {
 *   console.log(msg.subject, msg.data);
 *   if (sub.received === 10) break; // leaving the loop unsubscribes
 * }
 * ```
 */
export class Subscription<T = unknown> implements AsyncIterable<Msg<T>> {
  /** Connection-local subscription id. */
  readonly sid: number;
  /** The subject pattern. */
  readonly subject: string;
  /** Resolves when the subscription has ended (unsubscribed, drained, max reached, or closed). */
  readonly closed: Promise<void>;
  #received = 0;
  #dropped = 0;
  #max: number | undefined;
  #queueGroup: string | undefined;
  #queue: QueuedIterator<Msg<T>>;
  #hooks: SubscriptionHooks;
  #callback?: (err: Error | null, msg: Msg<T>) => unknown;
  #closedResolve!: () => void;

  private constructor(
    hooks: SubscriptionHooks,
    sid: number,
    subject: string,
    opts: SubscribeOptions<T>,
  ) {
    this.#hooks = hooks;
    this.sid = sid;
    this.subject = subject;
    this.#max = opts.max;
    this.#queueGroup = opts.queue;
    this.#callback = opts.callback;
    this.#queue = new QueuedIterator(opts.maxPending ?? DEFAULT_MAX_PENDING);
    this.closed = new Promise((r) => this.#closedResolve = r);
  }

  static {
    open = <T>(
      hooks: SubscriptionHooks,
      sid: number,
      subject: string,
      opts: SubscribeOptions<T>,
    ) => {
      const sub = new Subscription<T>(hooks, sid, subject, opts);
      return {
        sub,
        opts,
        hasCallback: opts.callback !== undefined,
        asyncCallback: opts.callback instanceof AsyncFunction,
        get max() {
          return sub.#max;
        },
        set max(n: number | undefined) {
          sub.#max = n;
        },
        dispatch: (msg: Msg<T>) => sub.#dispatch(msg),
        end: (err?: Error, tellCallback?: boolean) => sub.#end(err, tellCallback),
      };
    };
  }

  /** Queue group, if any. */
  get queue(): string | undefined {
    return this.#queueGroup;
  }

  /** Messages handed to the application. */
  get received(): number {
    return this.#received;
  }

  /** Messages dropped because the iterator did not keep up (see `maxPending`). */
  get dropped(): number {
    return this.#dropped;
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
    this.#hooks.unsubscribe(this.sid, max);
  }

  /** Stop receiving new messages, let queued ones be consumed, then end. */
  drain(): Promise<void> {
    return this.#hooks.drain(this.sid);
  }

  #dispatch(msg: Msg<T>): void {
    const callback = this.#callback;
    if (callback) {
      this.#received++;
      let result: unknown;
      try {
        result = callback(null, msg);
      } catch (err) {
        // A payload that could not be decoded was already reported (an `error` event).
        if (err !== msg.decodeError) this.#hooks.callbackFailed(this as Subscription<unknown>, err);
      }
      if (isThenable(result)) {
        keepMsg(msg as Msg<unknown>); // readable until the promise settles
        result.then(
          () => expireMsg(msg as Msg<unknown>),
          (err) => {
            expireMsg(msg as Msg<unknown>);
            if (err !== msg.decodeError) {
              this.#hooks.callbackFailed(this as Subscription<unknown>, err);
            }
          },
        );
      } else expireMsg(msg as Msg<unknown>);
    } else if (this.#queue.push(msg)) {
      this.#received++;
    } else if (!this.#queue.done) {
      this.#dropped++;
      this.#hooks.slowConsumer(this as Subscription<unknown>);
    }
    if (this.#max && this.#received >= this.#max) this.#end();
  }

  #end(err?: Error, tellCallback = false): void {
    if (this.#queue.done) return;
    if (err) this.#queue.fail(err);
    else this.#queue.end();
    this.#closedResolve();
    if (err && tellCallback && this.#callback) {
      try {
        // No message comes with an error (nats.js passes an empty one the same way).
        this.#callback(err, undefined as unknown as Msg<T>);
      } catch (e) {
        this.#hooks.callbackFailed(this as Subscription<unknown>, e);
      }
    }
  }

  /**
   * The messages, for `for await`. Leaving the loop early (`break`, `return`, a throw) ends
   * the subscription. Throws for a subscription made with a callback.
   */
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

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return v !== null && (typeof v === "object" || typeof v === "function") &&
    typeof (v as { then?: unknown }).then === "function";
}

/**
 * Make a subscription for a connection, which keeps the returned handle (to deliver to it and
 * end it) and gives the application `handle.sub`.
 *
 * @example
 * ```ts
 * import { openSubscription, type SubscriptionHooks } from "./subscription.ts";
 * import type { Msg } from "./msg.ts";
 * declare const hooks: SubscriptionHooks; // the connection's (see subscriptions.ts)
 * declare const msg: Msg<number>; // a MSG the connection received for sid 1
 * const handle = openSubscription<number>(hooks, 1, "sensors.>", {});
 * handle.dispatch(msg); // queued for `for await (const m of handle.sub)`
 * handle.end(); // the iterator ends after the queued messages
 * ```
 */
export function openSubscription<T>(
  hooks: SubscriptionHooks,
  sid: number,
  subject: string,
  opts: SubscribeOptions<T>,
): SubscriptionHandle<T> {
  return open<T>(hooks, sid, subject, opts);
}

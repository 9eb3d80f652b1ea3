/**
 * PINGs and their PONGs: the waiters of `flush()`, `rtt()` and the keep-alive, answered in
 * order (the broker answers PINGs in the order it reads them), and the keep-alive timer that
 * finds a dead session: after {@link MAX_PINGS_OUT} unanswered PINGs the connection hangs up
 * and reconnects.
 *
 * @example
 * ```ts
 * import { MAX_PINGS_OUT, Pings } from "./keepalive.ts";
 * const pings = new Pings();
 * pings.startKeepalive(10_000, {
 *   active: () => true, // a session is established
 *   ping: (w) => pings.sent(w), // the connection also writes the PING frame
 *   dead: () => console.warn(`no PONG to ${MAX_PINGS_OUT} PINGs: hang up and reconnect`),
 * });
 * pings.sent({ resolve: () => console.log("PONG"), reject: console.error, portMark: 0, ringMark: 0 });
 * pings.answered()?.resolve(); // when the PONG arrives
 * pings.stopKeepalive(); // the session ended
 * ```
 * @module
 */

/** Unanswered keep-alive PINGs after which the session is considered dead. */
export const MAX_PINGS_OUT = 3;

/** A PING waiting for its PONG, with what that PONG will confirm (see DeliveryLedger). */
export interface PongWaiter {
  resolve(): void;
  reject(err: Error): void;
  /** PUBs sent on the port before the PING. */
  portMark: number;
  /** PUBs accepted by the ring sender before the PING. */
  ringMark: number;
}

/** What the keep-alive does on each tick. */
export interface KeepaliveHooks {
  /** A session is established (otherwise the tick does nothing). */
  active(): boolean;
  /** Send a PING for `waiter`. */
  ping(waiter: PongWaiter): void;
  /** No PONG to {@link MAX_PINGS_OUT} PINGs: hang up. */
  dead(): void;
}

/** The PINGs of one connection; see the module doc. */
export class Pings {
  #waiting: PongWaiter[] = [];
  #out = 0;
  #timer?: ReturnType<typeof setInterval>;

  /** A PING was sent for `waiter`. */
  sent(waiter: PongWaiter): void {
    this.#waiting.push(waiter);
  }

  /** A PONG arrived: the waiter it answers, if any. */
  answered(): PongWaiter | undefined {
    return this.#waiting.shift();
  }

  /** The session ended or the connection closed: fail every waiter with `err`. */
  rejectAll(err: Error): void {
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  /** (Re)start the keep-alive of a new session: a PING every `interval` ms. */
  startKeepalive(interval: number, hooks: KeepaliveHooks): void {
    this.stopKeepalive();
    this.#out = 0;
    this.#timer = setInterval(() => {
      if (!hooks.active()) return;
      if (this.#out >= MAX_PINGS_OUT) return hooks.dead();
      this.#out++;
      hooks.ping({ resolve: () => this.#out = 0, reject: () => {}, portMark: 0, ringMark: 0 });
    }, interval);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /** Stop the keep-alive timer. */
  stopKeepalive(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

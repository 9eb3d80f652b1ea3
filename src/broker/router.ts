/**
 * Routing: which subscriptions get a published message. Plain subscriptions all get it; among
 * subscriptions sharing a queue group, one member gets it. The payload is passed on as bytes,
 * never decoded.
 *
 * @example
 * ```ts
 * import { Router } from "./router.ts";
 * const router = new Router();
 * router.add({ subject: "a.*", queue: null, sid: 1, max: 0, delivered: 0, target: {
 *   deliver: (sub, subject) => console.log("got", subject),
 * } });
 * router.publish("a.b", null, null, new Uint8Array(0)); // got a.b
 * ```
 * @module
 */
import { Sublist } from "../subject/sublist.ts";
import type { Headers } from "../protocol/ops.ts";

/** Whoever receives deliveries for a subscription: a session, or a service inside the broker. */
export interface DeliveryTarget {
  /** Deliver one message; returns false when it had to be dropped (slow consumer). */
  deliver(
    sub: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    /** The payload is a view into a guest's ring, valid only during this call. */
    volatile?: boolean,
    /** The publisher's PUB head after its array marker, for splicing the MSG head. */
    pubTail?: Uint8Array,
  ): boolean | void;
  /**
   * {@link deliver} for a message with a spliced head (`pubTail`, no headers) whose payload is
   * `length` bytes of `source` from `start`, so that no view is made of it when it can be
   * copied straight into the receiver's ring. Optional: without it, callers make the view.
   */
  deliverRange?(
    sub: RouteEntry,
    subject: string,
    reply: string | null,
    pubTail: Uint8Array,
    source: Uint8Array,
    start: number,
    length: number,
    volatile: boolean,
  ): boolean | void;
  /**
   * A delivery threw: the fault is the receiver's (e.g. its ring), never the publisher's.
   * The router calls this instead of letting the error reach the publishing session.
   */
  fail?(err: unknown): void;
}

/** One subscription as the router knows it. */
export interface RouteEntry {
  sid: number;
  subject: string;
  queue: string | null;
  /** Remove after this many deliveries in total; 0 = never. */
  max: number;
  /** Slow-consumer policy: block publishers instead of dropping (default false). */
  block?: boolean;
  delivered: number;
  target: DeliveryTarget;
}

/** Routes published messages to subscriptions. */
export class Router {
  #subs = new Sublist<RouteEntry>();
  // Round-robin position per queue group name, so members share the load evenly.
  #queueTurn = new Map<string, number>();

  #lastCost = 0;
  #generation = 0;
  // Who took a list from forwardTargets since the last change: their `targets` are dropped
  // at the next one, so a publisher's cache never keeps a closed session's subscriptions (and
  // the session) alive. The lists themselves are never changed: a publish may be walking one.
  #handedOut: TargetHolder[] = [];

  /**
   * Changes with every {@link add} and {@link remove}: a list of targets taken from
   * {@link forwardTargets} holds while this is unchanged.
   */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Work the last {@link publish} cost beyond its deliveries: index nodes walked to match its
   * subject (none when the match came from the cache) plus the matched subscriptions it went
   * through (thousands of queue-group members cost that much even if one gets the message),
   * for a caller that bounds work per turn.
   */
  get lastMatchCost(): number {
    return this.#lastCost;
  }

  /** Number of subscriptions. */
  get size(): number {
    return this.#subs.size;
  }

  /** Add a subscription. */
  add(entry: RouteEntry): void {
    this.#changed();
    this.#subs.insert(entry.subject, entry);
  }

  /** Remove a subscription; returns whether it was present. */
  remove(entry: RouteEntry): boolean {
    this.#changed();
    return this.#subs.remove(entry.subject, entry);
  }

  /**
   * Give a subscription a max (UNSUB with a count): removed after `max` deliveries in all.
   * Through the router, not by setting `entry.max`, so that lists taken from
   * {@link forwardTargets} (which leave out subscriptions with a max) are taken again.
   */
  limit(entry: RouteEntry, max: number): void {
    this.#changed();
    entry.max = max;
  }

  #changed() {
    this.#generation++;
    // Bounded by the publishes since the last change (one list per cached route at most).
    for (const holder of this.#handedOut) holder.targets = null;
    this.#handedOut.length = 0;
  }

  /**
   * The subscriptions a message on `subject` goes to, as a list the caller may keep and walk
   * itself while {@link generation} is unchanged (a publisher's route cache: no match, filter
   * or queue-group pass per message). Only for the simple case: null when a match has a queue
   * group or a max (their deliveries depend on each message) or more than
   * {@link FORWARD_TARGETS_MAX} subscriptions; the caller then uses {@link publish}.
   * Subscriptions of `exclude` are left out, as {@link publish} does. The list is also set as
   * `holder.targets`, which the router sets to null at its next change.
   */
  forwardTargets(
    subject: string,
    holder: TargetHolder,
    exclude?: DeliveryTarget,
  ): RouteEntry[] | null {
    const all = this.#subs.match(subject);
    try {
      if (all.length > FORWARD_TARGETS_MAX) return null;
      const out: RouteEntry[] = [];
      for (const e of all) {
        if (e.queue !== null || e.max > 0) return null;
        if (e.target !== exclude) out.push(e);
      }
      holder.targets = out;
      this.#handedOut.push(holder);
      return out;
    } finally {
      this.#subs.release(all);
    }
  }

  /** Does anything subscribe to `subject`? */
  hasInterest(subject: string): boolean {
    const matched = this.#subs.match(subject);
    this.#subs.release(matched);
    return matched.length > 0;
  }

  /**
   * Deliver a message to every matching plain subscription and one member of each matching
   * queue group. Returns how many subscriptions it was handed to. Subscriptions of `exclude`
   * (a publisher that asked for no echo) are passed over, as if they did not match.
   */
  publish(
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile = false,
    pubTail?: Uint8Array,
    exclude?: DeliveryTarget,
  ): number {
    const all = this.#subs.match(subject);
    // The matched list is walked about twice (a check for auto-unsubscribes, then deliveries).
    this.#lastCost = this.#subs.lastMatchCost + 2 * all.length;
    try {
      const matched = exclude && all.length > 0 ? all.filter((e) => e.target !== exclude) : all;
      return this.#publish(matched, subject, reply, headers, payload, volatile, pubTail);
    } finally {
      this.#subs.release(all);
    }
  }

  #publish(
    matched: readonly RouteEntry[],
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile: boolean,
    pubTail: Uint8Array | undefined,
  ): number {
    if (matched.length === 0) return 0;
    let delivered = 0;
    // Queue group -> members matched (first pass), then the index of the one to deliver to.
    let groups: Map<string, number> | undefined;
    // Iterate a copy only if a delivery may remove entries (auto-unsubscribe at max).
    const list = anyLimited(matched) ? matched.slice() : matched;
    for (const entry of list) {
      if (entry.queue === null) {
        this.#deliver(entry, subject, reply, headers, payload, volatile, pubTail);
        delivered++;
      } else {
        groups ??= new Map();
        groups.set(entry.queue, (groups.get(entry.queue) ?? 0) + 1);
      }
    }
    if (groups) {
      // One member per group, round robin; no per-publish member lists (a group may have
      // thousands of members, and this runs for every message).
      for (const [queue, members] of groups) {
        const turn = this.#queueTurn.get(queue) ?? 0;
        if (this.#queueTurn.size >= QUEUE_TURNS_KEPT) this.#queueTurn.clear(); // bound memory
        this.#queueTurn.set(queue, turn + 1);
        groups.set(queue, turn % members);
      }
      for (const entry of list) {
        if (entry.queue === null) continue;
        const skip = groups.get(entry.queue)!;
        groups.set(entry.queue, skip - 1);
        if (skip !== 0) continue;
        this.#deliver(entry, subject, reply, headers, payload, volatile, pubTail);
        delivered++;
      }
    }
    return delivered;
  }

  /**
   * Deliver to `target`'s own subscriptions matching `subject` only, e.g. a status the broker
   * sends a requester on its reply subject: whatever the broker says on a session's behalf goes
   * to that session, never to whoever else subscribed to the subject it named.
   */
  deliverTo(
    target: DeliveryTarget,
    subject: string,
    headers: Headers | null,
    payload: Uint8Array,
  ): number {
    let delivered = 0;
    const matched = this.#subs.match(subject);
    const list = matched.filter((e) => e.target === target);
    this.#subs.release(matched);
    for (const entry of list) {
      this.#deliver(entry, subject, null, headers, payload, false, undefined);
      delivered++;
    }
    return delivered;
  }

  #deliver(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile: boolean,
    pubTail: Uint8Array | undefined,
  ) {
    entry.delivered++;
    if (entry.max > 0 && entry.delivered >= entry.max) this.remove(entry);
    try {
      entry.target.deliver(entry, subject, reply, headers, payload, volatile, pubTail);
    } catch (err) {
      if (!entry.target.fail) throw err;
      entry.target.fail(err);
    }
  }
}

/** Whoever keeps a list from {@link Router.forwardTargets} (e.g. a publisher's cached route). */
export interface TargetHolder {
  targets: RouteEntry[] | null;
}

/** Most subscriptions a list from {@link Router.forwardTargets} may hold. */
export const FORWARD_TARGETS_MAX = 64;

/** Queue group names whose round-robin position is remembered (then they start afresh). */
const QUEUE_TURNS_KEPT = 4096;

/** Does any entry auto-unsubscribe at a max? (A loop: no closure per publish.) */
function anyLimited(entries: readonly RouteEntry[]): boolean {
  for (let i = 0; i < entries.length; i++) if (entries[i].max > 0) return true;
  return false;
}

/**
 * One session's subscriptions: the SUB and UNSUB frames it sent, checked against the limits
 * and its permissions, and kept in step with the broker's router. Every way a subscription
 * ends goes through here (UNSUB, auto-unsubscribe at a max, a permission change, the end of
 * the session), so the session's counts (`limits.maxSubscriptions`,
 * `limits.maxSubscriptionTokens`, `stats.subscriptions`) never drift from the router's.
 *
 * @example
 * ```ts
 * // Made by each Session (see session.ts); per SUB / UNSUB frame:
 * // subscriptions.subscribe(decodeSubHead(frame.head), guard, mayBlock);
 * // subscriptions.unsubscribe(...decodeUnsubHead(frame.head));
 * ```
 * @module
 */
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import type { SubHead } from "../protocol/ops.ts";
import type { Limits } from "../protocol/limits.ts";
import { countTokens, validatePattern, validateSubject } from "../subject/subject.ts";
import type { PermissionGuard } from "./permissions.ts";
import { SYSTEM_PREFIX } from "./publish_path.ts";
import type { DeliveryTarget, RouteEntry, Router } from "./router.ts";
import type { EndpointStats } from "./stats.ts";

/** What a {@link SessionSubscriptions} needs from its session. */
export interface SessionSubscriptionsOptions {
  /** The session: what the router delivers to. */
  target: DeliveryTarget;
  /** The broker's limits object (a reload changes it in place). */
  limits: Limits;
  router: Router;
  stats: EndpointStats;
}

/** A session's subscriptions; see the module doc. */
export class SessionSubscriptions {
  #o: SessionSubscriptionsOptions;
  #subs = new Map<number, RouteEntry>();
  #tokens = 0; // subject tokens of all live subscriptions (limits.maxSubscriptionTokens)

  constructor(opts: SessionSubscriptionsOptions) {
    this.#o = opts;
  }

  /** Live subscriptions. */
  get size(): number {
    return this.#subs.size;
  }

  /** The live subscriptions (for stats). */
  entries(): IterableIterator<RouteEntry> {
    return this.#subs.values();
  }

  /**
   * Add the subscription a SUB asks for, or throw the VbusError that says why not (invalid
   * subject or queue group, sid in use, a limit, a permission). `mayBlock`: the session may
   * subscribe with the "block" policy.
   */
  subscribe(head: SubHead, guard: PermissionGuard, mayBlock: boolean): void {
    const [sid, subject, queue, slow] = head;
    const { limits, stats } = this.#o;
    const problem = validatePattern(subject, limits.maxSubjectBytes, limits.maxSubjectTokens);
    if (problem) throw new VbusError(ErrorCode.BadSubject, `invalid subject: ${problem}`, subject);
    if (queue !== null) {
      const qProblem = validateSubject(queue, limits.maxSubjectBytes);
      if (qProblem) {
        throw new VbusError(ErrorCode.BadSubject, `invalid queue group: ${qProblem}`, subject);
      }
    }
    if (this.#subs.has(sid)) {
      throw new VbusError(ErrorCode.BadState, `subscription id ${sid} is already in use`, subject);
    }
    if (this.#subs.size >= limits.maxSubscriptions) {
      throw new VbusError(
        ErrorCode.TooManySubscriptions,
        `at most ${limits.maxSubscriptions} subscriptions per session (limits.maxSubscriptions)`,
        subject,
      );
    }
    const tokens = countTokens(subject);
    if (this.#tokens + tokens > limits.maxSubscriptionTokens) {
      throw new VbusError(
        ErrorCode.TooManySubscriptions,
        `subscriptions of one session may have ${limits.maxSubscriptionTokens} subject tokens in all (limits.maxSubscriptionTokens)`,
        subject,
      );
    }
    if (subject.startsWith(SYSTEM_PREFIX) || !guard.canSubscribe(subject)) {
      stats.denied++;
      throw new VbusError(
        ErrorCode.PermissionDenied,
        `subscribe to "${subject}" is not permitted`,
        subject,
      );
    }
    if (slow === "block" && !mayBlock) {
      stats.denied++;
      throw new VbusError(
        ErrorCode.PermissionDenied,
        `subscribing with slow: "block" is not permitted (it holds publishers; see permissions.block)`,
        subject,
      );
    }
    const entry: RouteEntry = {
      sid,
      subject,
      queue,
      max: 0,
      delivered: 0,
      target: this.#o.target,
      block: slow === "block",
    };
    this.#subs.set(sid, entry);
    this.#tokens += tokens;
    this.#o.router.add(entry);
    stats.subscriptions++;
  }

  /** UNSUB: end `sid` now, or once it has had `max` deliveries in all. Unknown sids are fine. */
  unsubscribe(sid: number, max: number): void {
    const entry = this.#subs.get(sid);
    if (!entry) return; // already gone (e.g. auto-unsubscribed): not an error
    if (max > 0 && entry.delivered < max) {
      this.#o.router.limit(entry, max);
      return;
    }
    this.#remove(entry);
  }

  /**
   * A delivery to `entry` is under way: at its max, the router has removed it, so forget it
   * here too.
   */
  delivering(entry: RouteEntry): void {
    if (entry.max > 0 && entry.delivered >= entry.max && this.#subs.delete(entry.sid)) {
      this.#forget(entry);
    }
  }

  /**
   * Permissions changed: keep what `guard` still allows (a "block" one becomes "drop" unless
   * `mayBlock`), remove the rest and return what was removed.
   */
  recheck(guard: PermissionGuard, mayBlock: boolean): RouteEntry[] {
    const removed: RouteEntry[] = [];
    for (const entry of [...this.#subs.values()]) {
      if (guard.canSubscribe(entry.subject)) {
        if (entry.block && !mayBlock) entry.block = false;
        continue;
      }
      this.#remove(entry);
      removed.push(entry);
    }
    return removed;
  }

  /** End them all (the session ended or said HELLO again). */
  clear(): void {
    for (const entry of this.#subs.values()) {
      if (this.#o.router.remove(entry)) this.#forget(entry);
    }
    this.#subs.clear();
    this.#tokens = 0;
  }

  #remove(entry: RouteEntry) {
    this.#subs.delete(entry.sid);
    if (this.#o.router.remove(entry)) this.#forget(entry);
  }

  /** Account for a subscription that left the router. */
  #forget(entry: RouteEntry) {
    this.#o.stats.subscriptions--;
    this.#tokens -= countTokens(entry.subject);
  }
}

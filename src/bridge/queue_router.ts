/**
 * The router of a broker with a bridge. For local traffic it routes exactly like
 * {@link Router}: every plain subscription gets a message, one member of each matching queue
 * group gets it. What it adds is what a bridge needs to keep queue groups one-member-wide
 * across hosts, without changing the router itself:
 *
 * - {@link QueueAwareRouter.publishPlain}: deliver to plain subscriptions only (a message
 *   from NATS: queue groups get their copy through NATS queue subscriptions, not this way);
 * - {@link QueueAwareRouter.publishToGroup}: deliver to one member of one named group (the
 *   copy NATS picked this host for);
 * - {@link QueueAwareRouter.queueGroupsFor}: the groups with a local member for a subject
 *   (they served a local publish, so no remote member must get it too);
 * - queue interest events: a (pattern, group) pair appears or disappears, so the bridge
 *   subscribes to NATS with that queue group while a local member exists.
 *
 * Plain subscriptions live in the base router; queue members live in a second router (all
 * groups, for local publishes) and in one router per group (for {@link publishToGroup}). A
 * member removed by any of them (e.g. auto-unsubscribe at its max) leaves all of them.
 *
 * @example
 * ```ts
 * import { QueueAwareRouter } from "./queue_router.ts";
 * const router = new QueueAwareRouter();
 * router.onQueueInterest({
 *   added: (i) => console.log("NATS queue sub", i.pattern, i.queue),
 *   removed: (i) => console.log("NATS queue unsub", i.pattern, i.queue),
 * });
 * router.add({ sid: 1, subject: "jobs.*", queue: "workers", max: 0, delivered: 0, target: {
 *   deliver: (_sub, subject) => console.log("work", subject),
 * } });
 * router.queueGroupsFor("jobs.a"); // ["workers"]
 * router.publishToGroup("workers", "jobs.a", null, null, new Uint8Array(0)); // work jobs.a
 * ```
 * @module
 */
import { type DeliveryTarget, type RouteEntry, Router } from "../broker/router.ts";
import type { Headers } from "../protocol/ops.ts";
import { Sublist } from "../subject/sublist.ts";

/** Local members of one queue group on one subject pattern. */
export interface QueueInterest {
  readonly pattern: string;
  readonly queue: string;
  /** Local subscriptions behind it. */
  members: number;
}

/** Told when a (pattern, queue group) pair gets its first local member or loses its last. */
export interface QueueInterestListener {
  added(interest: QueueInterest): void;
  removed(interest: QueueInterest): void;
}

/** A router whose removals (e.g. at a subscription's max) are reported to its owner. */
class MemberRouter extends Router {
  #onRemoved: (entry: RouteEntry) => void;

  constructor(onRemoved: (entry: RouteEntry) => void) {
    super();
    this.#onRemoved = onRemoved;
  }

  override remove(entry: RouteEntry): boolean {
    const removed = super.remove(entry);
    if (removed) this.#onRemoved(entry);
    return removed;
  }

  /** Remove without telling the owner (the owner is removing it). */
  removeQuietly(entry: RouteEntry): boolean {
    return super.remove(entry);
  }
}

/** See the module doc. */
export class QueueAwareRouter extends Router {
  #members = new Set<RouteEntry>();
  #queues = new MemberRouter((e) => this.#forget(e));
  #groups = new Map<string, MemberRouter>();
  #interests = new Map<string, QueueInterest>();
  #interestIndex = new Sublist<QueueInterest>();
  #listeners = new Set<QueueInterestListener>();
  #cost = 0;

  override get lastMatchCost(): number {
    return this.#cost;
  }

  /** Always null: queue members live apart from the base router, so every publish matches. */
  override forwardTargets(): null {
    return null;
  }

  override get size(): number {
    return super.size + this.#members.size;
  }

  /** Queue-group members (the rest of {@link size} are plain subscriptions). */
  get queueMembers(): number {
    return this.#members.size;
  }

  /** Every (pattern, group) pair with a local member now. */
  get queueInterests(): readonly QueueInterest[] {
    return [...this.#interests.values()];
  }

  /** Be told about queue interest from now on; returns a function that stops it. */
  onQueueInterest(listener: QueueInterestListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  override add(entry: RouteEntry): void {
    if (entry.queue === null) {
      super.add(entry);
      return;
    }
    if (this.#members.has(entry)) return;
    this.#members.add(entry);
    this.#queues.add(entry);
    let group = this.#groups.get(entry.queue);
    if (!group) this.#groups.set(entry.queue, group = new MemberRouter((e) => this.#forget(e)));
    group.add(entry);
    const key = interestKey(entry);
    let interest = this.#interests.get(key);
    if (interest) {
      interest.members++;
      return;
    }
    interest = { pattern: entry.subject, queue: entry.queue, members: 1 };
    this.#interests.set(key, interest);
    this.#interestIndex.insert(interest.pattern, interest);
    for (const l of this.#listeners) l.added(interest);
  }

  override remove(entry: RouteEntry): boolean {
    if (entry.queue === null) return super.remove(entry);
    return this.#forget(entry);
  }

  /** Take a queue member out of every index, once (whoever noticed first). */
  #forget(entry: RouteEntry): boolean {
    if (!this.#members.delete(entry)) return false;
    this.#queues.removeQuietly(entry);
    const group = this.#groups.get(entry.queue!);
    if (group) {
      group.removeQuietly(entry);
      if (group.size === 0) this.#groups.delete(entry.queue!);
    }
    const key = interestKey(entry);
    const interest = this.#interests.get(key)!;
    if (--interest.members === 0) {
      this.#interests.delete(key);
      this.#interestIndex.remove(interest.pattern, interest);
      for (const l of this.#listeners) l.removed(interest);
    }
    return true;
  }

  override hasInterest(subject: string): boolean {
    return super.hasInterest(subject) ||
      (this.#members.size > 0 && this.#queues.hasInterest(subject));
  }

  override publish(
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile = false,
    pubTail?: Uint8Array,
    exclude?: DeliveryTarget,
  ): number {
    let delivered = super.publish(subject, reply, headers, payload, volatile, pubTail, exclude);
    let cost = super.lastMatchCost;
    if (this.#members.size > 0) {
      delivered += this.#queues.publish(
        subject,
        reply,
        headers,
        payload,
        volatile,
        pubTail,
        exclude,
      );
      cost += this.#queues.lastMatchCost;
    }
    this.#cost = cost;
    return delivered;
  }

  /** Deliver to every matching plain subscription, and to no queue group. */
  publishPlain(
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
  ): number {
    const delivered = super.publish(subject, reply, headers, payload);
    this.#cost = super.lastMatchCost;
    return delivered;
  }

  /** Deliver to one member of `queue` whose subscription matches, if there is one. */
  publishToGroup(
    queue: string,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
  ): number {
    const group = this.#groups.get(queue);
    if (!group) return 0;
    const delivered = group.publish(subject, reply, headers, payload);
    this.#cost = group.lastMatchCost;
    return delivered;
  }

  /** The queue groups that have a local member subscribed to `subject`. */
  queueGroupsFor(subject: string): string[] {
    if (this.#members.size === 0) return [];
    const matched = this.#interestIndex.match(subject);
    const out: string[] = [];
    for (const interest of matched) {
      if (!out.includes(interest.queue)) out.push(interest.queue);
    }
    this.#interestIndex.release(matched);
    return out;
  }

  override deliverTo(
    target: RouteEntry["target"],
    subject: string,
    headers: Headers | null,
    payload: Uint8Array,
  ): number {
    let delivered = super.deliverTo(target, subject, headers, payload);
    if (this.#members.size > 0) {
      delivered += this.#queues.deliverTo(target, subject, headers, payload);
    }
    return delivered;
  }
}

function interestKey(entry: RouteEntry): string {
  return `${entry.queue}\u0000${entry.subject}`;
}

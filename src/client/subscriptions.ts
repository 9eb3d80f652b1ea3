/**
 * A connection's subscriptions: their ids, the SUB and UNSUB frames that tell the broker about
 * them (again after every reconnect), the request inbox (one wildcard subscription per
 * session serves every request), and the delivery of each received MSG to the subscription or
 * the request it is for.
 *
 * Where a payload lives: from the port stream it is a view of bytes read for this message
 * alone; from the shared-memory ring it is a view of a ring slot, reused once the message is
 * handled. A synchronous callback reads the slot in place; a message that outlives the
 * delivery (iterated subscriptions, request replies, `async function` callbacks) gets a copy
 * first. A callback that returns a promise gets its copy when it returns (see `msg.ts`).
 *
 * @example
 * ```ts
 * import { SubscriptionTable, type SubscriptionTableHooks } from "./subscriptions.ts";
 * import { RequestTable } from "./requests.ts";
 * import type { MsgContext } from "./msg.ts";
 * import type { Frame } from "../protocol/frame.ts";
 * import type { WelcomeHead } from "../protocol/ops.ts";
 * declare const hooks: SubscriptionTableHooks; // the connection's sending and status closures
 * declare const msgContext: MsgContext; // how its messages answer requests
 * declare const welcome: WelcomeHead; // a new session's WELCOME
 * declare const frame: Frame; // a MSG frame of that session, from the port
 * const subs = new SubscriptionTable(hooks, new RequestTable(), msgContext);
 * const sub = subs.subscribe<number>("sensors.>", {}, 256);
 * subs.resubscribe(welcome.inbox); // on every new session: 1
 * subs.deliver(frame, false); // each MSG frame: to `sub`, or to the request it answers
 * ```
 * @module
 */
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { HeadReader } from "../protocol/fast_heads.ts";
import type { Frame } from "../protocol/frame.ts";
import { decodeMsgHead } from "../protocol/heads.ts";
import { Op, STATUS_HEADER, STATUS_NO_RESPONDERS } from "../protocol/ops.ts";
import { validatePattern, validateSubject } from "../subject/subject.ts";
import { createMsg, type MsgContext } from "./msg.ts";
import type { SubscribeOptions } from "./options.ts";
import type { RequestTable } from "./requests.ts";
import type { StatusEvent } from "./status.ts";
import {
  openSubscription,
  type Subscription,
  type SubscriptionHandle,
  type SubscriptionHooks,
} from "./subscription.ts";

/** What the table needs from its connection. */
export interface SubscriptionTableHooks {
  /** Send SUB or UNSUB, in order with publishes (see Bus). */
  control(op: number, head: Uint8Array): void;
  /** A session is established (frames can be sent). */
  connected(): boolean;
  /** Resolves when the broker has handled everything sent before (a PING/PONG). */
  flush(): Promise<void>;
  /** Report a status event. */
  emit(e: StatusEvent): void;
  /** A subscription callback threw, or its promise rejected. */
  callbackFailed(subject: string, err: unknown): void;
}

/** The subscriptions of one connection; see the module doc. */
export class SubscriptionTable {
  #subs = new Map<number, SubscriptionHandle<unknown>>();
  #nextSid = 1;
  #inboxSid = 0;
  #inbox = "";
  #heads = new HeadReader();
  #hooks: SubscriptionTableHooks;
  #requests: RequestTable;
  #msgContext: MsgContext;
  #subHooks: SubscriptionHooks;

  constructor(hooks: SubscriptionTableHooks, requests: RequestTable, msgContext: MsgContext) {
    this.#hooks = hooks;
    this.#requests = requests;
    this.#msgContext = msgContext;
    this.#subHooks = {
      unsubscribe: (sid, max) => this.#unsubscribe(sid, max),
      drain: (sid) => this.#drain(sid),
      slowConsumer: (sub) => this.#slowConsumer(sub),
      callbackFailed: (sub, err) => hooks.callbackFailed(sub.subject, err),
    };
  }

  /** The current session's inbox prefix (replies go to `<inbox>.<token>`). */
  get inbox(): string {
    return this.#inbox;
  }

  /** Subscriptions (the inbox not counted). */
  get size(): number {
    return this.#subs.size;
  }

  /** A new subscription (sent at once when connected, else with the next session). */
  subscribe<T>(
    subject: string,
    opts: SubscribeOptions<T>,
    maxSubjectBytes: number,
  ): Subscription<T> {
    const problem = validatePattern(subject, maxSubjectBytes);
    if (problem) {
      throw new VbusError(
        ErrorCode.BadSubject,
        `invalid subject "${subject}": ${problem}`,
        subject,
      );
    }
    if (opts.queue !== undefined) {
      const q = validateSubject(opts.queue, maxSubjectBytes);
      if (q) {
        throw new VbusError(
          ErrorCode.BadSubject,
          `invalid queue group "${opts.queue}": ${q}`,
          subject,
        );
      }
    }
    if (opts.max !== undefined && (!Number.isInteger(opts.max) || opts.max <= 0)) {
      throw new RangeError("max must be a positive integer");
    }
    const handle = openSubscription<T>(this.#subHooks, this.#nextSid++, subject, opts);
    this.#subs.set(handle.sub.sid, handle as SubscriptionHandle<unknown>);
    if (this.#hooks.connected()) this.#sendSub(handle as SubscriptionHandle<unknown>);
    return handle.sub;
  }

  /** Make sure the request inbox is subscribed (done once, on the first request). */
  ensureInbox(): void {
    if (this.#inboxSid) return;
    this.#inboxSid = this.#nextSid++;
    if (this.#hooks.connected()) this.#sendInboxSub();
  }

  /**
   * A session was established with `inbox`: send every subscription (and the inbox) before
   * anything else, so replies to buffered requests have somewhere to land. Returns how many.
   */
  resubscribe(inbox: string): number {
    this.#inbox = inbox;
    let resubscribed = 0;
    for (const handle of this.#subs.values()) {
      this.#sendSub(handle);
      resubscribed++;
    }
    if (this.#inboxSid) this.#sendInboxSub();
    return resubscribed;
  }

  /** Send UNSUB for every subscription (a drain; their in-flight messages still arrive). */
  unsubscribeAll(): void {
    for (const sid of this.#subs.keys()) this.#hooks.control(Op.Unsub, encodeValue([sid, 0]));
  }

  /** End every subscription (with `err`, their iterators throw it) and forget them. */
  endAll(err?: Error): void {
    for (const handle of this.#subs.values()) handle.end(err);
    this.#subs.clear();
  }

  /** The broker refused subscriptions to `subject`: end them with `err`. */
  refused(subject: string, err: Error): void {
    for (const [sid, handle] of this.#subs) {
      if (handle.sub.subject === subject) {
        this.#subs.delete(sid);
        handle.end(err, true);
      }
    }
  }

  /** Deliver a MSG frame (`inRing`: its payload is a view of a ring slot). */
  deliver(frame: Frame, inRing: boolean): void {
    const [sid, subject, reply, headers] =
      this.#heads.msg(frame.buf, frame.headStart, frame.headEnd) ??
        decodeMsgHead(frame.buf, frame.headStart, frame.headEnd);
    if (sid === this.#inboxSid) {
      // The reply is read after the slot is reused.
      const payload = inRing
        ? this.#msgContext.copy(frame.buf, frame.payloadStart, frame.payloadEnd)
        : frame.payload;
      const token = subject.slice(subject.lastIndexOf(".") + 1);
      if (headers?.[STATUS_HEADER] === STATUS_NO_RESPONDERS) {
        const to = this.#requests.subjectOf(token);
        this.#requests.settle(
          token,
          new VbusError(ErrorCode.NoResponders, `no responders for "${to ?? subject}"`, to),
        );
        return;
      }
      const msg = createMsg(
        this.#msgContext,
        sid,
        subject,
        reply ?? undefined,
        headers ?? undefined,
        payload,
        false,
      );
      this.#requests.settle(token, msg);
      return;
    }
    const handle = this.#subs.get(sid);
    if (!handle) return; // unsubscribed while in flight
    // From the ring, only a synchronous callback reads the slot in place, and no view of
    // the slot is made unless the callback asks for `raw`.
    const lent = inRing && handle.hasCallback && !handle.asyncCallback;
    const msg = lent
      ? createMsg(
        this.#msgContext,
        sid,
        subject,
        reply ?? undefined,
        headers ?? undefined,
        frame.buf,
        true,
        frame.payloadStart,
        frame.payloadEnd,
      )
      : createMsg(
        this.#msgContext,
        sid,
        subject,
        reply ?? undefined,
        headers ?? undefined,
        inRing
          ? this.#msgContext.copy(frame.buf, frame.payloadStart, frame.payloadEnd)
          : frame.payload,
        false,
      );
    handle.dispatch(msg);
    if (handle.sub.isClosed) this.#subs.delete(sid);
  }

  #sendSub(handle: SubscriptionHandle<unknown>) {
    const { sub, opts } = handle;
    const head = opts.slow === "block"
      ? [sub.sid, sub.subject, sub.queue ?? null, "block"]
      : [sub.sid, sub.subject, sub.queue ?? null];
    this.#hooks.control(Op.Sub, encodeValue(head));
    if (handle.max) {
      const remaining = handle.max - sub.received;
      this.#hooks.control(Op.Unsub, encodeValue([sub.sid, Math.max(1, remaining)]));
    }
  }

  #sendInboxSub() {
    this.#hooks.control(Op.Sub, encodeValue([this.#inboxSid, `${this.#inbox}.*`, null]));
  }

  #unsubscribe(sid: number, max?: number) {
    const handle = this.#subs.get(sid);
    if (!handle) return;
    if (max !== undefined && max > handle.sub.received) {
      handle.max = max;
      if (this.#hooks.connected()) this.#hooks.control(Op.Unsub, encodeValue([sid, max]));
      return;
    }
    this.#subs.delete(sid);
    if (this.#hooks.connected()) this.#hooks.control(Op.Unsub, encodeValue([sid, 0]));
    handle.end();
  }

  async #drain(sid: number) {
    const handle = this.#subs.get(sid);
    if (!handle) return;
    if (this.#hooks.connected()) {
      this.#hooks.control(Op.Unsub, encodeValue([sid, 0]));
      // Every MSG the broker sent before it saw the UNSUB arrives before this PONG.
      await this.#hooks.flush().catch(() => {});
    }
    this.#subs.delete(sid);
    handle.end();
  }

  #slowConsumer(sub: Subscription<unknown>) {
    // Report the first drop and then every 1000th, so a stuck iterator does not flood events.
    if (sub.dropped === 1 || sub.dropped % 1000 === 0) {
      this.#hooks.emit({
        type: "slowConsumer",
        where: "client",
        dropped: sub.dropped,
        subject: sub.subject,
      });
    }
  }
}

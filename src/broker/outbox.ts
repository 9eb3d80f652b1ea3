/**
 * The data plane towards one peer: every MSG the router hands a session goes through its
 * outbox, into the peer's inbound ring (shared memory) or onto its port. The outbox owns what a
 * peer that falls behind costs the broker, and bounds it:
 *
 * - a full ring's backlog is a {@link FrameQueue} whose memory is what it counts; beyond
 *   `maxPendingBytes` (for a port: bytes queued on the socket) the oldest is dropped; a
 *   delivery first writes whatever of it fits now, so a ring that was full once does not keep
 *   every later message in the backlog (a second copy each) while the stream goes on;
 * - a "block" subscription holds the publishing session instead of dropping, but never itself
 *   (a session publishing to its own block subscription), never past twice the bound, and never
 *   longer than `maxBlockMs`: then it is a slow consumer like any other;
 * - drops are counted by reason and reported to the peer once a second (ERR frames that do not
 *   count against it: the drops are the broker's decision);
 * - a reply grant (request/reply under restrictions) is given only for a message really handed
 *   to the peer, not for one that was dropped.
 *
 * @example
 * ```ts
 * // Made by a Session for its port; the router reaches it through Session.deliver:
 * // const outbox = new Outbox({ owner: session, port, writer, limits, stats, log, ... });
 * // outbox.deliver(entry, "a.b", null, null, payload);
 * ```
 * @module
 */
import type { Port } from "../port/port.ts";
import { FrameHeader } from "../protocol/frame.ts";
import type { FrameWriter } from "../protocol/frame_writer.ts";
import { encodeValue, msgHeadMaxLength } from "../protocol/codec.ts";
import { decodeMsgHead } from "../protocol/heads.ts";
import { ErrorCode } from "../protocol/errors.ts";
import { type Headers, Op } from "../protocol/ops.ts";
import type { Limits } from "../protocol/limits.ts";
import type { RingChannel } from "../shm/ring_channel.ts";
import { viewOf } from "../util/copy_range.ts";
import { FrameQueue, frameSize } from "../util/frame_queue.ts";
import { Fifo, float64Slots } from "../util/fifo.ts";
import { yieldToEventLoop } from "../util/event_loop.ts";
import type { Logger } from "../util/log.ts";
import type { RouteEntry } from "./router.ts";
import { countDrop, DropReason, type EndpointStats } from "./stats.ts";

/** Backlog frames written to a ring between two yields to the event loop. */
const FLUSH_BATCH = 1024;
/**
 * Backlog frames of one session that may keep their publishers' ring records (beyond, they
 * are counted as not retained): bounds what retention costs a subscriber that reads nothing.
 */
const MAX_RETAINED = 65_536;
/** Shortest time between two drop reports to one peer. */
const REPORT_INTERVAL_MS = 1000;

/** A session whose input can be held (the "block" policy). */
export interface Holdable {
  /** Stop reading this session's input until every holder released it. */
  holdFor(holder: object): void;
  /** `holder` no longer needs this session held. */
  releaseFor(holder: object): void;
  /** Tell the session something went wrong with what it sent, without counting it as its error. */
  notice(code: string, message: string, subject?: string): void;
  /**
   * Keep the ring record this session is publishing now in its ring until the copy of it
   * that waits in a backlog is written or dropped (see `retained_records.ts`): returns the
   * record's sequence number for {@link releaseRecord}, or -1 when the message did not come
   * from a ring. With `allowed` false (this backlog retains as much as it may) the record is
   * only counted as not retained.
   */
  retainRecord(allowed: boolean): number;
  /** A copy of a record {@link retainRecord} kept was written or dropped. */
  releaseRecord(sequence: number): void;
}

/** What an {@link Outbox} needs from its session. */
export interface OutboxOptions {
  /** The session this outbox belongs to (it is never held by itself). */
  owner: Holdable;
  port: Port;
  writer: FrameWriter;
  limits: Limits;
  stats: EndpointStats;
  log: Logger;
  /** The session being routed right now, if any: the one a "block" subscription holds. */
  publisher(): Holdable | undefined;
  /** Give the peer a one-time right to publish to `reply`, or undefined when unrestricted. */
  replyGrant(): ((reply: string) => void) | undefined;
  /** Session id for logs and messages. */
  id(): string;
  /** An unexpected failure while writing the backlog: the session must be closed. */
  onFault(err: unknown): void;
}

/** See the module doc. */
export class Outbox {
  #o: OutboxOptions;
  #ring?: RingChannel;
  #backlog = new FrameQueue();
  // The backlog frames that keep a publisher's ring record, oldest first: the frame's ordinal
  // (frames pushed before it), the publisher and the record's sequence number. Only those
  // frames have entries, and at most MAX_RETAINED: a flood costs no memory per message here.
  #pushedFrames = 0;
  #shiftedFrames = 0;
  #retainedAt = new Fifo<number>(float64Slots);
  #retainers = new Fifo<Holdable>();
  #retainedSeqs = new Fifo<number>(float64Slots);
  #flushing = false;
  #held = new Set<Holdable>(); // publishers this outbox holds
  #blockTimer?: ReturnType<typeof setTimeout>;
  #blockExpired = false;
  #awaitingDrain = false;
  #unreported = new Map<string, number>(); // ERR code -> drops not yet reported
  #reportedAt = 0;
  #reportTimer?: ReturnType<typeof setTimeout>;
  #closed = false;
  #releaseQueued = false;

  constructor(opts: OutboxOptions) {
    this.#o = opts;
  }

  /** Bytes of memory the ring backlog holds. */
  get backlogBytes(): number {
    return this.#backlog.memoryBytes;
  }

  /** Messages waiting in the ring backlog. */
  get backlogLength(): number {
    return this.#backlog.length;
  }

  /** Deliver through this ring from now on (a new session's fast path). */
  attach(ring: RingChannel): void {
    this.#ring = ring;
  }

  /**
   * The ring is gone (session reset): drop its backlog and let held publishers go. With
   * `release`, the publishers' ring records its copies kept are let go too (they are this
   * peer's loss, as any drop); without, they stay for the next broker (this one is stopping).
   */
  detach(release = true): void {
    this.#ring = undefined;
    this.#backlog.clear();
    while (this.#retainers.length > 0) {
      const publisher = this.#retainers.shift()!;
      const sequence = this.#retainedSeqs.shift()!;
      this.#retainedAt.shift();
      if (release) publisher.releaseRecord(sequence);
    }
    this.#shiftedFrames = this.#pushedFrames;
    this.#releasePublishers();
  }

  /** The session ended: release everything, send nothing more (`release`: see detach). */
  close(release = true): void {
    this.#closed = true;
    this.detach(release);
    if (this.#reportTimer) clearTimeout(this.#reportTimer);
    this.#reportTimer = undefined;
  }

  /**
   * Hand one MSG to the peer, or decide it must be dropped. `pubTail` is the publisher's PUB
   * head after its array marker (the MSG head is spliced from it); `volatile` means the payload
   * is a view into a guest's ring, valid only during this call. Returns false when dropped.
   */
  deliver(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile = false,
    pubTail?: Uint8Array,
  ): boolean {
    // A spliced head carries its headers: the payload is all that is left to place.
    if (pubTail) {
      return this.deliverRange(
        entry,
        subject,
        reply,
        pubTail,
        payload,
        0,
        payload.length,
        volatile,
      );
    }
    const ring = this.#ring;
    if (!ring) return this.#toPort(entry, subject, reply, headers, payload, volatile, undefined);
    if (this.#mayWriteNow(ring)) {
      const head = plainMsgHead(entry.sid, subject, reply, headers);
      if (ring.tryWriteFrame(Op.Msg, head, payload)) {
        this.#o.stats.ringMsgsOut++;
        this.#handedOver(payload.length, reply);
        return true;
      }
      if (ring.stopped) return false; // the peer broke its ring: its session is being reset
    }
    return this.#queue(ring, entry, subject, reply, headers, payload, undefined);
  }

  /**
   * {@link deliver} of a message with a spliced head whose payload is `length` bytes of
   * `source` from `start` (the publisher's frame): written into the peer's ring without
   * making a view of it when it fits now; a view is made only for the backlog or the port.
   */
  deliverRange(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    pubTail: Uint8Array,
    source: Uint8Array,
    start: number,
    length: number,
    volatile: boolean,
  ): boolean {
    const ring = this.#ring;
    if (!ring) {
      const payload = viewOf(source, start, length);
      return this.#toPort(entry, subject, reply, null, payload, volatile, pubTail);
    }
    if (this.#mayWriteNow(ring)) {
      if (ring.tryWriteMsg(entry.sid, pubTail, source, start, length)) {
        this.#o.stats.ringMsgsOut++;
        this.#handedOver(length, reply);
        return true;
      }
      if (ring.stopped) return false; // the peer broke its ring: its session is being reset
    }
    return this.#queue(ring, entry, subject, reply, null, viewOf(source, start, length), pubTail);
  }

  /**
   * May a message go straight into the ring now? Queued messages go first; whatever of them
   * fits is written before this one, so that one full moment does not send every later
   * message through the backlog (a second copy) for as long as the publisher keeps its pace.
   */
  #mayWriteNow(ring: RingChannel): boolean {
    return this.#backlog.length === 0 || this.#drainNow(ring);
  }

  /** The peer's ring has no room for this message now: into the backlog, or dropped. */
  #queue(
    ring: RingChannel,
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    pubTail: Uint8Array | undefined,
  ): boolean {
    // Spliced heads are written in place into the backlog: nothing allocated per message.
    const head = pubTail ? undefined : plainMsgHead(entry.sid, subject, reply, headers);
    const headLength = head ? head.length : msgHeadMaxLength(pubTail!);
    const size = FrameHeader.LENGTH + headLength + payload.length;
    if (size > ring.maxFrameOut) {
      this.#tooLarge(size, ring.maxFrameOut, subject);
      return false;
    }
    return this.#enqueue(entry, head, pubTail, payload);
  }

  /** A session without a ring: the message goes to the port writer (bounded, see deliver). */
  #toPort(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile: boolean,
    pubTail: Uint8Array | undefined,
  ): boolean {
    const max = this.#o.limits.maxPendingBytes;
    const pending = this.#o.port.pending + this.#o.writer.batched;
    if (pending > max) {
      const why = this.#whyNotHold(entry, pending);
      if (why) {
        this.#drop(why);
        return false;
      }
      this.#holdPublisher();
      this.#releaseOnDrain();
    }
    // A payload read in place from a guest's ring is only valid now: the writer must copy it.
    if (pubTail) this.#o.writer.msg(entry.sid, pubTail, payload, volatile);
    else {
      const head = plainMsgHead(entry.sid, subject, reply, headers);
      this.#o.writer.frame(Op.Msg, head, payload, 0, volatile);
    }
    this.#handedOver(payload.length, reply);
    return true;
  }

  /** Count a message as handed to the peer (and grant its reply subject). */
  #handedOver(payloadLength: number, reply: string | null) {
    const stats = this.#o.stats;
    stats.msgsOut++;
    stats.bytesOut += payloadLength;
    if (reply !== null) this.#o.replyGrant()?.(reply);
  }

  /**
   * Why a message beyond the bound cannot hold its publisher (a drop reason), or undefined
   * when it may: only a "block" subscription, within its time and twice the byte bound, and
   * only another session's publish.
   */
  #whyNotHold(entry: RouteEntry, queued: number): string | undefined {
    if (!entry.block) return DropReason.SlowConsumer;
    if (this.#blockExpired) return DropReason.BlockTimeout;
    const publisher = this.#o.publisher();
    if (!publisher || publisher === this.#o.owner) return DropReason.SlowConsumer;
    if (queued > 2 * this.#o.limits.maxPendingBytes) return DropReason.SlowConsumer;
    return undefined;
  }

  #enqueue(
    entry: RouteEntry,
    head: Uint8Array | undefined,
    pubTail: Uint8Array | undefined,
    payload: Uint8Array,
  ): boolean {
    const backlog = this.#backlog;
    const max = this.#o.limits.maxPendingBytes;
    if (backlog.memoryBytes > max) {
      const why = this.#whyNotHold(entry, backlog.memoryBytes);
      if (why) {
        this.#dropOldest(max, why);
      } else {
        this.#holdPublisher();
      }
    }
    if (head) backlog.push(Op.Msg, head, payload);
    else backlog.pushMsg(entry.sid, pubTail!, payload);
    const publisher = this.#o.publisher();
    if (publisher) {
      const sequence = publisher.retainRecord(this.#retainers.length < MAX_RETAINED);
      if (sequence >= 0) {
        this.#retainedAt.push(this.#pushedFrames);
        this.#retainers.push(publisher);
        this.#retainedSeqs.push(sequence);
      }
    }
    this.#pushedFrames++;
    this.#o.stats.ringMsgsQueued++;
    if (!this.#flushing) void this.#flush();
    return true;
  }

  /** The oldest backlog frame is gone: let the publisher's ring record it kept go. */
  #releaseOldest() {
    if (this.#retainedAt.peek() === this.#shiftedFrames++) {
      this.#retainedAt.shift();
      const publisher = this.#retainers.shift()!;
      publisher.releaseRecord(this.#retainedSeqs.shift()!);
    }
  }

  /** Drop the oldest queued messages until the backlog's memory is within `bound`. */
  #dropOldest(bound: number, reason: string) {
    const backlog = this.#backlog;
    let n = 0;
    while (backlog.memoryBytes > bound && backlog.length > 0) {
      backlog.shift();
      this.#releaseOldest();
      n++;
    }
    if (n > 0) this.#drop(reason, n);
  }

  /**
   * Write the oldest queued frame into the ring if it fits now; false when it does not.
   */
  #writeQueued(ring: RingChannel, inDelivery: boolean): boolean {
    const backlog = this.#backlog;
    const bytes = backlog.oldestBuffer()!, at = backlog.oldestOffset();
    if (!ring.tryWriteEncoded(bytes, at, frameSize(bytes, at))) return false;
    this.#o.stats.ringMsgsOut++;
    this.#handedOver(payloadLength(bytes, at), this.#o.replyGrant() ? replyOf(bytes, at) : null);
    this.#backlog.shift();
    this.#releaseOldest();
    if (this.#backlog.memoryBytes <= this.#o.limits.maxPendingBytes / 2) {
      this.#blockExpired = false;
      this.#release(inDelivery);
    }
    return true;
  }

  /**
   * Let held publishers go; from inside a delivery, once it is over: a released session may
   * go on with its queued input at once, which must not run inside another's publish (the
   * broker's "who publishes now" would be its, then nobody's, for the rest of that publish).
   */
  #release(inDelivery: boolean) {
    if (!inDelivery) return this.#releasePublishers();
    if (this.#held.size === 0 || this.#releaseQueued) return;
    this.#releaseQueued = true;
    queueMicrotask(() => {
      this.#releaseQueued = false;
      this.#releasePublishers();
    });
  }

  /**
   * Write queued frames while they fit, without waiting (the ring may have had room for a
   * while before the flush loop wakes up); true when the backlog is empty.
   */
  #drainNow(ring: RingChannel): boolean {
    if (ring.stopped || this.#closed) return false;
    while (this.#backlog.length > 0) if (!this.#writeQueued(ring, true)) return false;
    this.#release(true);
    return true;
  }

  async #flush() {
    this.#flushing = true;
    try {
      let written = 0;
      while (this.#backlog.length > 0) {
        const ring = this.#ring;
        if (!ring || ring.stopped || this.#closed) break;
        if (!this.#writeQueued(ring, false)) {
          if (ring.stopped) break;
          await ring.waitForSpace(this.#backlog.peek()!.length);
          continue;
        }
        // A subscriber that keeps up could keep this loop going without a single await:
        // let the rest of the broker run between batches.
        if (++written % FLUSH_BATCH === 0) await yieldToEventLoop();
      }
      if (this.#backlog.length === 0) this.#releasePublishers();
    } catch (err) {
      this.#o.onFault(err);
    } finally {
      this.#flushing = false;
    }
  }

  /** Hold the session publishing now until this peer catches up (or `maxBlockMs` passes). */
  #holdPublisher() {
    const publisher = this.#o.publisher();
    if (!publisher || publisher === this.#o.owner || this.#held.has(publisher)) return;
    this.#held.add(publisher);
    this.#o.log.debug('holding a publisher for a "block" subscriber that fell behind', {
      session: this.#o.id(),
      queuedBytes: this.#backlog.memoryBytes + this.#o.port.pending,
      maxBlockMs: this.#o.limits.maxBlockMs,
    });
    publisher.holdFor(this);
    this.#blockTimer ??= setTimeout(() => this.#blockTimedOut(), this.#o.limits.maxBlockMs);
  }

  #releaseOnDrain() {
    if (this.#awaitingDrain) return;
    this.#awaitingDrain = true;
    this.#o.port.drained().then(() => {
      this.#awaitingDrain = false;
      this.#blockExpired = false;
      this.#releasePublishers();
    });
  }

  #releasePublishers() {
    if (this.#blockTimer) clearTimeout(this.#blockTimer);
    this.#blockTimer = undefined;
    if (this.#held.size === 0) return;
    const held = [...this.#held];
    this.#held.clear();
    for (const p of held) p.releaseFor(this);
  }

  /** A "block" subscriber held its publishers for `maxBlockMs`: now it is a slow consumer. */
  #blockTimedOut() {
    this.#blockTimer = undefined;
    if (this.#held.size === 0 || this.#closed) return;
    this.#blockExpired = true;
    this.#o.log.warn('a "block" subscriber held its publishers too long; dropping for it', {
      session: this.#o.id(),
      maxBlockMs: this.#o.limits.maxBlockMs,
    });
    this.#dropOldest(this.#o.limits.maxPendingBytes, DropReason.BlockTimeout);
    this.#releasePublishers();
  }

  #tooLarge(size: number, largest: number, subject: string) {
    // Only a publisher on the port stream can send this much. Sent on the port, it could be
    // overtaken by ring records written after it, so it is not delivered: counted, and both
    // ends are told; neither is blamed for it.
    this.#drop(DropReason.TooLarge);
    const publisher = this.#o.publisher();
    if (publisher && publisher !== this.#o.owner) {
      publisher.notice(
        ErrorCode.FrameTooLarge,
        `not delivered to session ${this.#o.id()}: a ${size}-byte message does not fit its shared-memory ring (largest ${largest})`,
        subject,
      );
    }
  }

  #drop(reason: string, n = 1) {
    if (this.#unreported.size === 0) {
      // The first drop since the last report (at most about one line a second per session).
      this.#o.log.debug("dropping messages for a session", {
        session: this.#o.id(),
        reason,
        dropped: n,
        ringBacklogBytes: this.#backlog.memoryBytes,
        portPendingBytes: this.#o.port.pending + this.#o.writer.batched,
        maxPendingBytes: this.#o.limits.maxPendingBytes,
      });
    }
    countDrop(this.#o.stats, reason, n);
    const code = reason === DropReason.TooLarge ? ErrorCode.FrameTooLarge : ErrorCode.SlowConsumer;
    this.#unreported.set(code, (this.#unreported.get(code) ?? 0) + n);
    this.#report();
  }

  /** Tell the peer what was dropped for it, at most once per interval (the rest at its end). */
  #report() {
    if (this.#closed) return;
    const now = Date.now();
    if (now - this.#reportedAt < REPORT_INTERVAL_MS) {
      this.#reportTimer ??= setTimeout(() => {
        this.#reportTimer = undefined;
        this.#report();
      }, REPORT_INTERVAL_MS - (now - this.#reportedAt));
      (this.#reportTimer as { unref?: () => void }).unref?.();
      return;
    }
    this.#reportedAt = now;
    const stats = this.#o.stats;
    for (const [code, n] of this.#unreported) {
      stats.errors[code] = (stats.errors[code] ?? 0) + 1;
      const message = code === ErrorCode.FrameTooLarge
        ? `${n} message(s) dropped: a message does not fit this session's shared-memory ring`
        : `${n} message(s) dropped: more than ${this.#o.limits.maxPendingBytes} bytes were queued for this session`;
      // Queued behind what was delivered, so the client learns of it in order.
      this.#o.writer.frame(Op.Err, encodeValue({ code, message, dropped: n }));
      this.#o.log.warn("messages dropped for a session", {
        session: this.#o.id(),
        code,
        dropped: n,
      });
    }
    this.#unreported.clear();
  }
}

function plainMsgHead(
  sid: number,
  subject: string,
  reply: string | null,
  headers: Headers | null,
): Uint8Array {
  return encodeValue([sid, subject, reply, headers]);
}

function u32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3];
}

function payloadLength(frame: Uint8Array, at: number): number {
  return u32(frame, at + FrameHeader.PAYLOAD_LENGTH_OFFSET);
}

/** The reply subject of an encoded MSG frame (the broker wrote it, so it is well formed). */
function replyOf(frame: Uint8Array, at: number): string | null {
  const headStart = at + FrameHeader.LENGTH;
  return decodeMsgHead(
    frame,
    headStart,
    headStart + u32(frame, at + FrameHeader.HEAD_LENGTH_OFFSET),
  )[2];
}

/**
 * The sending side of a connection: publishes and control frames (SUB, UNSUB, PING), in order,
 * through the session's ring sender (shared memory) or its port writer; publishes made while
 * disconnected go to the reconnect buffer. It also keeps what PONGs confirmed (the delivery
 * ledger), and at the end of a session takes back what was not delivered: what waited for room
 * in the ring and what the broker had not read of it (see `ring_salvage.ts`).
 *
 * @example
 * ```ts
 * import { Outbound } from "./outbound.ts";
 * import type { Port } from "../port/port.ts";
 * import type { WelcomeHead } from "../protocol/ops.ts";
 * import type { RingChannel } from "../shm/ring_channel.ts";
 * declare const port: Port; // the new session's port
 * declare const ring: RingChannel | undefined; // and its ring, when it has shared memory
 * declare const welcome: WelcomeHead; // and its WELCOME
 * let connected = false;
 * const out = new Outbound(8 << 20, {
 *   sendable: () => true,
 *   connected: () => connected,
 *   welcome: () => (connected ? welcome : undefined),
 * });
 * await out.publish("sensors.temp", 21.5); // disconnected: into the reconnect buffer
 * out.open(port, ring); // a session started
 * connected = true;
 * out.sendBuffered(); // (the subscriptions are re-sent first) { flushed: 1, recovered: 0 }
 * await out.publish("sensors.temp", 22.0);
 * ```
 * @module
 */
import type { Port } from "../port/port.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { encodeFrame, FrameHeader } from "../protocol/frame.ts";
import { FrameWriter } from "../protocol/frame_writer.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import { Op, type WelcomeHead } from "../protocol/ops.ts";
import type { RingChannel } from "../shm/ring_channel.ts";
import { type ClientStats, DeliveryLedger, type RingSessionEnd } from "./delivery_ledger.ts";
import { Pings, type PongWaiter } from "./keepalive.ts";
import type { PublishOptions } from "./options.ts";
import { PubHeads } from "./pub_heads.ts";
import { ReconnectBuffer } from "./reconnect_buffer.ts";
import { recoverRingSession } from "./ring_salvage.ts";
import { RingSender } from "./ring_sender.ts";

const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY_ARRAY_HEAD = encodeValue([]);

/** What the sending side needs to know about its connection. */
export interface OutboundState {
  /** Publishing is allowed (not closed or draining). */
  sendable(): boolean;
  /** A session is established. */
  connected(): boolean;
  /** The WELCOME of the current (or last) session, for its limits. */
  welcome(): WelcomeHead | undefined;
}

/** The sending side of one connection; see the module doc. */
export class Outbound {
  /** PINGs waiting for their PONGs. */
  readonly pings: Pings = new Pings();
  #state: OutboundState;
  #heads = new PubHeads();
  #buffer: ReconnectBuffer;
  #ledger = new DeliveryLedger();
  #writer?: FrameWriter;
  /** Sends through the ring, in order; set while a session on the ring is established. */
  #sender?: RingSender;

  /** @param bufferBytes bytes of publishes held while disconnected */
  constructor(bufferBytes: number, state: OutboundState) {
    this.#buffer = new ReconnectBuffer(bufferBytes);
    this.#state = state;
  }

  /** The counters `bus.stats` shows (mutable: the connection counts undecodable payloads). */
  get stats(): ClientStats {
    return this.#ledger.stats;
  }

  /** The current session's port writer (DOORBELL and PONG frames go straight to it). */
  get writer(): FrameWriter | undefined {
    return this.#writer;
  }

  /** A session started on `port`, on `ring` when it has one. */
  open(port: Port, ring: RingChannel | undefined): void {
    const writer = this.#writer = new FrameWriter(port);
    this.#ledger.sessionStarted();
    this.#sender = ring
      ? new RingSender(ring, {
        sendOversize: (frame) => {
          writer.raw(frame);
          this.#ledger.portPublished();
        },
      })
      : undefined;
  }

  /**
   * Send, in order, what the last session's ring still held and what was published since.
   * Returns how many were buffered publishes and how many recovered ones.
   */
  sendBuffered(): { flushed: number; recovered: number } {
    const { frames, recovered } = this.#buffer.take();
    for (const frame of frames) {
      if (this.#sender) this.#sender.frame(frame);
      else {
        this.#writer!.raw(frame);
        this.#ledger.portPublished();
      }
    }
    this.#ledger.stats.resent += recovered;
    return { flushed: frames.length - recovered, recovered };
  }

  /** Publish; throws what is found at once, returns the hand-over (see `Bus.publish`). */
  publish(subject: string, value: unknown, opts?: PublishOptions): Promise<void> {
    const head = this.#head(subject, opts);
    const sender = this.#sender;
    const connected = this.#state.connected();
    if (sender && connected) return sender.publish(head, value, subject);
    const payload = encodeValue(value);
    const size = FrameHeader.LENGTH + head.length + payload.length;
    const max = this.#state.welcome()?.maxFrameBytes ?? DEFAULT_LIMITS.maxFrameBytes;
    if (size > max) {
      throw new VbusError(
        ErrorCode.FrameTooLarge,
        `message of ${size} bytes exceeds the broker's limit of ${max}`,
        subject,
      );
    }
    if (connected) {
      const writer = this.#writer!;
      writer.frame(Op.Pub, head, payload);
      this.#ledger.portPublished();
      return writer.blocked ? writer.ready() : RESOLVED;
    }
    this.#buffer.add(encodeFrame(Op.Pub, head, payload), subject);
    return RESOLVED;
  }

  /** Publish without waiting (see `Bus.tryPublish`). */
  tryPublish(subject: string, value: unknown, opts?: PublishOptions): boolean {
    if (this.#state.connected()) {
      const sender = this.#sender;
      if (sender) {
        const r = sender.tryPublish(this.#head(subject, opts), value);
        if (r === "too-large") {
          throw new VbusError(
            ErrorCode.FrameTooLarge,
            "message does not fit in the shared-memory ring",
            subject,
          );
        }
        return r === "ok";
      }
      if (this.#writer?.blocked) return false;
    }
    this.publish(subject, value, opts).catch(() => {});
    return true;
  }

  #head(subject: string, opts: PublishOptions | undefined): Uint8Array {
    if (!this.#state.sendable()) {
      throw new VbusError(ErrorCode.Closed, "connection is closed", subject);
    }
    return this.#heads.head(subject, opts, this.#state.welcome());
  }

  /**
   * Send SUB, UNSUB or PING. With shared memory they go through the ring like PUBs, so a
   * publish can never overtake the subscription or flush sent before it.
   */
  control(op: number, head: Uint8Array): void {
    if (this.#sender) this.#sender.control(op, head);
    else this.#writer?.frame(op, head);
  }

  /** Send a PING now, for `waiter`, noting what its PONG will confirm. */
  ping(waiter: PongWaiter): void {
    const sender = this.#sender;
    if (sender) {
      waiter.portMark = this.#ledger.unchangedPortMark();
      waiter.ringMark = sender.pubsAccepted;
    } else waiter.portMark = this.#ledger.portMark();
    this.pings.sent(waiter);
    this.control(Op.Ping, EMPTY_ARRAY_HEAD);
  }

  /** A PONG arrived. */
  pong(): void {
    const w = this.pings.answered();
    if (!w) return;
    this.#ledger.confirm(w.portMark, w.ringMark);
    w.resolve();
  }

  /** The ring sender's queue must not outlive its ring (it would spin on a stopped one). */
  stopSender(err: Error): void {
    for (const p of this.#sender?.close() ?? []) p.reject(err);
    this.#sender = undefined;
  }

  /**
   * The session ended (its port closed). On the ring, what waited for room and what the broker
   * had not read go to the reconnect buffer; `leftInRing`: a guest hung up itself and leaves
   * the ring to a broker that may still read it. PINGs waiting are failed with `reason`.
   * Returns what {@link sessionEnded} needs, and why the ring could not be read to its end.
   */
  endSession(
    ring: RingChannel | undefined,
    leftInRing: boolean,
    reason: string,
  ): { ringEnd?: RingSessionEnd; problem?: string } {
    const sender = this.#sender;
    this.#sender = undefined;
    this.#writer = undefined;
    this.pings.stopKeepalive();
    let out: { ringEnd?: RingSessionEnd; problem?: string } = {};
    if (sender && ring) {
      const { end, problem } = recoverRingSession(sender, ring, this.#buffer, leftInRing);
      out = { ringEnd: end, problem };
    }
    this.pings.rejectAll(
      new VbusError(ErrorCode.Port, `disconnected before the broker confirmed: ${reason}`),
    );
    return out;
  }

  /** Count the end of a session (not a drain): how many publishes may have been lost. */
  sessionEnded(ringEnd: RingSessionEnd | undefined): number {
    return this.#ledger.sessionEnded(ringEnd);
  }

  /**
   * The connection closed for good: fail what waits with `err`. Returns what was still
   * buffered and is dropped now (publishes, bytes), for the connection to report.
   */
  shutdown(err: Error): { publishes: number; bytes: number } {
    this.pings.stopKeepalive();
    this.#writer?.flush();
    this.stopSender(err);
    this.pings.rejectAll(err);
    const dropped = { publishes: this.#buffer.length, bytes: this.#buffer.bytes };
    this.#buffer.clear();
    return dropped;
  }
}

/**
 * What a client sends through its outbound ring during one session: publishes (encoded in
 * place into the ring), control frames (SUB, UNSUB, PING) and already-encoded PUB frames (the
 * reconnect buffer and publishes recovered from the previous session's ring). Everything
 * goes in order: when the ring is full, later sends wait in a queue behind the first one that
 * did not fit, so a publish never overtakes the subscription or flush sent before it.
 *
 * When the session ends, {@link RingSender.close} hands back what still waits, oldest first,
 * for the reconnect buffer.
 *
 * @example
 * ```ts
 * import { RingSender } from "./ring_sender.ts";
 * import { PubHeads } from "./pub_heads.ts";
 * import type { FrameWriter } from "../protocol/frame_writer.ts";
 * import type { RingChannel } from "../shm/ring_channel.ts";
 * declare const ring: RingChannel; // the session's ring channel
 * declare const writer: FrameWriter; // and its port writer
 * const sender = new RingSender(ring, { sendOversize: (frame) => writer.raw(frame) });
 * const head = new PubHeads().head("sensors.temp", undefined, undefined);
 * await sender.publish(head, { temp: 21.5 }, "sensors.temp");
 * const waiting = sender.close(); // at the end of the session: what still waits, oldest first
 * ```
 * @module
 */
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { Op } from "../protocol/ops.ts";
import type { RingChannel } from "../shm/ring_channel.ts";
import { Fifo } from "../util/fifo.ts";

/** Something waiting for room in the ring. */
export interface PendingSend {
  /** PUB (encoded in place from `value`), a control op sent as `head` alone, or a whole frame. */
  op: number;
  head: Uint8Array;
  value: unknown;
  /** An encoded PUB frame, sent as it is (then `head` and `value` are unused). */
  frame?: Uint8Array;
  /** The subject of a PUB (for errors). */
  subject?: string;
  resolve(): void;
  reject(err: Error): void;
}

/** What a {@link RingSender} needs from its connection. */
export interface RingSenderOptions {
  /** Send an encoded PUB frame too large for the ring through the port instead. */
  sendOversize(frame: Uint8Array): void;
}

const RESOLVED: Promise<void> = Promise.resolve();
const NOOP = () => {};

/** The ordered outbound side of one session's ring; see the module doc. */
export class RingSender {
  #ring: RingChannel;
  #opts: RingSenderOptions;
  #queue = new Fifo<PendingSend>();
  #pumping = false;
  #closed = false;
  /**
   * PUBs accepted so far this session (written or queued). A PING sent when this was N
   * follows exactly those N into the ring, so its PONG proves the broker handled them.
   */
  pubsAccepted = 0;

  constructor(ring: RingChannel, opts: RingSenderOptions) {
    this.#ring = ring;
    this.#opts = opts;
  }

  /** Sends waiting for room. */
  get pending(): number {
    return this.#queue.length;
  }

  /**
   * Publish `value` with the encoded PUB `head`. Resolves at once when it went into the ring,
   * later when it had to wait for room; throws FRAME_TOO_LARGE when it can never fit.
   */
  publish(head: Uint8Array, value: unknown, subject: string): Promise<void> {
    if (this.#queue.length === 0) {
      const r = this.#ring.tryPublishInPlace(head, value);
      if (r === "ok") {
        this.pubsAccepted++;
        return RESOLVED;
      }
      if (r === "too-large") {
        throw new VbusError(
          ErrorCode.FrameTooLarge,
          `message does not fit in the shared-memory ring (at most ${this.#ring.maxFrameOut} bytes)`,
          subject,
        );
      }
    }
    this.pubsAccepted++;
    return new Promise((resolve, reject) =>
      this.#enqueue({ op: Op.Pub, head, value, subject, resolve, reject })
    );
  }

  /**
   * Like {@link publish} without waiting: "ok", "full" (nothing was sent, or something waits
   * already) or "too-large".
   */
  tryPublish(head: Uint8Array, value: unknown): "ok" | "full" | "too-large" {
    if (this.#queue.length > 0) return "full";
    const r = this.#ring.tryPublishInPlace(head, value);
    if (r === "ok") this.pubsAccepted++;
    return r;
  }

  /** Send SUB, UNSUB or PING. */
  control(op: number, head: Uint8Array): void {
    if (this.#queue.length === 0 && this.#ring.tryWriteFrame(op, head)) return;
    this.#enqueue({ op, head, value: undefined, resolve: NOOP, reject: NOOP });
  }

  /** Send an encoded PUB frame (buffered or recovered earlier: its publish already resolved). */
  frame(frame: Uint8Array): void {
    this.pubsAccepted++;
    if (this.#queue.length === 0 && this.#writeFrame(frame)) return;
    this.#enqueue({
      op: Op.Pub,
      head: frame,
      value: undefined,
      frame,
      resolve: NOOP,
      reject: NOOP,
    });
  }

  /** End of the session: stop, and return what still waits (oldest first). */
  close(): PendingSend[] {
    this.#closed = true;
    const waiting: PendingSend[] = [];
    for (let p = this.#queue.shift(); p; p = this.#queue.shift()) waiting.push(p);
    return waiting;
  }

  #writeFrame(frame: Uint8Array): boolean {
    if (frame.length > this.#ring.maxFrameOut) {
      // Buffered while disconnected under the port's limit, larger than this ring takes.
      this.#opts.sendOversize(frame);
      return true;
    }
    return this.#ring.tryWriteEncoded(frame);
  }

  #enqueue(p: PendingSend) {
    this.#queue.push(p);
    if (!this.#pumping) this.#pump();
  }

  async #pump() {
    this.#pumping = true;
    try {
      while (!this.#closed && this.#queue.length > 0) {
        const ring = this.#ring;
        const next = this.#queue.peek()!;
        let r: "ok" | "full" | "too-large";
        try {
          if (next.frame) r = this.#writeFrame(next.frame) ? "ok" : "full";
          else if (next.op === Op.Pub) r = ring.tryPublishInPlace(next.head, next.value);
          else r = ring.tryWriteFrame(next.op, next.head) ? "ok" : "full";
        } catch (err) {
          this.#queue.shift();
          next.reject(err as Error);
          continue;
        }
        if (r === "full") {
          const need = next.frame
            ? next.frame.length
            : next.op === Op.Pub
            ? ring.claimSize(next.head, next.value)
            : next.head.length + 64;
          await ring.waitForSpace(need);
          continue;
        }
        this.#queue.shift();
        if (r === "ok") next.resolve();
        else {next.reject(
            new VbusError(
              ErrorCode.FrameTooLarge,
              "message does not fit in the shared-memory ring",
            ),
          );}
      }
    } finally {
      this.#pumping = false;
    }
  }
}

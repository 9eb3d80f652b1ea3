/**
 * What a client sends through its outbound ring during one session: publishes (encoded in
 * place into the ring), control frames (SUB, UNSUB, PING) and already-encoded PUB frames (the
 * reconnect buffer and publishes recovered from the previous session's ring). Everything
 * goes in order: when the ring is full, later sends wait in a queue behind the first one that
 * did not fit, so a publish never overtakes the subscription or flush sent before it.
 *
 * A publish that has to wait is encoded at once, into private memory: consecutive waiting
 * publishes go back to back into one buffer of {@link BATCH_BYTES} (a {@link PubBatch}) and
 * share one promise, resolved when the batch's last frame is in the ring. So the caller may
 * reuse its buffer as soon as `publish()` returns, encoding errors and FRAME_TOO_LARGE are
 * thrown by the call itself (as when the ring has room), and a publisher that outruns the
 * broker costs a copy per message, not a promise, a closure and a queue entry.
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
import { Packr } from "msgpackr";
import {
  bufferView,
  MSGPACK_HEADROOM,
  MSGPACK_OPTIONS,
  packInto,
  writeBinHeader,
} from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { FrameHeader, writeFrameHeader } from "../protocol/frame.ts";
import { Op } from "../protocol/ops.ts";
import type { RingChannel } from "../shm/ring_channel.ts";
import { BufferPool } from "../util/buffer_pool.ts";
import { Fifo } from "../util/fifo.ts";

/**
 * Something waiting for room in the ring, as {@link RingSender.close} hands it back. A PUB
 * always comes with its encoded `frame` (port-ready: no padding); `resolve` or `reject`
 * settles the publish that waits for it (a no-op for all but the last frame of a batch).
 */
export interface PendingSend {
  /** PUB, or a control op (SUB, UNSUB, PING) sent as `head` alone. */
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

/**
 * Bytes of encoded publishes one {@link PubBatch} holds (a larger frame gets a batch of its
 * own): bounds how much published after it a waiting publish's promise also waits for.
 */
export const BATCH_BYTES = 64 * 1024;
/** Spare batch buffers kept for reuse (1 MiB: a burst of 1024 one-KiB publishes needs 16). */
const SPARE_BUFFERS = 16;
/** Bytes of spare batch buffers kept at most (larger batches are kept too: `buffer_pool.ts`). */
const SPARE_BYTES = 2 * 1024 * 1024;
const packr = new Packr(MSGPACK_OPTIONS);

const RESOLVED: Promise<void> = Promise.resolve();
const NOOP = () => {};

/**
 * Consecutive publishes that had to wait, encoded back to back as PUB frames (port layout, no
 * padding) in one private buffer, sharing one promise.
 */
class PubBatch {
  readonly bytes: Uint8Array;
  /** `bytes.length`, kept as a number (checked on every publish that joins the batch). */
  readonly limit: number;
  /** The next frame not yet in the ring. */
  start = 0;
  /** End of the encoded frames. */
  end = 0;
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (err: Error) => void;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.limit = bytes.length;
    this.promise = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  /** Length of the frame at `at` (written by this sender: trusted). */
  frameLength(at: number): number {
    const b = this.bytes;
    return FrameHeader.LENGTH + readU32(b, at + FrameHeader.HEAD_LENGTH_OFFSET) +
      readU32(b, at + FrameHeader.PAYLOAD_LENGTH_OFFSET);
  }
}

type Waiting = PendingSend | PubBatch;

/** The ordered outbound side of one session's ring; see the module doc. */
export class RingSender {
  #ring: RingChannel;
  /** The ring's largest frame (fixed for its life). */
  #maxFrame: number;
  #opts: RingSenderOptions;
  #queue = new Fifo<Waiting>();
  /** The batch at the tail of the queue, while publishes may still join it. */
  #open?: PubBatch;
  #spare = new BufferPool({
    standard: BATCH_BYTES,
    maxBuffers: SPARE_BUFFERS,
    maxBytes: SPARE_BYTES,
  });
  /** Sends waiting (each publish of a batch counts). */
  #waiting = 0;
  #pumping = false;
  #closed = false;
  /**
   * PUBs accepted so far this session (written or queued). A PING sent when this was N
   * follows exactly those N into the ring, so its PONG proves the broker handled them.
   */
  pubsAccepted = 0;

  constructor(ring: RingChannel, opts: RingSenderOptions) {
    this.#ring = ring;
    this.#maxFrame = ring.maxFrameOut;
    this.#opts = opts;
  }

  /** Sends waiting for room. */
  get pending(): number {
    return this.#waiting;
  }

  /**
   * Publish `value` with the encoded PUB `head`. Resolves at once when it went into the ring,
   * later when it had to wait for room (it is encoded now all the same: `value` may change
   * after the call); throws FRAME_TOO_LARGE when it can never fit, CODEC when it cannot be
   * encoded.
   */
  publish(head: Uint8Array, value: unknown, subject: string): Promise<void> {
    if (this.#queue.length === 0 || this.#drainNow()) {
      const r = this.#ring.tryPublishInPlace(head, value);
      if (r === "ok") {
        this.pubsAccepted++;
        return RESOLVED;
      }
      if (r === "too-large") throw this.#tooLarge(subject);
    }
    const batch = value instanceof Uint8Array
      ? this.#queueBinary(head, value, subject)
      : this.#queueEncoded(head, value, subject);
    this.pubsAccepted++;
    this.#waiting++;
    if (!this.#pumping) this.#pump();
    return batch.promise;
  }

  /**
   * Like {@link publish} without waiting: "ok", "full" (nothing was sent, or something waits
   * already) or "too-large".
   */
  tryPublish(head: Uint8Array, value: unknown): "ok" | "full" | "too-large" {
    if (this.#queue.length > 0 && !this.#drainNow()) return "full";
    const r = this.#ring.tryPublishInPlace(head, value);
    if (r === "ok") this.pubsAccepted++;
    return r;
  }

  /** Send SUB, UNSUB or PING. */
  control(op: number, head: Uint8Array): void {
    if ((this.#queue.length === 0 || this.#drainNow()) && this.#ring.tryWriteFrame(op, head)) {
      return;
    }
    this.#enqueue({ op, head, value: undefined, resolve: NOOP, reject: NOOP });
  }

  /** Send an encoded PUB frame (buffered or recovered earlier: its publish already resolved). */
  frame(frame: Uint8Array): void {
    this.pubsAccepted++;
    if ((this.#queue.length === 0 || this.#drainNow()) && this.#writeFrame(frame)) return;
    this.#enqueue({
      op: Op.Pub,
      head: frame,
      value: undefined,
      frame,
      resolve: NOOP,
      reject: NOOP,
    });
  }

  /**
   * End of the session: stop, and return what still waits (oldest first), one entry per
   * frame. Settling the last entry of a batch settles the publishes waiting for that batch.
   */
  close(): PendingSend[] {
    this.#closed = true;
    this.#open = undefined;
    this.#spare.clear();
    const waiting: PendingSend[] = [];
    for (let w = this.#queue.shift(); w; w = this.#queue.shift()) {
      if (!(w instanceof PubBatch)) {
        waiting.push(w);
        continue;
      }
      if (w.start >= w.end) w.resolve(); // nothing of it waits (a batch left empty)
      for (let at = w.start; at < w.end;) {
        const next = at + w.frameLength(at);
        const last = next >= w.end;
        const frame = w.bytes.subarray(at, next);
        waiting.push({
          op: Op.Pub,
          head: frame,
          value: undefined,
          frame,
          resolve: last ? w.resolve : NOOP,
          reject: last ? w.reject : NOOP,
        });
        at = next;
      }
    }
    this.#waiting = 0;
    return waiting;
  }

  /** A waiting binary publish: its msgpack encoding is a bin header and the bytes. */
  #queueBinary(head: Uint8Array, value: Uint8Array, subject: string): PubBatch {
    const headAt = FrameHeader.LENGTH, binAt = headAt + head.length;
    // With a bin header's largest size: the bound `RingChannel.claimSize` applies to it, so
    // that a message is too large or not whether it waits or not.
    const room = binAt + 5 + value.length;
    if (room > this.#maxFrame) throw this.#tooLarge(subject);
    const open = this.#open;
    const batch = open && open.limit - open.end >= room ? open : this.#batchWithRoom(room);
    const b = batch.bytes, at = batch.end;
    const h = writeBinHeader(b, at + binAt, value.length);
    writeFrameHeader(b, at, Op.Pub, 0, head.length, h + value.length);
    b.set(head, at + headAt);
    b.set(value, at + binAt + h);
    batch.end = at + binAt + h + value.length;
    return batch;
  }

  /** A waiting publish of any other value: msgpack-encoded into the batch where it fits. */
  #queueEncoded(head: Uint8Array, value: unknown, subject: string): PubBatch {
    const payloadAt = FrameHeader.LENGTH + head.length;
    let batch = this.#batchWithRoom(payloadAt + MSGPACK_HEADROOM);
    const b = batch.bytes, at = batch.end;
    const slot = bufferView(b, at + payloadAt, b.length);
    const out = packInto(packr, slot, value, subject);
    // Where the payload is now: in place at the slot's start (nothing to move), in place but
    // aligned further on (moved back: a batch's frames carry no padding), or in msgpackr's
    // own buffer (the value outgrew the slot: copied).
    let moved: Uint8Array | undefined;
    let payloadLength: number;
    if (out === slot) {
      payloadLength = out.end - out.start;
      if (out.start !== 0) moved = slot.subarray(out.start, out.end);
    } else {
      moved = out.subarray(out.start ?? 0, out.end ?? out.length);
      payloadLength = moved.length;
    }
    const length = payloadAt + payloadLength;
    if (length > this.#maxFrame) throw this.#tooLarge(subject);
    if (out !== slot && length > b.length - at) batch = this.#batchWithRoom(length);
    const target = batch.bytes, to = batch.end;
    if (moved) target.set(moved, to + payloadAt);
    writeFrameHeader(target, to, Op.Pub, 0, head.length, payloadLength);
    target.set(head, to + FrameHeader.LENGTH);
    batch.end = to + length;
    return batch;
  }

  /** The open batch when it has `room` bytes left, else a new one at the queue's tail. */
  #batchWithRoom(room: number): PubBatch {
    const open = this.#open;
    if (open && open.limit - open.end >= room) return open;
    const batch = new PubBatch(this.#spare.take(room));
    this.#queue.push(batch);
    this.#open = batch;
    return batch;
  }

  #tooLarge(subject: string): VbusError {
    return new VbusError(
      ErrorCode.FrameTooLarge,
      `message does not fit in the shared-memory ring (at most ${this.#maxFrame} bytes)`,
      subject,
    );
  }

  #writeFrame(frame: Uint8Array): boolean {
    if (frame.length > this.#maxFrame) {
      // Buffered while disconnected under the port's limit, larger than this ring takes.
      this.#opts.sendOversize(frame);
      return true;
    }
    return this.#ring.tryWriteEncoded(frame);
  }

  #enqueue(p: PendingSend) {
    this.#queue.push(p);
    this.#open = undefined; // a publish after this one must not join an earlier batch
    this.#waiting++;
    if (!this.#pumping) this.#pump();
  }

  async #pump() {
    this.#pumping = true;
    try {
      while (!this.#closed && this.#queue.length > 0) {
        const ring = this.#ring;
        // A stopped ring takes nothing and waits for nothing: leave the queue to close().
        if (ring.stopped) return;
        const next = this.#queue.peek()!;
        if (next instanceof PubBatch) {
          const need = this.#writeBatch(next);
          if (need > 0) await ring.waitForSpace(need);
          continue;
        }
        let ok: boolean;
        if (next.frame) ok = this.#writeFrame(next.frame);
        else ok = ring.tryWriteFrame(next.op, next.head);
        if (!ok) {
          await ring.waitForSpace(next.frame ? next.frame.length : next.head.length + 64);
          continue;
        }
        this.#queue.shift();
        this.#waiting--;
        next.resolve();
      }
    } finally {
      this.#pumping = false;
    }
  }

  /**
   * Write what waits while it fits, without waiting; true when nothing waits any more. A send
   * calls it before its own frame: the broker may have made room long before the pump's wait
   * ends, and without this one full moment sends every later publish of a busy loop through
   * a batch (a second copy) until the loop yields.
   */
  #drainNow(): boolean {
    const ring = this.#ring;
    if (this.#closed || ring.stopped) return false;
    while (this.#queue.length > 0) {
      const next = this.#queue.peek()!;
      if (next instanceof PubBatch) {
        if (this.#writeBatch(next) > 0) return false;
        continue;
      }
      if (!(next.frame ? this.#writeFrame(next.frame) : ring.tryWriteFrame(next.op, next.head))) {
        return false;
      }
      this.#queue.shift();
      this.#waiting--;
      next.resolve();
    }
    return true;
  }

  /**
   * Copy `batch`'s frames into the ring until it is full. Returns 0 once the batch is all in
   * (it left the queue, its promise resolved), else the size of the frame that did not fit.
   */
  #writeBatch(batch: PubBatch): number {
    const ring = this.#ring, b = batch.bytes;
    let at = batch.start;
    try {
      while (at < batch.end) {
        const length = batch.frameLength(at);
        if (!ring.tryWriteEncoded(b, at, length)) return length;
        at += length;
        this.#waiting--;
      }
    } finally {
      batch.start = at;
    }
    this.#queue.shift();
    if (this.#open === batch) this.#open = undefined;
    this.#spare.give(b);
    batch.resolve();
    return 0;
  }
}

function readU32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3];
}

/**
 * The fast path of one session: frames through the two rings of a shared-memory region
 * instead of the port. Used the same way by the broker (host side) and the client (guest
 * side). Each ring record's body is exactly one frame, laid out as on the port (`frame.ts`),
 * so both sides parse it with the same validation.
 *
 * Wake-ups: the consumer polls in batches, keeps polling (yielding to the event loop, and with
 * `sched_yield` to other processes while the cores are contended: `idle_yield.ts`, looking again
 * at once after each yield) for `spinMs` after the last record, then parks: it sets the parked
 * flag in shared memory and sleeps until a DOORBELL frame arrives on the port. A client reads
 * the ring before any port frame (`drain()`), so a woken loop may find it empty: that counts as
 * a wake-up with data, and the loop polls again rather than parking at once. A producer rings
 * only when it sees the flag, so a busy stream rings almost never. The same scheme, the other
 * way round, wakes a producer waiting for space.
 *
 * Host-local peers (both processes map the same /dev/shm file) may negotiate futex wake-ups
 * instead (`futex` option): the sleeper waits in FUTEX_WAIT on the ring's wake word and the
 * producer calls FUTEX_WAKE on it, so no frame crosses the socket. Futexes do not cross a VM
 * boundary, so guests always use DOORBELL frames.
 *
 * @example
 * ```ts
 * import { attachRegion, initRegion } from "../ring/region.ts";
 * import type { Frame } from "../protocol/frame.ts";
 * import { Op } from "../protocol/ops.ts";
 * // Both ends in one process, for the example. Normally each end is a session of its own
 * // and `ringDoorbell` sends a DOORBELL frame on the port, whose receiver calls onDoorbell.
 * const shared = new Uint8Array(1 << 16);
 * const host = initRegion(shared);
 * const guest = attachRegion(shared, "guest");
 * const options = (side: string, peer: () => RingChannel) => ({
 *   ringDoorbell: (ring: number, kind: number) => peer().onDoorbell(ring, kind),
 *   onFrame: (frame: Frame) => console.log(side, "got op", frame.op),
 *   onCorrupt: (err: Error) => console.error(`ring corrupt: ${err.message}`),
 *   maxFrameBytes: 1 << 20,
 * });
 * const hostEnd: RingChannel = new RingChannel(host, options("host", () => guestEnd));
 * const guestEnd: RingChannel = new RingChannel(guest, options("guest", () => hostEnd));
 * hostEnd.start();
 * guestEnd.tryWriteFrame(Op.Ping, new Uint8Array([0x90])); // host got op 7, soon
 * await new Promise((resolve) => setTimeout(resolve, 50));
 * await Promise.all([hostEnd.stop(), guestEnd.stop()]);
 * ```
 * @module
 */
import process from "node:process";
import { Packr } from "msgpackr";
import {
  bufferView,
  msgHeadMaxLength,
  MSGPACK_HEADROOM,
  MSGPACK_OPTIONS,
  type Packed,
  packInto,
  writeBinHeader,
  writeMsgHead,
} from "../protocol/codec.ts";
import {
  EMPTY,
  type Frame,
  FrameHeader,
  LocatedFrame,
  parseFrameAt,
  parseFrameInto,
  writeFrameHeader,
} from "../protocol/frame.ts";
import { Op } from "../protocol/ops.ts";
import type { Region } from "../ring/region.ts";
import { RingConsumer, RingCorruptError, RingProducer } from "../ring/ring.ts";
import { Doorbell, Parker, type SleepFn } from "../ring/doorbell.ts";
import { RingId } from "../ring/layout.ts";
import { yieldToEventLoop } from "../util/event_loop.ts";
import { type IdleYield, idleYield } from "../util/idle_yield.ts";
import { copyRange } from "../util/copy_range.ts";

/** What a DOORBELL announces: data to read, or space to write. */
export const DoorbellKind = { Data: 0, Space: 1 } as const;

/**
 * How long a consumer keeps polling after its last record before it parks (overridable with
 * VBUS_RING_SPIN_MS). Longer keeps a request/reply exchange free of doorbells; shorter saves
 * CPU on an idle bus.
 */
const DEFAULT_SPIN_MS = spinFromEnv() ?? 0.2;

function spinFromEnv(): number | undefined {
  try {
    const v = Number(process.env.VBUS_RING_SPIN_MS);
    return Number.isFinite(v) && v >= 0 && process.env.VBUS_RING_SPIN_MS !== undefined
      ? v
      : undefined;
  } catch {
    return undefined;
  }
}

/** Records consumed per batch before yielding to the event loop. */
const BATCH_RECORDS = 1024;
/** Ring bytes consumed per batch before yielding (so one session's turn stays short). */
const BATCH_BYTES = 1024 * 1024;
/** Longest sleep before re-checking the ring even without a doorbell (a lost frame costs this). */
const PARK_SLICE_MS = 50;
/**
 * An idle receive loop doubles its slice after each one that found nothing, up to this: a
 * timer wake-up costs Bun about 0.25 ms of CPU, so a 50 ms slice alone kept an idle broker
 * at ~1% of a core per ring session. The first slice after traffic is PARK_SLICE_MS again.
 */
const IDLE_PARK_SLICE_MAX_MS = 800;

/** Callbacks and settings of a {@link RingChannel}. */
export interface RingChannelOptions {
  /** Send a DOORBELL frame on the port: `ring` is a {@link RingId}, `kind` a {@link DoorbellKind}. */
  ringDoorbell(ring: number, kind: number): void;
  /**
   * Called for each frame read from the receive ring; views are valid until it returns.
   * Returning `false` ends the current batch after this frame (the loop yields to the event
   * loop and goes on later): the owner's way to bound the work of one turn.
   */
  onFrame(frame: Frame): unknown;
  /** Called after each batch the receive loop consumed (e.g. to act on what waited for it). */
  onBatch?(): void;
  /** The peer broke the ring (or a frame in it): the session must be reset. */
  onCorrupt(err: Error): void;
  /** Largest frame accepted from the ring. */
  maxFrameBytes: number;
  /** Keep polling this long after the last record before parking. Default 0.2 ms. */
  spinMs?: number;
  /** When an empty poll hands the core to other processes; default: the process's `idleYield`. */
  idleYield?: IdleYield;
  /** Futex wake-ups between host-local peers (see the module doc); default: DOORBELL frames. */
  futex?: FutexWakeups;
  /**
   * Hand `onFrame` the same frame object for every record (its fields change per record): for
   * an owner that never keeps a frame past the call (the broker). Saves an allocation per record.
   */
  reuseFrames?: boolean;
}

/** How a {@link RingChannel} uses futexes (both sides must map the same file). */
export interface FutexWakeups {
  /** FUTEX_WAKE on `word[index]` (ffi `futexWake`). */
  wake(word: Int32Array, index: number): void;
  /** The peer sleeps in FUTEX_WAIT: wake it with `wake` rather than a DOORBELL frame. */
  peerSleeps: boolean;
  /** This side sleeps in FUTEX_WAIT through these (one per sleeper: waiting for data, for space). */
  sleep?: { data: SleepFn; space: SleepFn };
}

/** A sleeper waiting for a DOORBELL frame (or for its wake word to move). */
interface Waker {
  word: Int32Array;
  index: number;
  expected: number;
  done(): void;
}

/**
 * Counters of one channel (a client's `Bus.ringStats`).
 *
 * @example
 * ```ts
 * import type { RingChannelStats } from "./ring_channel.ts";
 * // Doorbells per frame sent: near 0 on a busy stream, up to 1 when every frame wakes the peer.
 * const wakeRatio = (s: RingChannelStats) => s.doorbellsRung / Math.max(1, s.framesOut);
 * ```
 */
export interface RingChannelStats {
  /** Frames read from the inbound ring. */
  framesIn: number;
  /** Receive-loop polls that found records (framesIn / batches is the mean batch). */
  batches: number;
  /** Receive-loop polls that found nothing (spinning before a park). */
  emptyPolls: number;
  /** Frames written to the outbound ring. */
  framesOut: number;
  /** Doorbells this side rang (peer was parked), as frames or futex wakes. */
  doorbellsRung: number;
  /** Of those, futex wakes. */
  futexWakes: number;
  /** Times this side's consumer parked. */
  parks: number;
  /** Times a publish found the ring full. */
  fullCount: number;
  /** Times this side's producer parked waiting for space. */
  spaceWaits: number;
  /**
   * Frames read by {@link RingChannel.drain} (the client reads its ring before each port frame:
   * DOORBELL, PONG, ERR, MSG) rather than by the receive loop; always 0 in the broker, which
   * never drains. Near 0 on a busy stream.
   */
  drainedFrames: number;
}

/** Frames through the rings of a region; see the module doc. */
export class RingChannel {
  /** Channels of this process with a sleeper waiting for a DOORBELL frame (see #wakeRung). */
  static #sleeping = new Set<RingChannel>();

  readonly region: Region;
  readonly stats: RingChannelStats = {
    framesIn: 0,
    batches: 0,
    emptyPolls: 0,
    framesOut: 0,
    doorbellsRung: 0,
    futexWakes: 0,
    parks: 0,
    fullCount: 0,
    spaceWaits: 0,
    drainedFrames: 0,
  };
  #opts: RingChannelOptions;
  #bytes: Uint8Array;
  #producer: RingProducer;
  #consumer: RingConsumer;
  #consumerWords: Int32Array;
  #rxProducerIdx: number;
  #dataBell: Doorbell;
  #spaceBell: Doorbell;
  #dataParker: Parker;
  #spaceParker: Parker;
  #txId: number;
  #rxId: number;
  #packr = new Packr(MSGPACK_OPTIONS);
  #notifyScheduled = false;
  #running = false;
  // Set by stop(): the mapping may be unmapped right after, so nothing may touch it again.
  #stopped = false;
  #wakers: { data: Waker[]; space: Waker[] } = { data: [], space: [] };
  #handler: (bytes: Uint8Array, offset: number, length: number) => unknown;

  constructor(region: Region, opts: RingChannelOptions) {
    this.region = region;
    this.#opts = opts;
    const bytes = this.#bytes = region.bytes;
    this.#txId = region.side === "guest" ? RingId.OUTBOUND : RingId.INBOUND;
    this.#rxId = region.side === "guest" ? RingId.INBOUND : RingId.OUTBOUND;
    this.#producer = new RingProducer(bytes, region.tx);
    this.#consumer = new RingConsumer(bytes, region.rx, { maxBodyLength: opts.maxFrameBytes });
    this.#consumerWords = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
    this.#rxProducerIdx = region.rx.control.PRODUCER_POSITION >> 2;
    const futex = opts.futex;
    const ring = (id: number, kind: number) =>
      futex?.peerSleeps
        ? (word: Int32Array, index: number) => {
          this.stats.doorbellsRung++;
          this.stats.futexWakes++;
          futex.wake(word, index);
        }
        : () => {
          this.stats.doorbellsRung++;
          opts.ringDoorbell(id, kind);
        };
    this.#dataBell = new Doorbell(
      bytes,
      region.tx,
      ring(this.#txId, DoorbellKind.Data),
      "consumer",
    );
    this.#spaceBell = new Doorbell(
      bytes,
      region.rx,
      ring(this.#rxId, DoorbellKind.Space),
      "producer",
    );
    this.#dataParker = new Parker(bytes, region.rx, futex?.sleep?.data ?? this.#sleep("data"), {
      sliceMs: IDLE_PARK_SLICE_MAX_MS, // each wait passes its own, shorter, timeout
    });
    this.#spaceParker = new Parker(bytes, region.tx, futex?.sleep?.space ?? this.#sleep("space"), {
      sliceMs: PARK_SLICE_MS,
      sleeper: "producer",
    });
    this.#consumer.retained.onRelease = () => {
      if (this.#stopped) return; // the mapping may be gone
      this.#consumer.publishPosition();
      this.#spaceBell.notify(); // the peer's producer may be waiting for what this freed
    };
    // One frame object for every record (reuseFrames): parseFrameInto fills it in place.
    const reused = opts.reuseFrames ? new LocatedFrame() : undefined;
    this.#handler = reused
      ? (b, offset, length) => {
        this.stats.framesIn++;
        return opts.onFrame(parseFrameInto(reused, b, offset, length, opts.maxFrameBytes));
      }
      : (b, offset, length) => {
        this.stats.framesIn++;
        return opts.onFrame(parseFrameAt(b, offset, length, opts.maxFrameBytes));
      };
  }

  /** True once {@link stop} ran (or the ring failed): nothing touches the region any more. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Largest frame that fits in the transmit ring. */
  get maxFrameOut(): number {
    return this.#producer.maxBodyLength;
  }

  /** Start the receive loop. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#track(this.#receiveLoop());
  }

  /**
   * Stop the receive loop and wake anything waiting. Resolves once nothing touches the
   * region any more: only then may the mapping be unmapped.
   */
  stop(): Promise<void> {
    this.#running = false;
    this.#stopped = true;
    for (const w of this.#resumeWaiters.splice(0)) w();
    this.#wakeAll("data");
    this.#wakeAll("space");
    return this.#idle();
  }

  #active = 0;
  #idleWaiters: (() => void)[] = [];

  #idle(): Promise<void> {
    if (this.#active === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  async #track<T>(work: Promise<T>): Promise<T> {
    this.#active++;
    try {
      return await work;
    } finally {
      if (--this.#active === 0) { for (const w of this.#idleWaiters.splice(0)) w(); }
    }
  }

  #paused = false;
  #resumeWaiters: (() => void)[] = [];

  /** Stop reading the receive ring (the peer's producer then fills it and waits). */
  pause(): void {
    this.#paused = true;
  }

  /** Read the receive ring again after {@link pause}. */
  resume(): void {
    this.#paused = false;
    for (const w of this.#resumeWaiters.splice(0)) w();
    this.#wakeAll("data");
  }

  /** A DOORBELL frame arrived from the peer. */
  onDoorbell(ring: number, kind: number): void {
    if (kind === DoorbellKind.Data && ring === this.#rxId) this.#wakeAll("data");
    else if (kind === DoorbellKind.Space && ring === this.#txId) this.#wakeAll("space");
  }

  /**
   * The peer's producer position in the receive ring right now (unvalidated: only compared
   * with {@link hasConsumed}, which the consumer's own validation makes safe).
   */
  peerPosition(): number {
    return Atomics.load(this.#consumerWords, this.#rxProducerIdx) >>> 0;
  }

  /** Has the receive loop consumed everything up to `position` (or stopped for good)? */
  hasConsumed(position: number): boolean {
    return this.#stopped || ((this.#consumer.position - position) | 0) >= 0;
  }

  /**
   * Keep the frame `onFrame` is called for now in the receive ring (the consumer position
   * published to the peer stays before it) until {@link release}: for a frame whose work
   * outlives the call, e.g. a message copied into a backlog, until {@link release} is called
   * with the sequence number this returns (-1 outside `onFrame`). Retention covers at most
   * half the ring (see `retained_records.ts`).
   */
  retain(): number {
    return this.#stopped ? -1 : this.#consumer.retain();
  }

  /** Is `onFrame` running now (a frame of this ring being handled)? */
  get inFrame(): boolean {
    return this.#consumer.inHandler;
  }

  /** The work on a retained frame is done (a no-op once the channel stopped). */
  release(sequence: number): void {
    if (!this.#stopped) this.#consumer.release(sequence);
  }

  /**
   * Let every retained frame go and publish what was read: the session ends while its work
   * goes on here (the peer must not send those frames again).
   */
  releaseAll(): void {
    if (!this.#stopped) this.#consumer.releaseAll();
  }

  /** Frames let go because retention would have covered more than half the ring. */
  get unretained(): number {
    return this.#consumer.retained.unretained;
  }

  /** Make a parked receive loop look at the ring now (as a DOORBELL frame would). */
  kick(): void {
    this.#wakeAll("data");
  }

  /**
   * Read every record now in the receive ring, synchronously. Called before acting on a port
   * frame, so that a port frame never overtakes what was put in the ring before it. Only what
   * is there when it starts: a peer that goes on writing while we read (a broker with a
   * backlog for a slow callback) must not hold this event loop until it stops.
   * Returns false when the ring turned out corrupt (the session is being reset).
   */
  drain(): boolean {
    if (this.#stopped) return false;
    if (this.#paused) return true;
    try {
      const consumer = this.#consumer;
      let left = consumer.available();
      const framesBefore = this.stats.framesIn;
      // Bounded twice: by the bytes there now, and by a count no ring of records reaches.
      for (let i = 0; i < 1 << 16 && left > 0; i++) {
        const before = consumer.position;
        if (consumer.poll(this.#handler, BATCH_RECORDS, left) === 0) break;
        left -= (consumer.position - before) >>> 0;
      }
      this.stats.drainedFrames += this.stats.framesIn - framesBefore;
      this.#spaceBell.notify();
      return true;
    } catch (err) {
      this.#fail(err as Error);
      return false;
    }
  }

  /** Copy a frame into the transmit ring. False when there is no room now. */
  tryWriteFrame(op: number, head: Uint8Array, payload: Uint8Array = EMPTY): boolean {
    if (this.#stopped) return false;
    const length = FrameHeader.LENGTH + head.length + payload.length;
    if (length > this.#producer.maxBodyLength) return false;
    const at = this.#claim(length);
    if (at < 0) return false;
    const b = this.#bytes;
    writeFrameHeader(b, at, op, 0, head.length, payload.length);
    copyRange(b, at + FrameHeader.LENGTH, head, 0, head.length);
    b.set(payload, at + FrameHeader.LENGTH + head.length);
    this.#producer.commit(length);
    this.#committed();
    return true;
  }

  /**
   * Copy an already-encoded frame, `length` bytes of `source` from `start` (default: all of
   * it), into the transmit ring; a small one without making a view of it (a sender's queue or
   * a backlog holds many frames in one buffer). False when there is no room now.
   */
  tryWriteEncoded(source: Uint8Array, start = 0, length: number = source.length - start): boolean {
    if (start < 0 || length < 0 || start + length > source.length) {
      throw new RangeError(`tryWriteEncoded: ${length} bytes from ${start} of ${source.length}`);
    }
    if (this.#stopped || length > this.#producer.maxBodyLength) return false;
    const at = this.#claim(length);
    if (at < 0) return false;
    copyRange(this.#bytes, at, source, start, length);
    this.#producer.commit(length);
    this.#committed();
    return true;
  }

  /**
   * Write a MSG frame built from a PUB head's tail (see `writeMsgHead`) straight into the
   * transmit ring: the head is spliced, not re-encoded, and the payload, `length` bytes of
   * `source` from `start` (e.g. the publisher's ring record), copied once, without making a
   * view of it when it is small.
   */
  tryWriteMsg(
    sid: number,
    pubTail: Uint8Array,
    source: Uint8Array,
    start: number,
    length: number,
  ): boolean {
    if (this.#stopped) return false;
    const max = FrameHeader.LENGTH + msgHeadMaxLength(pubTail) + length;
    if (max > this.#producer.maxBodyLength) return false;
    const at = this.#claim(max);
    if (at < 0) return false;
    const b = this.#bytes;
    const headLength = writeMsgHead(b, at + FrameHeader.LENGTH, sid, pubTail);
    writeFrameHeader(b, at, Op.Msg, 0, headLength, length);
    copyRange(b, at + FrameHeader.LENGTH + headLength, source, start, length);
    this.#producer.commit(FrameHeader.LENGTH + headLength + length);
    this.#committed();
    return true;
  }

  /**
   * Encode `value` with msgpack straight into a PUB frame in the transmit ring (no
   * intermediate buffer). Returns "ok", "full" (retry after {@link waitForSpace}) or
   * "too-large" (does not fit in the ring at all).
   */
  tryPublishInPlace(head: Uint8Array, value: unknown): "ok" | "full" | "too-large" {
    if (this.#stopped) return "full";
    const max = this.#producer.maxBodyLength;
    const claim = this.claimSize(head, value);
    if (value instanceof Uint8Array && claim > max) return "too-large";
    const at = this.#claim(claim);
    if (at < 0) return "full";
    const b = this.#bytes;
    const payloadAt = at + FrameHeader.LENGTH + head.length;
    copyRange(b, at + FrameHeader.LENGTH, head, 0, head.length); // a head is small: no `set`
    if (value instanceof Uint8Array) {
      // Binary: its msgpack encoding is a bin header and the bytes, written into the slot.
      const h = writeBinHeader(b, payloadAt, value.length);
      b.set(value, payloadAt + h);
      writeFrameHeader(b, at, Op.Pub, 0, head.length, h + value.length);
      this.#producer.commit(FrameHeader.LENGTH + head.length + h + value.length);
      this.#committed();
      return "ok";
    }
    // The slot is the Packr's buffer: on overflow msgpackr allocates its own instead of
    // writing past the claim, and we notice below.
    const slot = bufferView(b, payloadAt, at + claim);
    let out: Packed;
    try {
      out = packInto(this.#packr, slot, value);
    } catch (err) {
      this.#producer.abort();
      throw err;
    }
    if (out === slot) {
      // In place. msgpackr may have aligned the start: that gap is the frame's padding.
      const pad = out.start;
      const payloadLength = out.end - out.start;
      writeFrameHeader(b, at, Op.Pub, pad, head.length, payloadLength);
      this.#producer.commit(FrameHeader.LENGTH + head.length + pad + payloadLength);
      this.#committed();
      return "ok";
    }
    // msgpackr fell back to its own buffer (value larger than the slot): copy it once.
    this.#producer.abort();
    const payload = out.subarray(out.start ?? 0, out.end ?? out.length);
    const length = FrameHeader.LENGTH + head.length + payload.length;
    if (length > max) return "too-large";
    return this.tryWriteFrame(Op.Pub, head, payload) ? "ok" : "full";
  }

  /** Bytes {@link tryPublishInPlace} claims for this message (what {@link waitForSpace} needs). */
  claimSize(head: Uint8Array, value: unknown): number {
    if (value instanceof Uint8Array) return FrameHeader.LENGTH + head.length + 5 + value.length;
    const fixed = FrameHeader.LENGTH + head.length + FrameHeader.FLAGS_PAD_MASK;
    return Math.min(this.#producer.maxBodyLength, fixed + MSGPACK_HEADROOM);
  }

  /** Resolves when the transmit ring can take a frame of `length` bytes (or the channel stops). */
  waitForSpace(length: number): Promise<void> {
    return this.#track(this.#waitForSpace(length));
  }

  async #waitForSpace(length: number): Promise<void> {
    const need = Math.min(length, this.#producer.maxBodyLength);
    while (!this.#stopped && !this.#canClaim(need)) {
      this.stats.spaceWaits++;
      // A peer parked for data has read everything: what holds our room is its retention,
      // which it lets go when it sees us wait. Wake it to look (a no-op unless it is parked).
      this.#dataBell.notify();
      await this.#spaceParker.waitForData(
        () => this.#stopped || this.#canClaim(need),
        PARK_SLICE_MS,
      );
    }
  }

  /**
   * Claim transmit ring space, or -1 when full. The consumer position the claim reads was
   * written by the peer: a bogus one is the peer's ring violation (its session is reset),
   * never an exception in whoever happened to be writing to it (e.g. another VM's publish).
   */
  #claim(length: number): number {
    try {
      const at = this.#producer.tryClaim(length);
      if (at < 0) this.stats.fullCount++;
      return at;
    } catch (err) {
      if (!(err instanceof RingCorruptError)) throw err;
      this.#fail(err);
      return -1;
    }
  }

  #canClaim(length: number): boolean {
    try {
      return this.#producer.canClaim(length);
    } catch (err) {
      if (!(err instanceof RingCorruptError)) throw err;
      this.#fail(err);
      return false;
    }
  }

  #committed() {
    this.stats.framesOut++;
    if (this.#notifyScheduled) return;
    // One doorbell check per synchronous batch of frames.
    this.#notifyScheduled = true;
    queueMicrotask(() => {
      this.#notifyScheduled = false;
      if (!this.#stopped) this.#dataBell.notify();
    });
  }

  async #receiveLoop() {
    const spinMs = this.#opts.spinMs ?? DEFAULT_SPIN_MS;
    const idle = this.#opts.idleYield ?? idleYield;
    let idleSince = 0;
    // A park that timed out found nothing: park again at once, for twice as long. Spinning
    // after every slice would cost an idle channel a spin per slice.
    let parkAgain = false;
    let slice = PARK_SLICE_MS;
    let lookedAfterYield = false;
    while (this.#running) {
      if (this.#paused) {
        await new Promise<void>((r) => this.#resumeWaiters.push(r));
        continue;
      }
      let n: number;
      try {
        n = this.#consumer.poll(this.#handler, BATCH_RECORDS, BATCH_BYTES);
        if (n > 0) this.#spaceBell.notify();
        else if (this.#consumer.retained.length > 0 && this.#spaceBell.sleeperParked) {
          // Everything is read and the peer waits for room that retention holds (a frame
          // larger than the free half): let retention go rather than stall the peer.
          this.#consumer.unretainAll();
          this.#spaceBell.notify();
        }
        this.#opts.onBatch?.();
        if (RingChannel.#sleeping.size > 0) RingChannel.#wakeRungEverywhere();
      } catch (err) {
        this.#fail(err as Error);
        return;
      }
      if (n > 0) {
        this.stats.batches++;
        lookedAfterYield = false;
        idleSince = 0;
        parkAgain = false;
        slice = PARK_SLICE_MS;
        await yieldToEventLoop();
        continue;
      }
      this.stats.emptyPolls++;
      const now = performance.now();
      if (idleSince === 0) idleSince = now;
      if (!parkAgain && now - idleSince < spinMs) {
        // Several busy processes may share fewer cores: let the one we wait for run. A yield
        // that gave the core away may have let our peer write: look again at once, before
        // the event loop's turn and the other loops' polls (each may yield the core again).
        if (!lookedAfterYield && idle.emptyPoll()) {
          lookedAfterYield = true;
          continue;
        }
        lookedAfterYield = false;
        await yieldToEventLoop();
        continue;
      }
      this.stats.parks++;
      lookedAfterYield = false;
      // A doorbell frame is handled after drain() has read what it rang for, so the ring
      // looks empty when the sleeper wakes: count that as data, or the loop would park again
      // at once and every later frame would need a doorbell of its own.
      const drainedBefore = this.stats.drainedFrames;
      parkAgain = !(await this.#dataParker.waitForData(
        () =>
          this.#stopped || this.stats.drainedFrames !== drainedBefore ||
          this.#consumer.hasData(),
        slice,
      ));
      // Not while retaining: a producer that waits for room only retention holds rings before
      // it parks, and may set its parked flag just after our poll saw none; the next poll then
      // comes within one short slice.
      slice = parkAgain && this.#consumer.retained.length === 0
        ? Math.min(2 * slice, IDLE_PARK_SLICE_MAX_MS)
        : PARK_SLICE_MS;
      idleSince = 0;
    }
  }

  #sleep(which: "data" | "space") {
    return (
      word: Int32Array,
      index: number,
      expected: number,
      timeoutMs: number,
    ): Promise<void> => {
      if (this.#stopped || Atomics.load(word, index) !== expected) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const waker: Waker = {
          word,
          index,
          expected,
          done() {
            clearTimeout(timer);
            resolve();
          },
        };
        // A sleep that times out leaves the list, so an idle channel does not pile up wakers
        // for every busy loop to scan.
        const timer = setTimeout(() => {
          const list = this.#wakers[which];
          const at = list.indexOf(waker);
          if (at >= 0) list.splice(at, 1);
          resolve();
        }, timeoutMs);
        this.#wakers[which].push(waker);
        RingChannel.#sleeping.add(this);
      });
    };
  }

  /**
   * Wake sleepers whose wake word the peer already bumped. The DOORBELL frame that follows can
   * sit unread while a busy receive loop (any channel's: one broker serves many sessions)
   * keeps yielding with setImmediate: a Deno broker read such frames 5–170 ms late. So every
   * busy loop also checks the shared words of every channel's sleepers, which costs one
   * atomic load per sleeper.
   */
  static #wakeRungEverywhere() {
    for (const ch of RingChannel.#sleeping) {
      ch.#wakeRung("data");
      ch.#wakeRung("space");
      if (ch.#wakers.data.length === 0 && ch.#wakers.space.length === 0) {
        RingChannel.#sleeping.delete(ch);
      }
    }
  }

  #wakeRung(which: "data" | "space") {
    const list = this.#wakers[which];
    if (list.length === 0) return;
    const keep: Waker[] = [];
    for (const w of list) {
      if (this.#stopped || Atomics.load(w.word, w.index) !== w.expected) w.done();
      else keep.push(w);
    }
    this.#wakers[which] = keep;
  }

  #wakeAll(which: "data" | "space") {
    const futex = this.#opts.futex;
    if (futex?.sleep) {
      // This side sleeps in the kernel: bump its wake word and FUTEX_WAKE it.
      const parker = which === "data" ? this.#dataParker : this.#spaceParker;
      Atomics.add(parker.word, parker.seqIndex, 1);
      futex.wake(parker.word, parker.seqIndex);
    }
    const list = this.#wakers[which];
    this.#wakers[which] = [];
    if (this.#wakers.data.length === 0 && this.#wakers.space.length === 0) {
      RingChannel.#sleeping.delete(this);
    }
    for (const w of list) w.done();
  }

  #fail(err: Error) {
    if (!this.#running) return;
    this.stop();
    this.#opts.onCorrupt(err);
  }
}

/**
 * Event suppression for a ring: the consumer spins briefly, then announces in shared memory
 * that it is parked and sleeps; the producer rings only when it sees the announcement.
 * A busy stream therefore rings almost never. Pure TypeScript; how to ring and how to sleep
 * are pluggable (futex for host-local peers, a virtio-serial frame across a VM boundary).
 *
 * No lost wake-up (Dekker ordering, all with sequentially consistent `Atomics`):
 *
 * ```text
 *   consumer (Parker.waitForData)          producer (commit, then Doorbell.notify)
 *   seq = load(WAKE_SEQ)                   store(PRODUCER_POSITION)      <- in commit()
 *   store(PARKED, 1)                       if load(PARKED) == 1 and
 *   if ring has data: PARKED = 0, return      cas(PARKED, 1 -> 0) succeeds:
 *   sleep(WAKE_SEQ, expected = seq)           add(WAKE_SEQ, 1); ring()
 * ```
 * Either the consumer's re-check sees the record, or the producer sees PARKED=1; in the
 * latter case WAKE_SEQ changes before `ring()`, so a sleep that starts late returns at once
 * ("not-equal"). Sleeps are always bounded (`sliceMs`) as a last line of defence.
 *
 * @example
 * ```ts
 * import { futexWait, futexWake } from "../../ffi/mod.ts";
 * import { initRegion } from "./region.ts";
 * import { RingConsumer, RingProducer } from "./ring.ts";
 * // Both ends in one process, for the example; normally the producer is the peer.
 * const { bytes, outbound: ring } = initRegion(new Uint8Array(1 << 16));
 * const producer = new RingProducer(bytes, ring);
 * const consumer = new RingConsumer(bytes, ring);
 * const bell = new Doorbell(bytes, ring, (w, i) => futexWake(w, i, 1));
 * const parker = new Parker(bytes, ring, futexWait);
 * producer.tryWrite(new Uint8Array([1]));
 * bell.notify(); // false: the consumer is not parked, so nothing to wake
 * await parker.waitForData(() => consumer.hasData()); // true at once: the record is there
 * // back-pressure, the other way round: the producer parks until the consumer frees space
 * const spaceBell = new Doorbell(bytes, ring, (w, i) => futexWake(w, i, 1), "producer");
 * const spaceParker = new Parker(bytes, ring, futexWait, { sleeper: "producer" });
 * ```
 * @module
 */
import type { RingDescriptor } from "./ring.ts";

/** Wake the parked consumer: `word[index]` is the ring's CONSUMER_WAKE_SEQ (already bumped). */
export type RingFn = (word: Int32Array, index: number) => void;

/**
 * Sleep until `word[index] !== expected` or about `timeoutMs` elapsed (spurious returns are
 * fine). `futexWait` from ffi/mod.ts has exactly this shape; across a VM boundary, resolve
 * on the next doorbell frame from the port (or the timeout).
 */
export type SleepFn = (
  word: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
) => unknown;

/**
 * Who sleeps on the bell: "consumer" (waits for data; the producer rings after commit; the
 * default) or "producer" (waits for space; the consumer rings after poll, using the ring's
 * PRODUCER_PARKED / PRODUCER_WAKE_SEQ words).
 */
export type Sleeper = "consumer" | "producer";

function cells(ring: RingDescriptor, who: Sleeper): { parked: number; seq: number } {
  const c = ring.control;
  return who === "consumer"
    ? { parked: c.CONSUMER_PARKED >> 2, seq: c.CONSUMER_WAKE_SEQ >> 2 }
    : { parked: c.PRODUCER_PARKED >> 2, seq: c.PRODUCER_WAKE_SEQ >> 2 };
}

function wordsOf(bytes: Uint8Array): Int32Array {
  return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
}

/**
 * Producer side: call {@link notify} after committing (once per batch is enough).
 *
 * @example
 * ```ts
 * import { initRegion } from "./region.ts";
 * import { RingProducer } from "./ring.ts";
 * const region = initRegion(new Uint8Array(1 << 16));
 * const producer = new RingProducer(region.bytes, region.tx);
 * // across a VM boundary, the ring function sends a DOORBELL frame on the port
 * const bell = new Doorbell(region.bytes, region.tx, () => console.log("wake the guest"));
 * for (const m of [new Uint8Array([1]), new Uint8Array([2])]) producer.tryWrite(m);
 * bell.notify(); // false: the guest's reader is not parked
 * console.log(bell.rings); // 0
 * ```
 */
export class Doorbell {
  /** Doorbells rung by this producer. */
  rings = 0;
  /** Calls to notify() (for the rings/notify ratio). */
  notifies = 0;
  /** The Int32Array over the region that holds the wake word. */
  readonly word: Int32Array;
  /** Index of CONSUMER_WAKE_SEQ in {@link word}. */
  readonly seqIndex: number;
  private readonly parkedIndex: number;
  private readonly countIndex: number;
  private readonly ringFn: RingFn;

  /** `sleeper`: whose parked flag this bell watches (default "consumer"). */
  constructor(
    bytes: Uint8Array,
    ring: RingDescriptor,
    ringFn: RingFn,
    sleeper: Sleeper = "consumer",
  ) {
    this.word = wordsOf(bytes);
    const c = cells(ring, sleeper);
    this.seqIndex = c.seq;
    this.parkedIndex = c.parked;
    // Only the data doorbell is counted in shared memory (RING_COUNT); both count locally.
    this.countIndex = sleeper === "consumer" ? ring.control.RING_COUNT >> 2 : -1;
    this.ringFn = ringFn;
  }

  /** Has the sleeper set its parked flag (a hint written by the peer: never trusted further)? */
  get sleeperParked(): boolean {
    return Atomics.load(this.word, this.parkedIndex) !== 0;
  }

  /** Ring if (and only if) the consumer is parked. Returns true when it rang. */
  notify(): boolean {
    this.notifies++;
    const w = this.word;
    if (Atomics.load(w, this.parkedIndex) === 0) return false;
    if (Atomics.compareExchange(w, this.parkedIndex, 1, 0) !== 1) return false;
    Atomics.add(w, this.seqIndex, 1);
    if (this.countIndex >= 0) Atomics.add(w, this.countIndex, 1);
    this.rings++;
    this.ringFn(w, this.seqIndex);
    return true;
  }
}

/** Options of {@link Parker}. */
export interface ParkOptions {
  /** Polls of `hasData` before parking. Default 256 (a few microseconds). */
  spinIterations?: number;
  /** Longest single sleep in ms; the consumer re-checks after each. Default 50. */
  sliceMs?: number;
  /** Who parks: "consumer" (wait for data, default) or "producer" (wait for space). */
  sleeper?: Sleeper;
}

/**
 * Consumer side: wait until the ring has data, spinning briefly and then parking.
 *
 * @example
 * ```ts
 * import { futexWait } from "../../ffi/mod.ts";
 * import { initRegion } from "./region.ts";
 * import { RingConsumer } from "./ring.ts";
 * const region = initRegion(new Uint8Array(1 << 16));
 * const consumer = new RingConsumer(region.bytes, region.rx);
 * const parker = new Parker(region.bytes, region.rx, futexWait, { sliceMs: 20 });
 * const handler = (_bytes: Uint8Array, _offset: number, length: number) => console.log(length);
 * while (consumer.poll(handler, 256) === 0) {
 *   if (!(await parker.waitForData(() => consumer.hasData(), 100))) break; // 100 ms of nothing
 * }
 * ```
 */
export class Parker {
  /** Times the consumer actually went to sleep. */
  parks = 0;
  /** Times data turned up during the spin phase or the pre-sleep re-check. */
  spinHits = 0;
  readonly word: Int32Array;
  readonly seqIndex: number;
  private readonly parkedIndex: number;
  private readonly sleep: SleepFn;
  private readonly spinIterations: number;
  private readonly sliceMs: number;

  constructor(bytes: Uint8Array, ring: RingDescriptor, sleep: SleepFn, options: ParkOptions = {}) {
    this.word = wordsOf(bytes);
    const c = cells(ring, options.sleeper ?? "consumer");
    this.seqIndex = c.seq;
    this.parkedIndex = c.parked;
    this.sleep = sleep;
    this.spinIterations = options.spinIterations ?? 256;
    this.sliceMs = options.sliceMs ?? 50;
  }

  /**
   * Resolve true as soon as `hasData()` is true, or false after `timeoutMs` (default: wait
   * forever, in `sliceMs` slices). `hasData` must read the producer position with Atomics
   * (`RingConsumer.hasData` does).
   */
  async waitForData(hasData: () => boolean, timeoutMs = Infinity): Promise<boolean> {
    for (let i = 0; i < this.spinIterations; i++) {
      if (hasData()) {
        this.spinHits++;
        return true;
      }
    }
    const w = this.word;
    const deadline = timeoutMs === Infinity ? Infinity : performance.now() + timeoutMs;
    for (;;) {
      const seq = Atomics.load(w, this.seqIndex);
      Atomics.store(w, this.parkedIndex, 1);
      if (hasData()) {
        Atomics.store(w, this.parkedIndex, 0);
        this.spinHits++;
        return true;
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        Atomics.store(w, this.parkedIndex, 0);
        return false;
      }
      this.parks++;
      await this.sleep(w, this.seqIndex, seq, Math.max(1, Math.min(this.sliceMs, left)));
      Atomics.store(w, this.parkedIndex, 0);
      if (hasData()) return true;
    }
  }
}

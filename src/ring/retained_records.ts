/**
 * Records a consumer has read but whose work is not finished yet, so that the consumer
 * position it publishes stays before them. The broker retains a record of a publisher's ring
 * while a copy of its message waits in a subscriber's backlog: if the broker dies before the
 * backlog is written, the publisher's client finds the record still unread in its ring and
 * sends it again to the next broker (at least once: other subscribers may see it twice),
 * instead of the message dying uncounted with the broker's memory.
 *
 * The published position is the start of the oldest record still retained (or the read
 * position when there is none). Retention never lets a slow, or hostile, subscriber stop a
 * publisher: it covers at most `maxSpan` bytes of the ring (half of it by default), and the
 * oldest records beyond that are let go ("unretained", and counted): their messages stay in
 * the backlog, only no longer protected against a crash. The same happens to all of them when
 * the producer waits for room while the consumer has read everything: a record larger than
 * the free half must still fit ({@link RetainedRecords.unretainAll}).
 *
 * Nothing is allocated per record (a flood of backlogged messages must not cost the broker
 * garbage): a retained record is a sequence number, unique in the process, and its position
 * and count of waiting copies live in two typed arrays used as one circular buffer, which
 * doubles when full and is given back when it empties after growing large.
 *
 * @example
 * ```ts
 * import { RetainedRecords } from "./retained_records.ts";
 * const retained = new RetainedRecords(1024);
 * const record = retained.retain(64, 96); // the record at [64, 96) of the ring
 * retained.published(128); // 64: the record is not released yet
 * retained.release(record);
 * retained.published(128); // 128
 * ```
 * @module
 */

/** Slots of a new buffer (a power of two). */
const INITIAL_CAPACITY = 64;
/** A buffer at least this large is given back when retention empties. */
const RELEASE_CAPACITY = 1 << 16;
/**
 * The next sequence number no instance has issued: a ring made later (a session's next ring)
 * starts above every number of the rings before it, so a stale release never meets a record
 * of the new ring.
 */
let nextSequence = 0;

/** See the module doc. */
export class RetainedRecords {
  /** Records let go because retention would have covered more than `maxSpan` bytes. */
  unretained = 0;
  /** Called when a record's last waiting copy is done (the published position may move). */
  onRelease?: () => void;
  #maxSpan: number;
  // Retained records, oldest first: #length slots from #head (circular, #mask = capacity - 1);
  // the record in slot (#head + i) & #mask has sequence #first + i.
  #positions = new Uint32Array(INITIAL_CAPACITY);
  #waiting = new Uint32Array(INITIAL_CAPACITY);
  #mask = INITIAL_CAPACITY - 1;
  #head = 0;
  #length = 0;
  #first = nextSequence;

  /** `maxSpan`: the most ring bytes retention may cover. */
  constructor(maxSpan: number) {
    this.#maxSpan = maxSpan;
  }

  /** Records retained now (each with at least one copy waiting, or not yet looked at). */
  get length(): number {
    return this.#length;
  }

  /**
   * Retain the record at `[position, end)` for one more waiting copy (the same record again
   * adds a copy); returns its sequence number for {@link release}. `end` lets the span bound
   * be checked at once.
   */
  retain(position: number, end: number): number {
    const n = this.#length;
    const last = (this.#head + n - 1) & this.#mask;
    let sequence: number;
    if (n > 0 && this.#positions[last] === position >>> 0 && this.#waiting[last] > 0) {
      this.#waiting[last]++;
      sequence = this.#first + n - 1;
    } else {
      if (n > this.#mask) this.#grow();
      const slot = (this.#head + n) & this.#mask;
      this.#positions[slot] = position;
      this.#waiting[slot] = 1;
      this.#length = n + 1;
      sequence = this.#first + n;
      // Never lowered: an instance made later starts above every number issued before it.
      if (sequence >= nextSequence) nextSequence = sequence + 1;
    }
    this.#bound(end);
    return sequence;
  }

  /**
   * One waiting copy of the record `sequence` was written or dropped. A record already let
   * go, or another instance's, is ignored.
   */
  release(sequence: number): void {
    const i = sequence - this.#first;
    if (!(i >= 0 && i < this.#length) || !Number.isInteger(i)) return; // NaN, fractions too
    const slot = (this.#head + i) & this.#mask;
    if (this.#waiting[slot] === 0) return;
    if (--this.#waiting[slot] === 0) this.onRelease?.();
  }

  /**
   * The consumer position to publish when the consumer has read up to `readEnd`: the start of
   * the oldest record still retained, or `readEnd`.
   */
  published(readEnd: number): number {
    this.#bound(readEnd);
    return this.#length > 0 ? this.#positions[this.#head] : readEnd;
  }

  /** Let everything go and count what still waited as unretained (the producer needs room). */
  unretainAll(): void {
    for (let i = 0; i < this.#length; i++) {
      if (this.#waiting[(this.#head + i) & this.#mask] > 0) this.unretained++;
    }
    this.releaseAll();
  }

  /** Let everything go (the session ended with the broker alive). */
  releaseAll(): void {
    this.#advance(this.#length);
  }

  /** Drop finished records at the head, and the oldest while they cover more than `maxSpan`. */
  #bound(readEnd: number) {
    const positions = this.#positions, waiting = this.#waiting, mask = this.#mask;
    const max = this.#maxSpan, n = this.#length;
    let done = 0;
    while (done < n) {
      const slot = (this.#head + done) & mask;
      if (waiting[slot] > 0) {
        if (((readEnd - positions[slot]) >>> 0) <= max) break;
        this.unretained++;
      }
      done++;
    }
    if (done > 0) this.#advance(done);
  }

  /** The oldest `count` records are gone. */
  #advance(count: number) {
    this.#head = (this.#head + count) & this.#mask;
    this.#length -= count;
    this.#first += count;
    if (this.#length > 0) return;
    // Empty: start above every number issued since (by any instance), and give a large buffer back.
    this.#first = Math.max(this.#first, nextSequence);
    this.#head = 0;
    if (this.#mask + 1 >= RELEASE_CAPACITY) {
      this.#positions = new Uint32Array(INITIAL_CAPACITY);
      this.#waiting = new Uint32Array(INITIAL_CAPACITY);
      this.#mask = INITIAL_CAPACITY - 1;
    }
  }

  #grow() {
    const size = 2 * (this.#mask + 1), mask = this.#mask;
    const positions = new Uint32Array(size), waiting = new Uint32Array(size);
    for (let i = 0; i < this.#length; i++) {
      const slot = (this.#head + i) & mask;
      positions[i] = this.#positions[slot];
      waiting[i] = this.#waiting[slot];
    }
    this.#positions = positions;
    this.#waiting = waiting;
    this.#mask = size - 1;
    this.#head = 0;
  }
}

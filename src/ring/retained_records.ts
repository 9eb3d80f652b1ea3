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
 * and count of waiting copies live in two arrays.
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

/** Items consumed at the head before the arrays are sliced. */
const COMPACT_AFTER = 1024;
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
  // Retained records, oldest first, from #head on; the one at index i has sequence #base + i.
  #positions: number[] = [];
  #waiting: number[] = [];
  #head = 0;
  #base = nextSequence;

  /** `maxSpan`: the most ring bytes retention may cover. */
  constructor(maxSpan: number) {
    this.#maxSpan = maxSpan;
  }

  /** Records retained now (each with at least one copy waiting, or not yet looked at). */
  get length(): number {
    return this.#positions.length - this.#head;
  }

  /**
   * Retain the record at `[position, end)` for one more waiting copy (the same record again
   * adds a copy); returns its sequence number for {@link release}. `end` lets the span bound
   * be checked at once.
   */
  retain(position: number, end: number): number {
    const last = this.#positions.length - 1;
    let sequence: number;
    if (last >= this.#head && this.#positions[last] === position && this.#waiting[last] > 0) {
      this.#waiting[last]++;
      sequence = this.#base + last;
    } else {
      this.#positions.push(position);
      this.#waiting.push(1);
      sequence = this.#base + last + 1;
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
    const i = sequence - this.#base;
    if (i < this.#head || i >= this.#positions.length || this.#waiting[i] === 0) return;
    if (--this.#waiting[i] === 0) this.onRelease?.();
  }

  /**
   * The consumer position to publish when the consumer has read up to `readEnd`: the start of
   * the oldest record still retained, or `readEnd`.
   */
  published(readEnd: number): number {
    this.#bound(readEnd);
    return this.#head < this.#positions.length ? this.#positions[this.#head] : readEnd;
  }

  /** Let everything go and count what still waited as unretained (the producer needs room). */
  unretainAll(): void {
    for (let i = this.#head; i < this.#positions.length; i++) {
      if (this.#waiting[i] > 0) this.unretained++;
    }
    this.releaseAll();
  }

  /** Let everything go (the session ended with the broker alive). */
  releaseAll(): void {
    this.#base = Math.max(this.#base + this.#positions.length, nextSequence);
    this.#positions.length = 0;
    this.#waiting.length = 0;
    this.#head = 0;
  }

  /** Drop finished records at the head, and the oldest while they cover more than `maxSpan`. */
  #bound(readEnd: number) {
    const positions = this.#positions, waiting = this.#waiting, max = this.#maxSpan;
    let head = this.#head;
    while (head < positions.length) {
      if (waiting[head] > 0) {
        if (((readEnd - positions[head]) >>> 0) <= max) break;
        this.unretained++;
      }
      head++;
    }
    if (head === positions.length) {
      this.#base = Math.max(this.#base + head, nextSequence);
      positions.length = 0;
      waiting.length = 0;
      head = 0;
    } else if (head >= COMPACT_AFTER && head * 2 >= positions.length) {
      this.#base += head;
      this.#positions = positions.slice(head);
      this.#waiting = waiting.slice(head);
      head = 0;
    }
    this.#head = head;
  }
}

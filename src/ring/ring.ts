/**
 * Single-producer single-consumer byte ring over a plain `Uint8Array` (a shared mapping in
 * production, any buffer in tests). No FFI here.
 *
 * Positions are free-running u32 byte counters kept in the ring's control block (see
 * `layout.ts`); every shared position is read and written with `Atomics` on an Int32Array
 * (Bun hoists plain reads out of loops, and the store must publish the record body).
 * Each side keeps its own position in a local and never re-reads it from shared memory.
 *
 * The consumer treats the producer as hostile: each record header word is read once into a
 * local; the producer position must never move backwards, never run more than `capacity`
 * ahead of the consumer, and must stay 8-byte aligned; record lengths, types and padding are
 * validated before any byte is handed out; nothing outside `[dataOffset, dataOffset+capacity)`
 * is read. Every loop is bounded by `capacity / 8`. A violation throws {@link RingCorruptError}
 * and leaves the consumer position where it was before the offending record.
 *
 * @example
 * ```ts
 * import { RingConsumer, RingProducer } from "./ring.ts";
 * import { initRegion } from "./region.ts";
 * const bytes = new Uint8Array(1 << 16);
 * const r = initRegion(bytes);
 * const p = new RingProducer(bytes, r.outbound), c = new RingConsumer(bytes, r.outbound);
 * const at = p.tryClaim(5);            // -1 when full
 * bytes.set([1, 2, 3], at);
 * p.commit(3);                         // commit less than claimed
 * c.poll((buf, off, len) => console.log(buf.subarray(off, off + len))); // [1, 2, 3]
 * ```
 * @module
 */
import {
  maxBodyLength,
  RECORD,
  recordLength,
  RecordType,
  type RingControlOffsets,
} from "./layout.ts";
import { RetainedRecords } from "./retained_records.ts";

/** Where one ring lives inside a region (byte offsets into the region's Uint8Array). */
export interface RingDescriptor {
  /** Byte offset of the first data byte. Must be a multiple of 8. */
  dataOffset: number;
  /** Data bytes; a power of two. */
  capacity: number;
  /** Absolute offsets of the ring's control words. */
  control: RingControlOffsets;
}

/** Why a ring was judged corrupt. */
export type RingCorruptReason =
  | "producer-position-backwards"
  | "producer-position-past-capacity"
  | "producer-position-misaligned"
  | "consumer-position-invalid"
  | "record-length-invalid"
  | "record-past-producer-position"
  | "record-past-ring-end"
  | "record-type-invalid"
  | "padding-not-at-end"
  | "descriptor-invalid";

/**
 * The other side broke the ring protocol (or memory was corrupted). The ring cannot be
 * trusted any more: report, detach and resynchronise (re-initialise the region).
 *
 * @example
 * ```ts
 * import { initRegion } from "./region.ts";
 * const region = initRegion(new Uint8Array(1 << 16));
 * const consumer = new RingConsumer(region.bytes, region.outbound);
 * try {
 *   consumer.poll((bytes, offset, length) => console.log(bytes.subarray(offset, offset + length)));
 * } catch (e) {
 *   if (e instanceof RingCorruptError) console.error(e.reason, e.position);
 * }
 * ```
 */
export class RingCorruptError extends Error {
  /** Machine-readable reason. */
  readonly reason: RingCorruptReason;
  /** The local position (consumer or producer) at which the problem was found. */
  readonly position: number;
  constructor(reason: RingCorruptReason, position: number, detail: string) {
    super(`ring corrupt (${reason}) at position ${position}: ${detail}`);
    this.name = "RingCorruptError";
    this.reason = reason;
    this.position = position;
  }
}

/**
 * Called once per DATA or CONTROL record. `bytes` is the whole region; the body is
 * `bytes[offset, offset + length)`. The view is only valid until the handler returns (the
 * producer may overwrite the slot afterwards): copy what you keep. Returning `false` ends
 * the poll after this record.
 */
export type RecordHandler = (
  bytes: Uint8Array,
  offset: number,
  length: number,
  type: number,
  flags: number,
) => unknown;

const ALIGN_MASK = RECORD.ALIGNMENT - 1;

class RingBase {
  readonly bytes: Uint8Array;
  readonly capacity: number;
  readonly dataOffset: number;
  protected readonly mask: number;
  protected readonly i32: Int32Array;
  protected readonly u32: Uint32Array;
  protected readonly u16: Uint16Array;
  protected readonly producerIdx: number;
  protected readonly consumerIdx: number;

  constructor(bytes: Uint8Array, d: RingDescriptor) {
    const { capacity, dataOffset } = d;
    const bad = (why: string) => new RingCorruptError("descriptor-invalid", 0, why);
    if (bytes.byteOffset % 8 !== 0) throw bad("region bytes must start 8-byte aligned");
    if (!Number.isInteger(capacity) || capacity < 16 || (capacity & (capacity - 1)) !== 0) {
      throw bad(`capacity ${capacity} is not a power of two >= 16`);
    }
    if (capacity > 1 << 30) throw bad(`capacity ${capacity} exceeds 2^30`);
    if (!Number.isInteger(dataOffset) || dataOffset < 0 || dataOffset % 8 !== 0) {
      throw bad(`data offset ${dataOffset} not 8-byte aligned`);
    }
    if (dataOffset + capacity > bytes.byteLength) {
      throw bad(`ring [${dataOffset}, ${dataOffset + capacity}) outside ${bytes.byteLength} bytes`);
    }
    for (const off of [d.control.PRODUCER_POSITION, d.control.CONSUMER_POSITION]) {
      if (!Number.isInteger(off) || off < 0 || off % 4 !== 0 || off + 4 > bytes.byteLength) {
        throw bad(`control word offset ${off} invalid`);
      }
      if (off + 4 > dataOffset && off < dataOffset + capacity) {
        throw bad(`control word ${off} inside the ring data`);
      }
    }
    this.bytes = bytes;
    this.capacity = capacity;
    this.dataOffset = dataOffset;
    this.mask = capacity - 1;
    const words = bytes.byteLength >> 2;
    this.i32 = new Int32Array(bytes.buffer, bytes.byteOffset, words);
    this.u32 = new Uint32Array(bytes.buffer, bytes.byteOffset, words);
    this.u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, words * 2);
    this.producerIdx = d.control.PRODUCER_POSITION >> 2;
    this.consumerIdx = d.control.CONSUMER_POSITION >> 2;
  }

  /** Producer position as published in shared memory (u32). */
  loadProducerPosition(): number {
    return Atomics.load(this.i32, this.producerIdx) >>> 0;
  }

  /** Consumer position as published in shared memory (u32). */
  loadConsumerPosition(): number {
    return Atomics.load(this.i32, this.consumerIdx) >>> 0;
  }
}

/**
 * Producer side of a ring. One instance per ring per process; not re-entrant.
 *
 * @example
 * ```ts
 * import { initRegion } from "./region.ts";
 * const region = initRegion(new Uint8Array(1 << 16));
 * const p = new RingProducer(region.bytes, region.outbound);
 * if (!p.tryWrite(new TextEncoder().encode("hi"))) console.log("full, retry later");
 * ```
 */
export class RingProducer extends RingBase {
  /** Largest body accepted by {@link tryClaim}. */
  readonly maxBodyLength: number;
  private tail: number;
  private headCache: number;
  private claimIndex = -1;
  private claimLength = 0;
  private claimType = 0;
  private claimFlags = 0;

  constructor(bytes: Uint8Array, d: RingDescriptor) {
    super(bytes, d);
    this.maxBodyLength = maxBodyLength(this.capacity);
    const tail = this.loadProducerPosition();
    const head = this.loadConsumerPosition();
    if ((tail & ALIGN_MASK) !== 0) {
      throw new RingCorruptError("producer-position-misaligned", tail, "at attach");
    }
    if ((head & ALIGN_MASK) !== 0 || ((tail - head) >>> 0) > this.capacity) {
      throw new RingCorruptError("consumer-position-invalid", tail, `consumer at ${head}`);
    }
    this.tail = tail;
    this.headCache = head;
  }

  /** The local producer position (u32 byte counter). */
  get position(): number {
    return this.tail;
  }

  /** Re-read the consumer position, validating it lies between the last seen one and ours. */
  private refreshHead(): number {
    const head = this.loadConsumerPosition();
    const advanced = (head - this.headCache) >>> 0;
    if ((head & ALIGN_MASK) !== 0 || advanced > ((this.tail - this.headCache) >>> 0)) {
      throw new RingCorruptError(
        "consumer-position-invalid",
        this.tail,
        `consumer position ${head} outside [${this.headCache}, ${this.tail}]`,
      );
    }
    this.headCache = head;
    return head;
  }

  /** Free bytes right now (refreshes the consumer position). */
  freeBytes(): number {
    return this.capacity - ((this.tail - this.refreshHead()) >>> 0);
  }

  /**
   * True when {@link tryClaim}(`length`) would succeed now, counting the padding needed at
   * the wrap (refreshes the consumer position). Use it as the "space available" condition
   * of a producer-side Parker.
   */
  canClaim(length: number): boolean {
    const need = recordLength(length);
    const toEnd = this.capacity - (this.tail & this.mask);
    const free = this.capacity - ((this.tail - this.refreshHead()) >>> 0);
    return free >= (need > toEnd ? toEnd + need : need);
  }

  /**
   * Reserve a contiguous slot for a record body of `length` bytes. Returns the byte offset in
   * the region where the body goes, or -1 when the ring has no room now (the consumer must
   * catch up). Follow with {@link commit} (or {@link abort}) before claiming again.
   * When the slot would cross the end of the ring, a PADDING record is published first (even
   * if the claim then fails), so a record of up to `maxBodyLength` bytes always fits once
   * the consumer has caught up.
   */
  tryClaim(length: number, type: number = RecordType.DATA, flags = 0): number {
    if (this.claimIndex >= 0) throw new Error("tryClaim: previous claim not committed/aborted");
    if (!Number.isInteger(length) || length < 0 || length > this.maxBodyLength) {
      throw new RangeError(`tryClaim: length ${length} outside [0, ${this.maxBodyLength}]`);
    }
    if (type !== RecordType.DATA && type !== RecordType.CONTROL) {
      throw new RangeError(`tryClaim: invalid record type ${type}`);
    }
    const need = recordLength(length);
    const cap = this.capacity;
    let free = cap - ((this.tail - this.headCache) >>> 0);
    let index = this.tail & this.mask;
    const toEnd = cap - index;
    const want = need > toEnd ? toEnd + need : need;
    if (free < want) free = cap - ((this.tail - this.refreshHead()) >>> 0);
    if (need > toEnd) {
      if (free < toEnd) return -1;
      this.writeHeader(index, toEnd - RECORD.HEADER_SIZE, RecordType.PADDING, 0);
      this.tail = (this.tail + toEnd) >>> 0;
      Atomics.store(this.i32, this.producerIdx, this.tail | 0);
      free -= toEnd;
      index = 0;
    }
    if (free < need) return -1;
    this.claimIndex = index;
    this.claimLength = length;
    this.claimType = type;
    this.claimFlags = flags & 0xffff;
    return this.dataOffset + index + RECORD.HEADER_SIZE;
  }

  /**
   * Publish the claimed record with a body of `length` bytes (default: the claimed length;
   * may be less, never more).
   */
  commit(length: number = this.claimLength): void {
    const index = this.claimIndex;
    if (index < 0) throw new Error("commit: nothing claimed");
    if (!Number.isInteger(length) || length < 0 || length > this.claimLength) {
      throw new RangeError(`commit: length ${length} outside [0, ${this.claimLength}]`);
    }
    this.writeHeader(index, length, this.claimType, this.claimFlags);
    this.claimIndex = -1;
    this.tail = (this.tail + recordLength(length)) >>> 0;
    Atomics.store(this.i32, this.producerIdx, this.tail | 0);
  }

  /** Drop the current claim without publishing anything. */
  abort(): void {
    this.claimIndex = -1;
  }

  /** Copy `body` into the ring as one record. False when there is no room now. */
  tryWrite(body: Uint8Array, type: number = RecordType.DATA, flags = 0): boolean {
    const at = this.tryClaim(body.byteLength, type, flags);
    if (at < 0) return false;
    this.bytes.set(body, at);
    this.commit(body.byteLength);
    return true;
  }

  private writeHeader(index: number, length: number, type: number, flags: number): void {
    const at = this.dataOffset + index;
    this.u32[(at + RECORD.LENGTH) >> 2] = length;
    this.u16[(at + RECORD.TYPE) >> 1] = type;
    this.u16[(at + RECORD.FLAGS) >> 1] = flags;
  }
}

/**
 * Consumer side of a ring. Validates everything the producer wrote (see module doc).
 *
 * @example
 * ```ts
 * import { initRegion } from "./region.ts";
 * const region = initRegion(new Uint8Array(1 << 16));
 * new RingProducer(region.bytes, region.outbound).tryWrite(new Uint8Array([1, 2, 3]));
 * const c = new RingConsumer(region.bytes, region.outbound);
 * const n = c.poll((bytes, off, len) => console.log(bytes.subarray(off, off + len)), 256); // 1
 * ```
 */
export class RingConsumer extends RingBase {
  /** Largest body accepted in a record (may be lowered to enforce a frame limit). */
  maxBodyLength: number;
  /**
   * Records read but not finished (see `retained_records.ts`): the published consumer
   * position stays at the oldest of them, within half the ring.
   */
  readonly retained: RetainedRecords;
  private head: number;
  private lastTail: number;
  /** During a handler: the ring position of its record and the end of what was read. */
  private recordAt = -1;
  private readEnd: number;

  constructor(bytes: Uint8Array, d: RingDescriptor, options: { maxBodyLength?: number } = {}) {
    super(bytes, d);
    this.maxBodyLength = Math.min(options.maxBodyLength ?? Infinity, maxBodyLength(this.capacity));
    const head = this.loadConsumerPosition();
    const tail = this.loadProducerPosition();
    if ((head & ALIGN_MASK) !== 0) {
      throw new RingCorruptError("consumer-position-invalid", head, "misaligned at attach");
    }
    this.head = head;
    this.lastTail = head;
    this.readEnd = head;
    this.retained = new RetainedRecords(this.capacity / 2);
    this.retained.onRelease = () => this.publishPosition();
    this.checkTail(tail);
  }

  /**
   * Retain the record the handler is called for now (one more waiting copy of it): returns
   * its sequence number, or -1 outside a handler. Pass it to {@link release} when the copy is
   * written or dropped.
   */
  retain(): number {
    if (this.recordAt < 0) return -1;
    return this.retained.retain(this.recordAt, this.readEnd);
  }

  /** Is a handler running now (see {@link retain})? */
  get inHandler(): boolean {
    return this.recordAt >= 0;
  }

  /** A waiting copy of a retained record is done ({@link RetainedRecords.onRelease} follows). */
  release(sequence: number): void {
    this.retained.release(sequence);
  }

  /** Let every retained record go, counted as unretained, and publish the read position. */
  unretainAll(): void {
    this.retained.unretainAll();
    this.publishPosition();
  }

  /** Release every retained record and publish the read position. */
  releaseAll(): void {
    this.retained.releaseAll();
    this.publishPosition();
  }

  /**
   * Publish the consumer position: the oldest retained record's, or what was read. Inside a
   * handler its record is not done yet: the position may not pass its start (it could still
   * be retained, and the position must never move back).
   */
  publishPosition(): void {
    const end = this.recordAt >= 0 ? this.recordAt : this.readEnd;
    const at = this.retained.length > 0 ? this.retained.published(end) : end;
    // Our own cache line: the producer reads it only when it thinks the ring is full.
    Atomics.store(this.i32, this.consumerIdx, at | 0);
  }

  /** The local consumer position (u32 byte counter). */
  get position(): number {
    return this.head;
  }

  /** True when the producer has published something not yet consumed (not validated). */
  hasData(): boolean {
    return this.loadProducerPosition() !== this.head;
  }

  /** Unread bytes (validated; throws RingCorruptError on a bad producer position). */
  available(): number {
    return this.checkTail(this.loadProducerPosition());
  }

  private checkTail(tail: number): number {
    const avail = (tail - this.head) >>> 0;
    if (avail > this.capacity) {
      const backwards = avail >= 0x8000_0000; // i.e. tail is behind head
      throw new RingCorruptError(
        backwards ? "producer-position-backwards" : "producer-position-past-capacity",
        this.head,
        backwards
          ? `producer position ${tail} is behind the consumer (${this.head})`
          : `producer position ${tail} is ${avail} bytes ahead (capacity ${this.capacity})`,
      );
    }
    if (((tail - this.lastTail) >>> 0) > this.capacity) {
      throw new RingCorruptError(
        "producer-position-backwards",
        this.head,
        `producer position ${tail} is behind ${this.lastTail}`,
      );
    }
    if ((avail & ALIGN_MASK) !== 0) {
      throw new RingCorruptError("producer-position-misaligned", this.head, `producer at ${tail}`);
    }
    this.lastTail = tail;
    return avail;
  }

  /**
   * Deliver up to `limit` DATA/CONTROL records (and, once at least one was delivered, stop
   * after `maxBytes` of ring space, or when the handler returns `false`) to `handler`, in
   * order. The consumer position is published
   * after each record the handler returned from (and after one that threw: it counts as
   * consumed), so a producer that outlives a crashed consumer knows exactly which records were
   * never handled (or, {@link retain}ed, never finished). Returns the number of records
   * delivered. PADDING is skipped silently.
   * Throws {@link RingCorruptError} on any protocol violation; records before the bad one are
   * delivered and consumed.
   */
  poll(handler: RecordHandler, limit = Infinity, maxBytes = Infinity): number {
    const tail = this.loadProducerPosition();
    const avail = this.checkTail(tail);
    if (avail === 0) return 0;
    const bytes = this.bytes, u32 = this.u32, u16 = this.u16;
    const cap = this.capacity, mask = this.mask, base = this.dataOffset;
    const maxBody = this.maxBodyLength;
    const i32 = this.i32, consumerIdx = this.consumerIdx, retained = this.retained;
    let consumed = 0;
    let delivered = 0;
    try {
      while (consumed < avail && delivered < limit && (delivered === 0 || consumed < maxBytes)) {
        const pos = (this.head + consumed) >>> 0;
        const index = pos & mask;
        const at = base + index;
        // Each header field is read exactly once into a local.
        const length = u32[(at + RECORD.LENGTH) >> 2];
        const type = u16[(at + RECORD.TYPE) >> 1];
        const flags = u16[(at + RECORD.FLAGS) >> 1];
        const toEnd = cap - index;
        if (length > maxBody) {
          throw new RingCorruptError("record-length-invalid", pos, `length ${length} > ${maxBody}`);
        }
        const size = recordLength(length);
        if (size > avail - consumed) {
          throw new RingCorruptError(
            "record-past-producer-position",
            pos,
            `record of ${size} bytes, only ${avail - consumed} published`,
          );
        }
        if (size > toEnd) {
          throw new RingCorruptError(
            "record-past-ring-end",
            pos,
            `record of ${size} bytes, ${toEnd} to end`,
          );
        }
        if (type === RecordType.PADDING) {
          if (size !== toEnd) {
            throw new RingCorruptError(
              "padding-not-at-end",
              pos,
              `padding of ${size}, ${toEnd} to end`,
            );
          }
          consumed += size;
          continue;
        }
        if (type !== RecordType.DATA && type !== RecordType.CONTROL) {
          throw new RingCorruptError("record-type-invalid", pos, `type ${type}`);
        }
        consumed += size;
        delivered++;
        let more: unknown;
        this.recordAt = pos;
        const end = this.readEnd = (this.head + consumed) >>> 0;
        try {
          more = handler(bytes, at + RECORD.HEADER_SIZE, length, type, flags);
        } finally {
          this.recordAt = -1;
          // Our own cache line: the producer reads it only when it thinks the ring is full.
          Atomics.store(
            i32,
            consumerIdx,
            (retained.length > 0 ? retained.published(end) : end) | 0,
          );
        }
        if (more === false) break;
      }
    } finally {
      if (consumed > 0) {
        this.head = this.readEnd = (this.head + consumed) >>> 0;
        this.publishPosition();
      }
    }
    return delivered;
  }
}

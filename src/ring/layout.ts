/**
 * The vbus shared-memory region layout, described once. Every offset used by
 * `ring.ts`, `region.ts` and `doorbell.ts` comes from here; nothing else hard-codes a number.
 *
 * A region is one mapping (an ivshmem BAR / a /dev/shm file, power of two recommended)
 * shared by exactly one guest and one host. All integers are little-endian (x86_64 on both
 * sides), all positions and flags are 32-bit words accessed with `Atomics` on an Int32Array.
 *
 * ```text
 *  offset  size  region header (HEADER_SIZE = 4096, one page)
 *  ------  ----  ----------------------------------------------------------------------
 *     0      4   MAGIC             0x53554256 ("VBUS" little-endian)
 *     4      4   LAYOUT_VERSION    1
 *     8      4   STATE             0 empty | 1 initialising | 2 ready   (written by host)
 *    12      4   EPOCH             bumped by every host (re)initialisation, never 0 when ready
 *    16      4   REGION_SIZE       bytes of the whole region
 *    20      4   HEADER_SIZE       4096
 *    24      4   OUTBOUND_OFFSET   byte offset of the guest->host ring data
 *    28      4   OUTBOUND_CAPACITY power of two
 *    32      4   INBOUND_OFFSET    byte offset of the host->guest ring data
 *    36      4   INBOUND_CAPACITY  power of two
 *    64          host line:  HOST_ATTACHED (epoch the host serves, 0 = detached), HOST_PID,
 *                            HOST_HEARTBEAT (free-running counter)
 *   128          guest line: GUEST_ATTACHED (epoch the guest attached to, 0 = detached),
 *                            GUEST_PID, GUEST_HEARTBEAT
 *   256   256    ring control block, OUTBOUND (guest->host)
 *   512   256    ring control block, INBOUND  (host->guest)
 *   768 ..4095   reserved (zero)
 *
 *  ring control block (CONTROL_BLOCK_SIZE = 256, four 64-byte cache lines)
 *   +0    PRODUCER_POSITION  u32, written only by the producer (own cache line)
 *   +64   CONSUMER_POSITION  u32, written only by the consumer (own cache line)
 *   +128  CONSUMER_PARKED    1 while the consumer is (about to be) asleep, else 0
 *   +132  CONSUMER_WAKE_SEQ  doorbell sequence / futex word, bumped by each ring
 *   +136  RING_COUNT         doorbells rung so far (statistics)
 *   +192  PRODUCER_PARKED, PRODUCER_WAKE_SEQ  (producer parked waiting for space; rung by
 *                                            the consumer after it frees space)
 *
 *  ring data: CAPACITY bytes of 8-byte aligned records
 *   +0 LENGTH u32   body length in bytes (header excluded)
 *   +4 TYPE   u16   RecordType (DATA, PADDING, CONTROL); 0 is never valid
 *   +6 FLAGS  u16   application flags, passed through
 *   +8 body ...     padded so the next record starts 8-byte aligned
 * ```
 *
 * Positions are free-running unsigned 32-bit byte counters (wrapping at 2^32); the index in
 * the ring is `position & (capacity - 1)`. Capacity is at most 2^30, so
 * `(producer - consumer) >>> 0` is the number of unread bytes as long as both sides are sane.
 * A record never straddles the end of the ring: when it would, the producer first writes a
 * PADDING record that runs exactly to the end.
 *
 * @example
 * ```ts
 * import { HEADER, ringControl, RingId, recordLength } from "./layout.ts";
 * const c = ringControl(RingId.OUTBOUND);
 * console.log(HEADER.EPOCH, c.PRODUCER_POSITION, recordLength(5)); // 12 256 16
 * ```
 * @module
 */

/** "VBUS" read as a little-endian u32. */
export const MAGIC = 0x53554256;
/** Bump on any incompatible change to this file. */
export const LAYOUT_VERSION = 1;
/** Cache line size used to separate producer- and consumer-written words. */
export const CACHE_LINE = 64;
/** Size of the region header; ring data starts at or after it. */
export const HEADER_SIZE = 4096;

/** Byte offsets of the region header fields (see the module diagram). */
export const HEADER = Object.freeze({
  MAGIC: 0,
  LAYOUT_VERSION: 4,
  STATE: 8,
  EPOCH: 12,
  REGION_SIZE: 16,
  HEADER_SIZE: 20,
  OUTBOUND_OFFSET: 24,
  OUTBOUND_CAPACITY: 28,
  INBOUND_OFFSET: 32,
  INBOUND_CAPACITY: 36,
  HOST_ATTACHED: 64,
  HOST_PID: 68,
  HOST_HEARTBEAT: 72,
  GUEST_ATTACHED: 128,
  GUEST_PID: 132,
  GUEST_HEARTBEAT: 136,
  CONTROL_BLOCKS: 256,
});

/** Values of {@link HEADER}.STATE. */
export const RegionState = Object.freeze({ EMPTY: 0, INITIALISING: 1, READY: 2 });

/** The two rings of a region. */
export const RingId = Object.freeze({
  /** guest -> host: the guest produces, the host consumes (and must distrust it). */
  OUTBOUND: 0,
  /** host -> guest: the host produces, the guest consumes. */
  INBOUND: 1,
});
/** 0 (OUTBOUND) or 1 (INBOUND). */
export type RingId = typeof RingId[keyof typeof RingId];

/** Size of one ring control block (four cache lines). */
export const CONTROL_BLOCK_SIZE = 4 * CACHE_LINE;

/** Offsets inside a ring control block, relative to its start. */
export const CONTROL = Object.freeze({
  PRODUCER_POSITION: 0,
  CONSUMER_POSITION: CACHE_LINE,
  CONSUMER_PARKED: 2 * CACHE_LINE,
  CONSUMER_WAKE_SEQ: 2 * CACHE_LINE + 4,
  RING_COUNT: 2 * CACHE_LINE + 8,
  PRODUCER_PARKED: 3 * CACHE_LINE,
  PRODUCER_WAKE_SEQ: 3 * CACHE_LINE + 4,
});

/** Absolute byte offsets of one ring's control words inside the region. */
export interface RingControlOffsets {
  PRODUCER_POSITION: number;
  CONSUMER_POSITION: number;
  CONSUMER_PARKED: number;
  CONSUMER_WAKE_SEQ: number;
  RING_COUNT: number;
  PRODUCER_PARKED: number;
  PRODUCER_WAKE_SEQ: number;
}

/**
 * Absolute offsets of the control words of ring `id`.
 *
 * @example
 * ```ts
 * ringControl(RingId.INBOUND).CONSUMER_WAKE_SEQ; // 644
 * ```
 */
export function ringControl(id: RingId): RingControlOffsets {
  const base = HEADER.CONTROL_BLOCKS + id * CONTROL_BLOCK_SIZE;
  return {
    PRODUCER_POSITION: base + CONTROL.PRODUCER_POSITION,
    CONSUMER_POSITION: base + CONTROL.CONSUMER_POSITION,
    CONSUMER_PARKED: base + CONTROL.CONSUMER_PARKED,
    CONSUMER_WAKE_SEQ: base + CONTROL.CONSUMER_WAKE_SEQ,
    RING_COUNT: base + CONTROL.RING_COUNT,
    PRODUCER_PARKED: base + CONTROL.PRODUCER_PARKED,
    PRODUCER_WAKE_SEQ: base + CONTROL.PRODUCER_WAKE_SEQ,
  };
}

/** End of the last control block; everything up to HEADER_SIZE after it is reserved. */
export const CONTROL_BLOCKS_END = HEADER.CONTROL_BLOCKS + 2 * CONTROL_BLOCK_SIZE;

/** Record header layout (relative to the record start). */
export const RECORD = Object.freeze({
  LENGTH: 0,
  TYPE: 4,
  FLAGS: 6,
  HEADER_SIZE: 8,
  ALIGNMENT: 8,
});

/** Record types. 0 is deliberately invalid so zeroed memory is never taken for a record. */
export const RecordType = Object.freeze({
  /** An application message; the body is handed to the consumer's handler. */
  DATA: 1,
  /** Filler from here to the end of the ring; skipped by the consumer. */
  PADDING: 2,
  /** A control message for the integration layer; handed to the handler like DATA. */
  CONTROL: 3,
});
/** One of {@link RecordType}. */
export type RecordType = typeof RecordType[keyof typeof RecordType];

/** Smallest and largest ring capacities accepted (both powers of two). */
export const MIN_CAPACITY = 64;
export const MAX_CAPACITY = 1 << 30;
/** Ring data offsets must be aligned to this (one page keeps rings on separate pages). */
export const RING_ALIGNMENT = 4096;

/**
 * Bytes a record with a `bodyLength`-byte body occupies in the ring (header + body, aligned).
 *
 * @example
 * ```ts
 * recordLength(0); // 8
 * recordLength(64); // 72
 * ```
 */
export function recordLength(bodyLength: number): number {
  return (bodyLength + RECORD.HEADER_SIZE + RECORD.ALIGNMENT - 1) & ~(RECORD.ALIGNMENT - 1);
}

/**
 * Largest body a ring of `capacity` bytes accepts: a record may fill the whole ring.
 *
 * @example
 * ```ts
 * maxBodyLength(1 << 20); // 1048568
 * ```
 */
export function maxBodyLength(capacity: number): number {
  return capacity - RECORD.HEADER_SIZE;
}

/** True if `n` is a power of two within [MIN_CAPACITY, MAX_CAPACITY]. */
export function isValidCapacity(n: number): boolean {
  return Number.isInteger(n) && n >= MIN_CAPACITY && n <= MAX_CAPACITY && (n & (n - 1)) === 0;
}

/** Placement of the two rings inside a region. */
export interface RegionGeometry {
  regionSize: number;
  outboundOffset: number;
  outboundCapacity: number;
  inboundOffset: number;
  inboundCapacity: number;
}

/**
 * Default placement: the header page, then the outbound ring, then the inbound ring; each
 * ring gets the largest power of two that fits in half of what follows the header, unless
 * capacities are given.
 *
 * @example
 * ```ts
 * planRegion(16 << 20); // { outboundCapacity: 4 MiB, inboundCapacity: 4 MiB, ... }
 * ```
 */
export function planRegion(
  regionSize: number,
  outboundCapacity?: number,
  inboundCapacity?: number,
): RegionGeometry {
  const usable = regionSize - HEADER_SIZE;
  let largest = MIN_CAPACITY;
  while (largest * 2 <= usable / 2 && largest * 2 <= MAX_CAPACITY) largest *= 2;
  const outCap = outboundCapacity ?? largest;
  const inCap = inboundCapacity ?? largest;
  const outboundOffset = HEADER_SIZE;
  const inboundOffset = alignUp(outboundOffset + outCap, RING_ALIGNMENT);
  const g = {
    regionSize,
    outboundOffset,
    outboundCapacity: outCap,
    inboundOffset,
    inboundCapacity: inCap,
  };
  const problem = checkGeometry(g);
  if (problem) throw new RangeError(`planRegion(${regionSize}): ${problem}`);
  return g;
}

/**
 * Validate a geometry (e.g. read back from a header written by someone else). Returns a
 * reason string when invalid, null when fine.
 *
 * @example
 * ```ts
 * checkGeometry(planRegion(1 << 20)); // null
 * ```
 */
export function checkGeometry(g: RegionGeometry): string | null {
  const u32 = (n: number) => Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;
  if (!u32(g.regionSize) || g.regionSize < HEADER_SIZE) return `bad region size ${g.regionSize}`;
  for (
    const [name, off, cap] of [
      ["outbound", g.outboundOffset, g.outboundCapacity],
      ["inbound", g.inboundOffset, g.inboundCapacity],
    ] as const
  ) {
    if (!isValidCapacity(cap)) return `${name} capacity ${cap} is not a power of two in range`;
    if (!u32(off) || off % RING_ALIGNMENT !== 0) return `${name} offset ${off} not page aligned`;
    if (off < HEADER_SIZE) return `${name} ring overlaps the header`;
    if (off + cap > g.regionSize) return `${name} ring [${off}, ${off + cap}) exceeds region`;
  }
  const a0 = g.outboundOffset, a1 = a0 + g.outboundCapacity;
  const b0 = g.inboundOffset, b1 = b0 + g.inboundCapacity;
  if (a0 < b1 && b0 < a1) return "rings overlap";
  return null;
}

/** Round `n` up to a multiple of `a` (a power of two). */
export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Where the slots of an agent-mode region start: after the region's own header page, which
 * keeps the vbus signature (`region_signature.ts`) so a guest still finds its device.
 */
export const SLOTS_OFFSET = HEADER_SIZE;
/** Most slots one region may be split into (a bound on what a guest can make the broker map). */
export const MAX_SLOTS = 256;
/** Smallest ring a slot gets; fewer, larger slots are the remedy when this does not fit. */
export const MIN_SLOT_RING_CAPACITY = 4096;

/** The split of a region into per-process slots (each slot is a complete region). */
export interface SlotPlan {
  /** Number of slots. */
  slots: number;
  /** Byte offset of slot 0 in the region. */
  slotOffset: number;
  /** Distance between slot starts (page aligned). */
  slotStride: number;
  /** Bytes of each slot (its own header page and two rings; at most the stride). */
  slotSize: number;
  /** Capacity of each of a slot's two rings. */
  ringCapacity: number;
}

/**
 * Split a region of `regionSize` bytes into `slots` slots for an agent: slot `i` is the range
 * `[slotOffset + i * slotStride, ... + slotSize)`, a region of its own (header page with its
 * own EPOCH, then two rings of the largest power of two that fits). Throws a RangeError
 * naming the limit when they do not fit.
 *
 * @example
 * ```ts
 * const p = planSlots(4 << 20, 8);
 * console.log(p.slotOffset, p.ringCapacity); // 4096 131072
 * ```
 */
export function planSlots(regionSize: number, slots: number): SlotPlan {
  if (!Number.isInteger(slots) || slots < 1 || slots > MAX_SLOTS) {
    throw new RangeError(`slot count ${slots} is not between 1 and ${MAX_SLOTS}`);
  }
  const stride = Math.floor((regionSize - SLOTS_OFFSET) / slots / RING_ALIGNMENT) * RING_ALIGNMENT;
  let cap = MIN_CAPACITY;
  while (HEADER_SIZE + 4 * cap <= stride && cap * 2 <= MAX_CAPACITY) cap *= 2;
  if (cap < MIN_SLOT_RING_CAPACITY || HEADER_SIZE + 2 * cap > stride) {
    throw new RangeError(
      `a region of ${regionSize} bytes cannot hold ${slots} slots with rings of at least ` +
        `${MIN_SLOT_RING_CAPACITY} bytes: use fewer slots or a larger shmSize`,
    );
  }
  return {
    slots,
    slotOffset: SLOTS_OFFSET,
    slotStride: stride,
    slotSize: HEADER_SIZE + 2 * cap,
    ringCapacity: cap,
  };
}

/**
 * The bytes of slot `index` of `plan` inside `region` (a view, no copy).
 *
 * @example
 * ```ts
 * const region = new Uint8Array(4 << 20);
 * slotBytes(region, planSlots(region.length, 8), 1).byteOffset; // 4096 + stride
 * ```
 */
export function slotBytes(region: Uint8Array, plan: SlotPlan, index: number): Uint8Array {
  if (!Number.isInteger(index) || index < 0 || index >= plan.slots) {
    throw new RangeError(`slot ${index} is not between 0 and ${plan.slots - 1}`);
  }
  const start = plan.slotOffset + index * plan.slotStride;
  if (start + plan.slotSize > region.length) {
    throw new RangeError(`slot ${index} [${start}, ${start + plan.slotSize}) exceeds the region`);
  }
  return region.subarray(start, start + plan.slotSize);
}

/**
 * Region lifecycle over the layout of `layout.ts`: the host initialises (and bumps the
 * epoch), the guest attaches and validates, either side notices an epoch change and
 * resynchronises. Pure TypeScript over a `Uint8Array`; no FFI.
 *
 * Reset protocol: the host owns the header. `initRegion` sets STATE=INITIALISING, zeroes the
 * control blocks and the attach lines, writes geometry, then publishes a new EPOCH and
 * STATE=READY. A guest calls `epochChanged()` before each batch; when it returns true the
 * guest drops its producer/consumer objects and calls `resyncRegion()` (in-flight records of
 * the old epoch are lost: the integration layer resends what must not be lost). A host that
 * sees a RingCorruptError from the guest's ring re-initialises, which bumps the epoch.
 *
 * The header is guest-writable, so every field read here is validated (`checkGeometry`) and
 * nothing is re-read after attach: the returned descriptors are local copies.
 *
 * @example
 * ```ts
 * import { attachRegion, initRegion, resyncRegion } from "./region.ts";
 * const shared = new Uint8Array(1 << 16); // in real use: the ivshmem BAR or /dev/shm file
 * const host = initRegion(shared); // host, at start or after a fault
 * let guest = attachRegion(shared, "guest");
 * initRegion(shared); // the host resets: a new epoch
 * if (guest.epochChanged()) guest = resyncRegion(guest) ?? guest;
 * console.log(host.epoch, guest.epoch); // 1 2
 * ```
 * @module
 */
import {
  checkGeometry,
  CONTROL_BLOCKS_END,
  HEADER,
  HEADER_SIZE,
  LAYOUT_VERSION,
  MAGIC,
  planRegion,
  type RegionGeometry,
  RegionState,
  ringControl,
  RingId,
} from "./layout.ts";
import type { RingDescriptor } from "./ring.ts";

/** Which end of the region this process is. */
export type Side = "host" | "guest";

/** Why a region could not be attached. */
export type RegionErrorReason =
  | "too-small"
  | "bad-magic"
  | "version-mismatch"
  | "not-ready"
  | "size-mismatch"
  | "bad-geometry"
  | "changing";

/**
 * The region header is missing, incompatible, or was changing while we read it.
 *
 * @example
 * ```ts
 * try {
 *   attachRegion(new Uint8Array(1 << 16), "guest"); // all zeros: never initialised
 * } catch (e) {
 *   if (e instanceof RegionError) console.log(e.reason); // "bad-magic"
 * }
 * ```
 */
export class RegionError extends Error {
  readonly reason: RegionErrorReason;
  constructor(reason: RegionErrorReason, detail: string) {
    super(`vbus region: ${reason}: ${detail}`);
    this.name = "RegionError";
    this.reason = reason;
  }
}

/** An attached region: validated local copies of the header, plus helpers. */
export interface Region {
  readonly bytes: Uint8Array;
  readonly side: Side;
  /** The epoch this attachment belongs to. */
  readonly epoch: number;
  readonly geometry: RegionGeometry;
  /** guest -> host ring. */
  readonly outbound: RingDescriptor;
  /** host -> guest ring. */
  readonly inbound: RingDescriptor;
  /** The ring this side produces into (guest: outbound, host: inbound). */
  readonly tx: RingDescriptor;
  /** The ring this side consumes (guest: inbound, host: outbound). */
  readonly rx: RingDescriptor;
  /** True when the shared epoch or state no longer matches this attachment. */
  epochChanged(): boolean;
  /** True when the peer announces it is attached to this epoch. */
  peerAttached(): boolean;
  /** Bump this side's heartbeat counter (liveness for the peer). */
  beat(): void;
  /** Clear this side's attached word (only if it still holds our epoch). */
  detach(): void;
}

/** Options of {@link initRegion}. */
export interface InitOptions {
  outboundCapacity?: number;
  inboundCapacity?: number;
  /** Written to HOST_PID (diagnostics). */
  pid?: number;
}

function words(bytes: Uint8Array): Int32Array {
  if (bytes.byteOffset % 8 !== 0) throw new RangeError("region bytes must be 8-byte aligned");
  return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
}

function descriptor(g: RegionGeometry, id: RingId): RingDescriptor {
  return id === RingId.OUTBOUND
    ? { dataOffset: g.outboundOffset, capacity: g.outboundCapacity, control: ringControl(id) }
    : { dataOffset: g.inboundOffset, capacity: g.inboundCapacity, control: ringControl(id) };
}

function makeRegion(bytes: Uint8Array, side: Side, epoch: number, g: RegionGeometry): Region {
  const i32 = words(bytes);
  const outbound = descriptor(g, RingId.OUTBOUND);
  const inbound = descriptor(g, RingId.INBOUND);
  const mine = (side === "host" ? HEADER.HOST_ATTACHED : HEADER.GUEST_ATTACHED) >> 2;
  const peer = (side === "host" ? HEADER.GUEST_ATTACHED : HEADER.HOST_ATTACHED) >> 2;
  const beatIdx = (side === "host" ? HEADER.HOST_HEARTBEAT : HEADER.GUEST_HEARTBEAT) >> 2;
  return {
    bytes,
    side,
    epoch,
    geometry: g,
    outbound,
    inbound,
    tx: side === "guest" ? outbound : inbound,
    rx: side === "guest" ? inbound : outbound,
    epochChanged: () =>
      Atomics.load(i32, HEADER.EPOCH >> 2) !== epoch ||
      Atomics.load(i32, HEADER.STATE >> 2) !== RegionState.READY,
    peerAttached: () => Atomics.load(i32, peer) === epoch,
    beat: () => void Atomics.add(i32, beatIdx, 1),
    detach: () => void Atomics.compareExchange(i32, mine, epoch, 0),
  };
}

/**
 * Host side: (re)initialise `bytes` as a vbus region and attach as host. Bumps the epoch
 * (starting at 1, never 0), resets both rings to empty and clears the guest's attachment.
 *
 * @example
 * ```ts
 * const region = initRegion(new Uint8Array(1 << 22), { outboundCapacity: 1 << 20 });
 * console.log(region.epoch, region.outbound.capacity); // 1 1048576
 * ```
 */
export function initRegion(bytes: Uint8Array, options: InitOptions = {}): Region {
  if (bytes.byteLength < HEADER_SIZE) {
    throw new RegionError("too-small", `${bytes.byteLength} bytes < header ${HEADER_SIZE}`);
  }
  const g = planRegion(bytes.byteLength, options.outboundCapacity, options.inboundCapacity);
  const i32 = words(bytes);
  const w = (off: number, v: number) => Atomics.store(i32, off >> 2, v | 0);
  const hadMagic = Atomics.load(i32, HEADER.MAGIC >> 2) === (MAGIC | 0);
  const old = hadMagic ? Atomics.load(i32, HEADER.EPOCH >> 2) : 0;
  const epoch = ((old + 1) | 0) === 0 ? 1 : (old + 1) | 0;

  w(HEADER.STATE, RegionState.INITIALISING);
  w(HEADER.HOST_ATTACHED, 0);
  bytes.fill(0, HEADER.HOST_ATTACHED, CONTROL_BLOCKS_END);
  w(HEADER.MAGIC, MAGIC);
  w(HEADER.LAYOUT_VERSION, LAYOUT_VERSION);
  w(HEADER.REGION_SIZE, g.regionSize);
  w(HEADER.HEADER_SIZE, HEADER_SIZE);
  w(HEADER.OUTBOUND_OFFSET, g.outboundOffset);
  w(HEADER.OUTBOUND_CAPACITY, g.outboundCapacity);
  w(HEADER.INBOUND_OFFSET, g.inboundOffset);
  w(HEADER.INBOUND_CAPACITY, g.inboundCapacity);
  w(HEADER.HOST_PID, options.pid ?? 0);
  w(HEADER.EPOCH, epoch);
  w(HEADER.STATE, RegionState.READY);
  w(HEADER.HOST_ATTACHED, epoch);
  return makeRegion(bytes, "host", epoch, g);
}

function readOnce(bytes: Uint8Array): { epoch: number; g: RegionGeometry } {
  if (bytes.byteLength < HEADER_SIZE) {
    throw new RegionError("too-small", `${bytes.byteLength} bytes < header ${HEADER_SIZE}`);
  }
  const i32 = words(bytes);
  const r = (off: number) => Atomics.load(i32, off >> 2) >>> 0;
  if (r(HEADER.MAGIC) !== MAGIC) {
    throw new RegionError("bad-magic", `0x${r(HEADER.MAGIC).toString(16)}`);
  }
  if (r(HEADER.LAYOUT_VERSION) !== LAYOUT_VERSION) {
    throw new RegionError(
      "version-mismatch",
      `layout ${r(HEADER.LAYOUT_VERSION)}, expected ${LAYOUT_VERSION}`,
    );
  }
  const state = r(HEADER.STATE);
  const epoch = r(HEADER.EPOCH) | 0;
  if (state !== RegionState.READY || epoch === 0) {
    throw new RegionError("not-ready", `state ${state}, epoch ${epoch}`);
  }
  const g: RegionGeometry = {
    regionSize: r(HEADER.REGION_SIZE),
    outboundOffset: r(HEADER.OUTBOUND_OFFSET),
    outboundCapacity: r(HEADER.OUTBOUND_CAPACITY),
    inboundOffset: r(HEADER.INBOUND_OFFSET),
    inboundCapacity: r(HEADER.INBOUND_CAPACITY),
  };
  if (r(HEADER.HEADER_SIZE) !== HEADER_SIZE) {
    throw new RegionError("bad-geometry", `header size ${r(HEADER.HEADER_SIZE)}`);
  }
  if (g.regionSize !== bytes.byteLength) {
    throw new RegionError(
      "size-mismatch",
      `header says ${g.regionSize} bytes, mapping has ${bytes.byteLength}`,
    );
  }
  const problem = checkGeometry(g);
  if (problem) throw new RegionError("bad-geometry", problem);
  // Seqlock-style: the header must not have changed while we read it.
  if ((r(HEADER.EPOCH) | 0) !== epoch || r(HEADER.STATE) !== RegionState.READY) {
    throw new RegionError("changing", "epoch or state changed during attach");
  }
  return { epoch, g };
}

/**
 * Attach to an initialised region and announce it (GUEST_ATTACHED / HOST_ATTACHED = epoch).
 * The guest uses this after the host's `initRegion`; a restarted host may use it to continue
 * with the current epoch (ring positions are then validated by the ring constructors).
 *
 * @throws {RegionError} when the header is missing, incompatible, or changing.
 * @example
 * ```ts
 * import { findIvshmem, mapShared } from "../../ffi/mod.ts";
 * const dev = findIvshmem();
 * if (dev) {
 *   const m = await mapShared(dev.path, dev.size);
 *   const region = attachRegion(m.bytes, "guest");
 * }
 * ```
 */
export function attachRegion(
  bytes: Uint8Array,
  side: Side,
  options: { pid?: number } = {},
): Region {
  const { epoch, g } = readOnce(bytes);
  const i32 = words(bytes);
  const attached = side === "host" ? HEADER.HOST_ATTACHED : HEADER.GUEST_ATTACHED;
  const pid = side === "host" ? HEADER.HOST_PID : HEADER.GUEST_PID;
  Atomics.store(i32, pid >> 2, (options.pid ?? 0) | 0);
  Atomics.store(i32, attached >> 2, epoch);
  if ((Atomics.load(i32, HEADER.EPOCH >> 2)) !== epoch) {
    throw new RegionError("changing", "epoch changed during attach");
  }
  return makeRegion(bytes, side, epoch, g);
}

/**
 * After `epochChanged()`: attach again to whatever epoch is current (same side). Returns
 * null while the host is still initialising; throws RegionError on an invalid header.
 *
 * @example
 * ```ts
 * const shared = new Uint8Array(1 << 16);
 * initRegion(shared);
 * let region = attachRegion(shared, "guest");
 * if (region.epochChanged()) region = resyncRegion(region) ?? region;
 * ```
 */
export function resyncRegion(region: Region, options: { pid?: number } = {}): Region | null {
  try {
    return attachRegion(region.bytes, region.side, options);
  } catch (e) {
    if (e instanceof RegionError && (e.reason === "not-ready" || e.reason === "changing")) {
      return null;
    }
    throw e;
  }
}

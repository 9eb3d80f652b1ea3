/**
 * Shared-memory negotiation between a client and the broker (HELLO `shm` / WELCOME `shm`),
 * and loading the FFI layer only when shared memory is used, so stream-only clients need no
 * FFI permission.
 *
 * A guest proves it maps the same memory as the broker: before HELLO it writes a random nonce
 * into the region's GUEST_PID word and sends it; the broker reads that word from its own
 * mapping. Then the broker re-initialises the region (new epoch, empty rings) and the guest
 * attaches to exactly that epoch, so neither side ever reads a stale record.
 *
 * @example
 * ```ts
 * import { loadFfi, writeGuestNonce } from "./negotiation.ts";
 * const ffi = await loadFfi();
 * const dev = ffi.findIvshmem();
 * ```
 * @module
 */
import { HEADER } from "../ring/layout.ts";
import { idleYield } from "../util/idle_yield.ts";

/** HELLO `shm`: what the client brings. */
export interface ShmOffer {
  /** A guest: the size of the region it mapped, and the nonce it wrote into it. */
  size?: number;
  nonce?: number;
  /** A host-local client: asks the broker for a region of its own. */
  want?: boolean;
  /** A host-local client: asks to be woken by FUTEX_WAKE instead of DOORBELL frames. */
  futex?: boolean;
}

/** WELCOME `shm`: the broker's answer. */
export interface ShmAnswer {
  ok: boolean;
  /** Why not, when `ok` is false. */
  reason?: string;
  /** The epoch the client must attach to. */
  epoch?: number;
  /** For host-local clients: the file to map, and its size. */
  path?: string;
  size?: number;
  /** The broker wakes the client by FUTEX_WAKE (it asked, and it is host-local). */
  futex?: boolean;
}

/** The FFI layer's module type. */
export type Ffi = typeof import("../../ffi/mod.ts");
let ffi: Promise<Ffi> | undefined;

/** Load `ffi/mod.ts` once, on first use; from then on idle ring pollers may yield the core. */
export function loadFfi(): Promise<Ffi> {
  return ffi ??= import("../../ffi/mod.ts").then((m) => {
    idleYield.install(m.yieldCpu);
    return m;
  });
}

function words(bytes: Uint8Array): Int32Array {
  return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
}

/** Guest side: a fresh nonce, written into the region for the broker to check. */
export function writeGuestNonce(bytes: Uint8Array): number {
  const nonce = (Math.random() * 0x7fffffff) | 0 || 1;
  Atomics.store(words(bytes), HEADER.GUEST_PID >> 2, nonce);
  return nonce;
}

/** Broker side: does this mapping hold the nonce the guest announced? */
export function hasGuestNonce(bytes: Uint8Array, nonce: number): boolean {
  return Atomics.load(words(bytes), HEADER.GUEST_PID >> 2) === (nonce | 0);
}

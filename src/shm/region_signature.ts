/**
 * The vbus signature of a shared-memory region: the header's MAGIC and LAYOUT_VERSION words
 * (see `src/ring/layout.ts`). A guest with several ivshmem devices tells the vbus one from the
 * others by it. The broker stamps it on a VM's region as soon as it maps it, before any
 * session, so a guest that boots later finds its region signed; `initRegion` writes the same
 * words when a session starts.
 *
 * Stamping writes only those two words, and only into a region that has no signature yet:
 * the rest of the header (state EMPTY, epoch 0) and the rings stay untouched, so nothing a
 * guest left in a region that was already signed (unread records the client salvages) is lost.
 *
 * @example
 * ```ts
 * import { hasRegionSignature, stampRegionSignature } from "./region_signature.ts";
 * const bytes = new Uint8Array(new ArrayBuffer(4096));
 * hasRegionSignature(bytes); // false
 * stampRegionSignature(bytes); // true: it was not signed
 * hasRegionSignature(bytes); // true
 * ```
 * @module
 */
import { HEADER, HEADER_SIZE, LAYOUT_VERSION, MAGIC } from "../ring/layout.ts";

function headerWords(bytes: Uint8Array): Int32Array | undefined {
  if (bytes.byteLength < HEADER_SIZE || bytes.byteOffset % 4 !== 0) return undefined;
  return new Int32Array(bytes.buffer, bytes.byteOffset, HEADER_SIZE >> 2);
}

/**
 * Does `bytes` (a region, or at least its first `HEADER_SIZE` bytes) start with the vbus
 * signature of this layout version? Reads two words; trusts nothing else in the header.
 *
 * @example
 * ```ts
 * hasRegionSignature(new Uint8Array(4096)); // false
 * ```
 */
export function hasRegionSignature(bytes: Uint8Array): boolean {
  const w = headerWords(bytes);
  if (!w) return false;
  return Atomics.load(w, HEADER.MAGIC >> 2) === (MAGIC | 0) &&
    Atomics.load(w, HEADER.LAYOUT_VERSION >> 2) === LAYOUT_VERSION;
}

/**
 * Host side: write the vbus signature into a region that has none (see the module doc).
 * Returns true when it wrote it, false when the region was signed already. Throws on a region
 * smaller than the header.
 *
 * @example
 * ```ts
 * import { mapSharedSync } from "../../ffi/mod.ts";
 * const mapping = mapSharedSync("/dev/shm/vbus-vm1", 16 << 20, { create: true });
 * stampRegionSignature(mapping.bytes);
 * ```
 */
export function stampRegionSignature(bytes: Uint8Array): boolean {
  const w = headerWords(bytes);
  if (!w) {
    throw new RangeError(
      `a vbus region needs at least ${HEADER_SIZE} bytes, got ${bytes.byteLength}`,
    );
  }
  if (hasRegionSignature(bytes)) return false;
  Atomics.store(w, HEADER.LAYOUT_VERSION >> 2, LAYOUT_VERSION);
  Atomics.store(w, HEADER.MAGIC >> 2, MAGIC | 0);
  return true;
}

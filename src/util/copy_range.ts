/**
 * Copy a byte range between two buffers without making a view of the source when the range is
 * small. `target.set(source.subarray(...))` allocates a view per call, which dominated the
 * broker's profile for 64 B messages (in Bun a `subarray` of a mapped region costs more than
 * copying 64 bytes one by one); longer ranges still go through `set`, which is a memcpy.
 *
 * @example
 * ```ts
 * import { copyRange } from "./copy_range.ts";
 * const from = new Uint8Array([1, 2, 3, 4]);
 * const to = new Uint8Array(8);
 * copyRange(to, 2, from, 1, 3); // to = [0, 0, 2, 3, 4, 0, 0, 0]
 * ```
 * @module
 */

/** Ranges up to this many bytes are copied byte by byte; longer ones with one `set`. */
export const COPY_LOOP_MAX = 128;

/**
 * Copy `length` bytes of `source` from `sourceAt` into `target` at `targetAt`. Each source
 * byte is read once (the source may be a guest's shared memory). The caller checks bounds.
 */
export function copyRange(
  target: Uint8Array,
  targetAt: number,
  source: Uint8Array,
  sourceAt: number,
  length: number,
): void {
  if (length <= COPY_LOOP_MAX) {
    for (let i = 0; i < length; i++) target[targetAt + i] = source[sourceAt + i];
  } else {
    target.set(viewOf(source, sourceAt, length), targetAt);
  }
}

/**
 * `length` bytes of `source` from `start` as a view: `source` itself when that is all of it
 * (no new view object).
 *
 * @example
 * ```ts
 * import { viewOf } from "./copy_range.ts";
 * const bytes = new Uint8Array([1, 2, 3]);
 * viewOf(bytes, 0, 3) === bytes; // true
 * viewOf(bytes, 1, 2); // [2, 3]
 * ```
 */
export function viewOf(source: Uint8Array, start: number, length: number): Uint8Array {
  return start === 0 && length === source.length ? source : source.subarray(start, start + length);
}

/**
 * What the runtime-agnostic core may tune by runtime: measured differences between Deno and
 * Bun that change which way of doing something is cheaper. Importing this module loads no
 * native code.
 *
 * @example
 * ```ts
 * import { OWN_BUFFERS_ARE_COSTLY } from "./runtime_traits.ts";
 * const copyInto = OWN_BUFFERS_ARE_COSTLY ? "a shared chunk" : "a buffer of its own";
 * ```
 * @module
 */

/**
 * True where every new `Uint8Array` costs a `malloc` of its own backing store: Deno's V8 keeps
 * no typed array on the JavaScript heap and frees the stores on a GC thread, 0.35-1.1 us per
 * `new Uint8Array(16)` on this project's machine (`perf`: glibc `_int_malloc` and `_int_free`);
 * in Bun the same costs 6 ns, and a short-lived copy is cheaper in a buffer of its own than as
 * a view of a shared chunk (a port-stream publisher: 0.68 against 0.79 us of CPU per message).
 */
export const OWN_BUFFERS_ARE_COSTLY: boolean = (globalThis as Record<string, unknown>).Bun ===
  undefined;

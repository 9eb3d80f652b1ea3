/**
 * Bun bindings for `ffi/unix_datagram.ts` (loaded only under Bun).
 *
 * @example
 * ```ts
 * // Do not import directly; use ffi/unix_datagram.ts, which picks this file under Bun.
 * import { sendDatagram } from "./unix_datagram.ts";
 * ```
 * @module
 */
// @ts-ignore: bun:ffi only exists under Bun; Deno never loads this file.
import { dlopen, read } from "bun:ffi";
import type { DatagramSymbols } from "./unix_datagram.ts";

const libc = dlopen("libc.so.6", {
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  sendto: { args: ["i32", "ptr", "u64", "i32", "ptr", "u32"], returns: "i64" },
  bind: { args: ["i32", "ptr", "u32"], returns: "i32" },
  recv: { args: ["i32", "ptr", "u64", "i32"], returns: "i64" },
  close: { args: ["i32"], returns: "i32" },
  clock_gettime: { args: ["i32", "ptr"], returns: "i32" },
  __errno_location: { args: [], returns: "ptr" },
});
// deno-lint-ignore no-explicit-any
const s = libc.symbols as any;

/** The raw libc symbols (the shared wrapper is in unix_datagram.ts). */
export const datagramSymbols: DatagramSymbols = s;

/** errno of this thread. */
export function readErrno(): number {
  const p = s.__errno_location();
  return p ? read.i32(p, 0) : 0;
}

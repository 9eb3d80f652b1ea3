/**
 * Deno bindings for `ffi/unix_datagram.ts` (loaded only under Deno; needs `--allow-ffi`).
 *
 * @example
 * ```ts
 * // Do not import directly; use ffi/unix_datagram.ts, which picks this file under Deno.
 * import { sendDatagram } from "./unix_datagram.ts";
 * ```
 * @module
 */
import type { DatagramSymbols } from "./unix_datagram.ts";

const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
});
const s = libc.symbols;

/** The raw libc symbols (the shared wrapper is in unix_datagram.ts). */
export const datagramSymbols: DatagramSymbols = s;

/** errno of this thread. */
export function readErrno(): number {
  const p = s.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32(0) : 0;
}

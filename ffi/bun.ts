/**
 * Bun backend for `ffi/mod.ts` (loaded only under Bun). Uses libc through `bun:ffi`.
 *
 * Bun has no nonblocking FFI call, so `futexWait` here is the blocking `futexWaitSync`
 * wrapped in a resolved Promise: it blocks the JS thread (and the event loop) for up to
 * `timeoutMs`. Callers that must keep the event loop alive use short timeouts (the
 * doorbell's default park slice is a few ms), or run the wait inside a Worker.
 *
 * @example
 * ```ts
 * // Do not import directly; use ffi/mod.ts, which picks this file under Bun.
 * import { mapShared } from "../ffi/mod.ts";
 * ```
 * @module
 */
// @ts-ignore: bun:ffi only exists under Bun; Deno never loads this file.
import { dlopen, ptr, read, toArrayBuffer } from "bun:ffi";
import {
  checkFutexArgs,
  cString,
  EAGAIN,
  EINTR,
  ETIMEDOUT,
  type FfiBackend,
  FfiError,
  FUTEX_WAIT,
  FUTEX_WAKE,
  type FutexWaitResult,
  type Libc,
  MAP_SHARED,
  type MappedMemory,
  PROT_READ,
  PROT_WRITE,
  SYS_FUTEX,
  timespec,
} from "./common.ts";

const libc = dlopen("libc.so.6", {
  open: { args: ["ptr", "i32", "i32"], returns: "i32" },
  ftruncate: { args: ["i32", "i64"], returns: "i32" },
  close: { args: ["i32"], returns: "i32" },
  // int fcntl(int fd, int cmd, ...): only ever called with one int argument.
  fcntl: { args: ["i32", "i32", "i32"], returns: "i32" },
  flock: { args: ["i32", "i32"], returns: "i32" },
  memfd_create: { args: ["ptr", "u32"], returns: "i32" },
  mmap: { args: ["u64", "u64", "i32", "i32", "i32", "i64"], returns: "i64" },
  munmap: { args: ["u64", "u64"], returns: "i32" },
  __errno_location: { args: [], returns: "ptr" },
  sched_yield: { args: [], returns: "i32" },
  // long syscall(long nr, ...): futex(uaddr, op, val, timeout, uaddr2, val3)
  syscall: { args: ["i64", "u64", "i32", "i32", "ptr", "u64", "i32"], returns: "i32" },
});
// deno-lint-ignore no-explicit-any
const s = libc.symbols as any;

function errno(): number {
  const p = s.__errno_location();
  return p ? read.i32(p, 0) : 0;
}

function wordAddress(view: Int32Array, index: number): bigint {
  return BigInt(ptr(view, index * 4));
}

function mmapShared(fd: number, size: number): MappedMemory | null {
  const addr: bigint = BigInt(s.mmap(0n, BigInt(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n));
  if (addr === -1n || addr === 0n) return null;
  return {
    bytes: new Uint8Array(toArrayBuffer(Number(addr), 0, size)),
    munmap: () => s.munmap(addr, BigInt(size)),
  };
}

const files: Libc = {
  open: (path, flags, mode) => s.open(cString(path), flags, mode),
  close: (fd) => s.close(fd),
  ftruncate: (fd, size) => s.ftruncate(fd, BigInt(size)),
  fcntl: (fd, cmd, arg) => s.fcntl(fd, cmd, arg),
  flock: (fd, operation) => s.flock(fd, operation),
  memfdCreate: (name, flags) => s.memfd_create(cString(name), flags),
  mmapShared,
  errno,
};

function futexWaitSync(
  view: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
): FutexWaitResult {
  checkFutexArgs(view, index);
  const ts = timespec(timeoutMs);
  const rc: number = s.syscall(
    BigInt(SYS_FUTEX),
    wordAddress(view, index),
    FUTEX_WAIT,
    expected | 0,
    ts,
    0n,
    0,
  );
  if (rc >= 0) return "ok";
  const err = errno();
  if (err === EAGAIN) return "not-equal";
  if (err === ETIMEDOUT) return "timed-out";
  if (err === EINTR) return "ok";
  throw new FfiError("futex", "", err, "FUTEX_WAIT");
}

function futexWait(
  view: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
): Promise<FutexWaitResult> {
  try {
    return Promise.resolve(futexWaitSync(view, index, expected, timeoutMs));
  } catch (e) {
    return Promise.reject(e);
  }
}

function futexWake(view: Int32Array, index: number, count: number): number {
  checkFutexArgs(view, index);
  const rc: number = s.syscall(
    BigInt(SYS_FUTEX),
    wordAddress(view, index),
    FUTEX_WAKE,
    Math.max(1, Math.min(count, 0x7fffffff)),
    null,
    0n,
    0,
  );
  if (rc < 0) throw new FfiError("futex", "", errno(), "FUTEX_WAKE");
  return rc;
}

function addressOf(view: ArrayBufferView): number {
  // Every ArrayBufferView is a typed array or a DataView, which is what bun:ffi's ptr() takes.
  return Number(ptr(view as NodeJS.TypedArray | DataView));
}

function bufferAt(address: number, byteLength: number): ArrayBuffer {
  return toArrayBuffer(address, 0, byteLength);
}

/** The Bun implementation of {@link FfiBackend}. */
export const backend: FfiBackend = {
  runtime: "bun",
  asyncFutex: false,
  libc: files,
  futexWait,
  futexWaitSync,
  futexWake,
  addressOf,
  bufferAt,
  yieldCpu: () => void s.sched_yield(),
};

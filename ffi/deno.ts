/**
 * Deno backend for `ffi/mod.ts` (loaded only under Deno). Needs `--allow-ffi`.
 * Uses libc through `Deno.dlopen`; futex waits can run off the JS thread (`nonblocking: true`).
 *
 * @example
 * ```ts
 * // Do not import directly; use ffi/mod.ts, which picks this file under Deno.
 * import { mapShared } from "../ffi/mod.ts";
 * ```
 * @module
 */
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

const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // int fcntl(int fd, int cmd, ...): only ever called with one int argument.
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  sched_yield: { parameters: [], result: "i32" },
  // long syscall(long nr, ...): futex(uaddr, op, val, timeout, uaddr2, val3)
  syscall: {
    parameters: ["i64", "pointer", "i32", "i32", "buffer", "pointer", "i32"],
    result: "i64",
  },
  syscall_nb: {
    name: "syscall",
    parameters: ["i64", "pointer", "i32", "i32", "buffer", "pointer", "i32"],
    result: "i64",
    nonblocking: true,
  },
});

const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

function errno(): number {
  const p = libc.symbols.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32(0) : 0;
}

function wordPointer(view: Int32Array, index: number): Deno.PointerValue {
  const base = Deno.UnsafePointer.of(view as unknown as Uint8Array<ArrayBuffer>);
  if (base === null) throw new TypeError("futex: view has no backing memory");
  return Deno.UnsafePointer.offset(base, index * 4);
}

function mmapShared(fd: number, size: number): MappedMemory | null {
  const s = libc.symbols;
  const p = s.mmap(null, BigInt(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
  if (p === null || Deno.UnsafePointer.value(p) === MAP_FAILED) return null;
  return {
    bytes: new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, size)),
    munmap: () => s.munmap(p, BigInt(size)),
  };
}

const files: Libc = {
  open: (path, flags, mode) => libc.symbols.open(cString(path), flags, mode),
  close: (fd) => libc.symbols.close(fd),
  ftruncate: (fd, size) => libc.symbols.ftruncate(fd, BigInt(size)),
  fcntl: (fd, cmd, arg) => libc.symbols.fcntl(fd, cmd, arg),
  flock: (fd, operation) => libc.symbols.flock(fd, operation),
  memfdCreate: (name, flags) => libc.symbols.memfd_create(cString(name), flags),
  mmapShared,
  errno,
};

function classify(rc: number, err: number, view: Int32Array, index: number, expected: number) {
  if (rc >= 0) return "ok" as const;
  if (err === EAGAIN) return "not-equal" as const;
  if (err === ETIMEDOUT) return "timed-out" as const;
  if (err === EINTR) return "ok" as const; // spurious wake-up: callers re-check state anyway
  if (err === 0) {
    // errno unknown (nonblocking call ran on another thread): infer from the word.
    return Atomics.load(view, index) !== expected ? "not-equal" as const : "timed-out" as const;
  }
  throw new FfiError("futex", "", err, "FUTEX_WAIT");
}

function futexWaitSync(
  view: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
): FutexWaitResult {
  checkFutexArgs(view, index);
  const rc = Number(
    libc.symbols.syscall(
      BigInt(SYS_FUTEX),
      wordPointer(view, index),
      FUTEX_WAIT,
      expected | 0,
      timespec(timeoutMs),
      null,
      0,
    ),
  );
  return classify(rc, rc < 0 ? errno() : 0, view, index, expected);
}

async function futexWait(
  view: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
): Promise<FutexWaitResult> {
  checkFutexArgs(view, index);
  if (Atomics.load(view, index) !== (expected | 0)) return "not-equal";
  const ts = timespec(timeoutMs); // kept alive by this frame until the call resolves
  const rc = Number(
    await libc.symbols.syscall_nb(
      BigInt(SYS_FUTEX),
      wordPointer(view, index),
      FUTEX_WAIT,
      expected | 0,
      ts,
      null,
      0,
    ),
  );
  // errno of the worker thread is not observable here; classify() infers it from the word.
  return classify(rc, 0, view, index, expected);
}

function futexWake(view: Int32Array, index: number, count: number): number {
  checkFutexArgs(view, index);
  const rc = Number(
    libc.symbols.syscall(
      BigInt(SYS_FUTEX),
      wordPointer(view, index),
      FUTEX_WAKE,
      Math.max(1, Math.min(count, 0x7fffffff)),
      null,
      null,
      0,
    ),
  );
  if (rc < 0) throw new FfiError("futex", "", errno(), "FUTEX_WAKE");
  return rc;
}

function addressOf(view: ArrayBufferView): number {
  const p = Deno.UnsafePointer.of(view as unknown as Uint8Array<ArrayBuffer>);
  if (p === null) throw new TypeError("addressOf: view has no backing memory");
  return Number(Deno.UnsafePointer.value(p));
}

function bufferAt(address: number, byteLength: number): ArrayBuffer {
  const p = Deno.UnsafePointer.create(BigInt(address));
  if (p === null) throw new TypeError("bufferAt: null address");
  return Deno.UnsafePointerView.getArrayBuffer(p, byteLength);
}

/** The Deno implementation of {@link FfiBackend}. */
export const backend: FfiBackend = {
  runtime: "deno",
  asyncFutex: true,
  libc: files,
  futexWait,
  futexWaitSync,
  futexWake,
  addressOf,
  bufferAt,
  yieldCpu: () => void libc.symbols.sched_yield(),
};

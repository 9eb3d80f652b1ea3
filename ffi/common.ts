/**
 * Runtime-neutral pieces shared by `ffi/deno.ts` and `ffi/bun.ts`: the backend interface,
 * constants from Linux x86_64 headers, and the error type. Import the public API from
 * `ffi/mod.ts`, not from here.
 *
 * @example
 * ```ts
 * import { FfiError } from "./common.ts";
 * try { await mapShared("/nope/x", 4096); } catch (e) { if (e instanceof FfiError) console.log(e.errno); }
 * ```
 * @module
 */

/** A shared mapping of a file. `bytes` aliases the mapped memory directly (no copy). */
export interface SharedMapping {
  /** The whole mapping. Never touch it (or views made from it) after `unmap()`. */
  bytes: Uint8Array;
  /** Mapped length in bytes. */
  size: number;
  /** The path that was mapped. */
  path: string;
  /** munmap the region. Idempotent. Any access to `bytes` afterwards crashes the process. */
  unmap(): void;
}

/** Outcome of a futex wait. */
export type FutexWaitResult = "ok" | "not-equal" | "timed-out";

/** Memory one backend mapped with mmap; `munmap()` returns libc's result (0 or -1). */
export interface MappedMemory {
  bytes: Uint8Array;
  munmap(): number;
}

/**
 * The libc calls each backend binds, with libc's return conventions (-1 and errno on
 * failure). `ffi/shared_memory.ts` and `ffi/file_lock.ts` build the public operations on
 * these once, for both runtimes. Read `errno()` right after the call that failed.
 */
export interface Libc {
  open(path: string, flags: number, mode: number): number;
  close(fd: number): number;
  ftruncate(fd: number, size: number): number;
  /** fcntl with one integer argument (F_ADD_SEALS, F_GET_SEALS). */
  fcntl(fd: number, cmd: number, arg: number): number;
  flock(fd: number, operation: number): number;
  memfdCreate(name: string, flags: number): number;
  /** mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0); null when it failed. */
  mmapShared(fd: number, size: number): MappedMemory | null;
  errno(): number;
}

/** What each runtime backend implements. */
export interface FfiBackend {
  readonly runtime: "deno" | "bun";
  /** True when `futexWait` sleeps off the JS thread (Deno); false when it blocks it (Bun). */
  readonly asyncFutex: boolean;
  readonly libc: Libc;
  futexWait(
    view: Int32Array,
    index: number,
    expected: number,
    timeoutMs: number,
  ): Promise<FutexWaitResult>;
  futexWaitSync(
    view: Int32Array,
    index: number,
    expected: number,
    timeoutMs: number,
  ): FutexWaitResult;
  futexWake(view: Int32Array, index: number, count: number): number;
  /** The address of a view's first byte (to hand the same memory to a Worker). */
  addressOf(view: ArrayBufferView): number;
  /** An ArrayBuffer over `byteLength` bytes at `address` (memory this process owns). */
  bufferAt(address: number, byteLength: number): ArrayBuffer;
  /** sched_yield(2): give this thread's core to another runnable thread, if there is one. */
  yieldCpu(): void;
}

// Linux x86_64 ABI constants (asm-generic/fcntl.h, mman.h, futex.h, unistd_64.h, memfd.h,
// file.h).
export const O_RDONLY = 0;
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_CLOEXEC = 0o2000000;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const EACCES = 13;
export const EWOULDBLOCK = 11;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const SYS_FUTEX = 202;
/** Shared (not FUTEX_PRIVATE_FLAG) ops, so they work across processes. */
export const FUTEX_WAIT = 0;
export const FUTEX_WAKE = 1;
export const EAGAIN = 11;
export const EINTR = 4;
export const ETIMEDOUT = 110;

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  24: "EMFILE",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  38: "ENOSYS",
  75: "EOVERFLOW",
  110: "ETIMEDOUT",
};

/**
 * A failed libc call. `message` names the call, the path (if any) and the errno.
 *
 * @example
 * ```ts
 * try { await mapShared("/dev/shm/missing", 4096); }
 * catch (e) { if (e instanceof FfiError && e.code === "ENOENT") console.log("no region yet"); }
 * ```
 */
export class FfiError extends Error {
  /** The libc function that failed, e.g. "open". */
  readonly call: string;
  /** The path involved, or "" when none. */
  readonly path: string;
  /** errno value (0 if unknown). */
  readonly errno: number;
  /** Symbolic errno name such as "ENOENT", or "E<number>". */
  readonly code: string;
  constructor(call: string, path: string, errno: number, detail = "") {
    const code = ERRNO_NAMES[errno] ?? `E${errno}`;
    super(
      `${call}(${path}) failed: ${code} (errno ${errno})${detail ? `: ${detail}` : ""}`,
    );
    this.name = "FfiError";
    this.call = call;
    this.path = path;
    this.errno = errno;
    this.code = code;
  }
}

/** Encode a path as a NUL-terminated C string. */
export function cString(s: string): Uint8Array {
  const enc = new TextEncoder().encode(s);
  const out = new Uint8Array(enc.length + 1);
  out.set(enc);
  return out;
}

/** Validate futex arguments shared by both backends; returns the byte offset of the word. */
export function checkFutexArgs(view: Int32Array, index: number): void {
  if (!(view instanceof Int32Array)) throw new TypeError("futex: view must be an Int32Array");
  if (!Number.isInteger(index) || index < 0 || index >= view.length) {
    throw new RangeError(`futex: index ${index} outside view of ${view.length} words`);
  }
}

/** A relative timespec {tv_sec, tv_nsec} for `timeoutMs` (clamped to >= 0). */
export function timespec(timeoutMs: number): BigInt64Array {
  const ms = Math.max(0, Math.floor(timeoutMs));
  return new BigInt64Array([BigInt(Math.floor(ms / 1000)), BigInt((ms % 1000) * 1_000_000)]);
}

/**
 * The only runtime-specific surface of vbus: shared memory mapping, sealed regions, file locks,
 * futex parking and ivshmem discovery. At load time this module detects Deno (`globalThis.Deno`) or Bun
 * (`globalThis.Bun`) and dynamically imports `./deno.ts` or `./bun.ts`; neither runtime ever
 * loads the other's module. Both imports are literal, so a bundler (`npm run compile`, i.e.
 * `bun build --compile`) embeds both and the single executable keeps its fast path. Deno needs
 * `--allow-ffi` (and `--allow-read` for `findIvshmem`).
 *
 * @example
 * ```ts
 * import { futexWait, futexWake, mapShared } from "./ffi/mod.ts";
 * const m = await mapShared("/dev/shm/vbus-demo", 1 << 20, { create: true });
 * const words = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 16);
 * Atomics.store(words, 0, 1);
 * futexWake(words, 0, 1);
 * await futexWait(words, 0, 1, 10); // "timed-out" unless another process changes word 0
 * m.unmap();
 * ```
 * @module
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import process from "node:process";
import type { FfiBackend, FutexWaitResult, SharedMapping } from "./common.ts";
import * as sharedMemory from "./shared_memory.ts";
import type { SealedRegion } from "./shared_memory.ts";
import * as fileLock from "./file_lock.ts";
import type { FileLock, LockRefused } from "./file_lock.ts";

export { FfiError } from "./common.ts";
export type { FutexWaitResult, SharedMapping } from "./common.ts";
export type { SealedRegion } from "./shared_memory.ts";
export type { FileLock, LockRefused } from "./file_lock.ts";

function detectRuntime(): "deno" | "bun" {
  const g = globalThis as Record<string, unknown>;
  if (g.Bun !== undefined) return "bun";
  if (g.Deno !== undefined) return "deno";
  throw new Error("vbus ffi: unsupported runtime (needs Deno or Bun)");
}

/**
 * Which runtime backend is active.
 *
 * @example
 * ```ts
 * import { runtime } from "./ffi/mod.ts";
 * console.log(runtime); // "deno" or "bun"
 * ```
 */
export const runtime: "deno" | "bun" = detectRuntime();

// One literal specifier per runtime, so that bundlers (`bun build --compile`, `deno compile`)
// see both backends and embed them; only the running runtime's branch is ever evaluated.
const backend: FfiBackend = runtime === "deno"
  ? (await import("./deno.ts")).backend
  : (await import("./bun.ts")).backend;

/**
 * True when {@link futexWait} sleeps off the JS thread (Deno, `nonblocking` FFI). False under
 * Bun, where {@link futexWait} blocks the JS thread for up to `timeoutMs`.
 *
 * @example
 * ```ts
 * import { asyncFutex } from "./ffi/mod.ts";
 * const sliceMs = asyncFutex ? 100 : 2; // keep Bun's blocking slices short
 * ```
 */
export const asyncFutex: boolean = backend.asyncFutex;

/** Options of {@link mapShared}. */
export interface MapOptions {
  /**
   * Create the file if missing and ftruncate it to `size` (host side). Default false: then the
   * file's size is never changed (a sealed region, or a file QEMU maps, cannot be resized).
   */
  create?: boolean;
  /** With `create`: fail with EEXIST if the file already exists. Default false. */
  exclusive?: boolean;
  /** File mode when creating. Default 0o600. */
  mode?: number;
}

/**
 * Map `size` bytes of `path` (a /dev/shm file, or an ivshmem `resource2`) MAP_SHARED
 * read/write. The fd is closed right after mmap; the mapping stays valid until `unmap()`.
 * When not creating and `path` is a regular file shorter than `size`, this throws instead of
 * returning a mapping that would SIGBUS on access. A `/proc/<pid>/fd/<n>` path (a
 * {@link createSealedRegion} of another process) opens only for that process's user; the
 * error says so.
 *
 * @throws {FfiError} naming the call, path and errno (e.g. `open(/dev/shm/x) failed: ENOENT`).
 * @example
 * ```ts
 * import { mapShared } from "./ffi/mod.ts";
 * const host = await mapShared("/dev/shm/vbus-vm1", 16 << 20, { create: true });
 * const peer = await mapShared("/dev/shm/vbus-vm1", 16 << 20);
 * host.bytes[0] = 42;
 * console.log(peer.bytes[0]); // 42
 * peer.unmap(); host.unmap();
 * ```
 */
export function mapShared(
  path: string,
  size: number,
  options: MapOptions = {},
): Promise<SharedMapping> {
  try {
    return Promise.resolve(mapSharedSync(path, size, options));
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * {@link mapShared}, synchronously (mmap does not block on tmpfs or a PCI BAR).
 *
 * @example
 * ```ts
 * const m = mapSharedSync("/dev/shm/vbus-vm1", 1 << 24, { create: true });
 * ```
 */
export function mapSharedSync(path: string, size: number, options: MapOptions = {}): SharedMapping {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`mapShared(${path}): size must be a positive integer, got ${size}`);
  }
  const create = options.create ?? false;
  if (!create) {
    let st;
    try {
      st = statSync(path);
    } catch {
      st = undefined; // let open() report the real errno
    }
    if (st && st.isFile() && st.size < size) {
      throw new RangeError(
        `mapShared(${path}): file is ${st.size} bytes, shorter than the requested ${size}`,
      );
    }
  }
  return sharedMemory.mapFile(backend.libc, path, size, {
    create,
    exclusive: options.exclusive ?? false,
    mode: options.mode ?? 0o600,
  });
}

/**
 * Create `size` bytes of shared memory nobody can resize: a memfd named `name` (it shows as
 * `/memfd:<name>` in /proc), sealed with F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_SEAL, and
 * mapped. Another process of the same user maps it with `mapSharedSync(region.path, size)`
 * (`/proc/<pid>/fd/<fd>`); any `ftruncate` of it fails with EPERM, so no process that maps it
 * can make this one SIGBUS. `unmap()` unmaps it and closes the fd: keep it until the other
 * process no longer needs to open it.
 *
 * @throws {FfiError} naming the failing call (memfd_create, ftruncate, fcntl, mmap).
 * @example
 * ```ts
 * import { createSealedRegion, mapSharedSync } from "./ffi/mod.ts";
 * const region = createSealedRegion("vbus-demo", 1 << 20);
 * const peer = mapSharedSync(region.path, 1 << 20); // e.g. in a client process
 * peer.unmap(); region.unmap();
 * ```
 */
export function createSealedRegion(name: string, size: number): SealedRegion {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(
      `createSealedRegion(${name}): size must be a positive integer, got ${size}`,
    );
  }
  return sharedMemory.createSealedRegion(backend.libc, name, size, process.pid);
}

/**
 * Take an exclusive `flock` on `path` without waiting (the file is created with `mode`,
 * default 0o644, if missing, and kept afterwards). On success `note` (e.g. the pid) is written
 * into the file and the lock is returned; the kernel releases it when this process exits,
 * however it exits. When another process (or another open file of this one) holds it, returns
 * `{ path, heldBy }` with the holder's note instead.
 *
 * @throws {FfiError} when the file cannot be opened (e.g. EACCES on its directory).
 * @example
 * ```ts
 * import { tryLockFile } from "./ffi/mod.ts";
 * const lock = tryLockFile("/run/vbus/vm1.sock.lock", { note: `${process.pid}\n` });
 * if ("heldBy" in lock) throw new Error(`vm1 is served by pid ${lock.heldBy}`);
 * ```
 */
export function tryLockFile(
  path: string,
  options: { note?: string; mode?: number } = {},
): FileLock | LockRefused {
  return fileLock.tryLockFile(backend.libc, path, {
    mode: options.mode ?? 0o644,
    note: options.note ?? `${process.pid}\n`,
  });
}

/**
 * Sleep while `view[index] === expected`, at most `timeoutMs` (always give one). The word may
 * live in a mapping shared with other processes (shared futex, not FUTEX_PRIVATE).
 * Resolves "ok" when woken (or spuriously), "not-equal" when the word already differed,
 * "timed-out" otherwise. Callers must re-check their condition in every case.
 *
 * Deno: the syscall runs on a worker thread; the event loop stays free.
 * Bun: blocks the JS thread for up to `timeoutMs` (no nonblocking FFI); keep it short, or
 * call it from a Worker that owns the consumer loop.
 * Measured wake-up round trip (two processes, futex ping-pong, p50, noisy 2-core host):
 * Bun blocking 6.6 us; Deno blocking 15 us; Deno nonblocking 7.5-21 us; p99 0.2-0.45 ms.
 *
 * @example
 * ```ts
 * import { futexWait } from "./ffi/mod.ts";
 * const words = new Int32Array(mapping.bytes.buffer, 0, 64);
 * const seq = Atomics.load(words, 3);
 * if (!haveWork()) await futexWait(words, 3, seq, 50);
 * ```
 */
export function futexWait(
  view: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
): Promise<FutexWaitResult> {
  return backend.futexWait(view, index, expected, timeoutMs);
}

/**
 * Blocking variant of {@link futexWait} in both runtimes (lowest latency; blocks the thread).
 *
 * @example
 * ```ts
 * import { futexWaitSync } from "./ffi/mod.ts";
 * futexWaitSync(words, 3, seq, 5); // "ok" | "not-equal" | "timed-out"
 * ```
 */
export function futexWaitSync(
  view: Int32Array,
  index: number,
  expected: number,
  timeoutMs: number,
): FutexWaitResult {
  return backend.futexWaitSync(view, index, expected, timeoutMs);
}

/**
 * Wake up to `count` waiters sleeping on `view[index]` (in any process). Returns how many
 * were woken. Change the word (e.g. `Atomics.add`) before waking.
 *
 * @example
 * ```ts
 * import { futexWake } from "./ffi/mod.ts";
 * Atomics.add(words, 3, 1);
 * futexWake(words, 3, 1);
 * ```
 */
export function futexWake(view: Int32Array, index: number, count = 1): number {
  return backend.futexWake(view, index, count);
}

/**
 * Give this thread's core to another runnable thread or process, if one waits for it
 * (sched_yield(2); returns at once when none does). A poller that found nothing calls it so
 * that, with more busy processes than cores, the process it waits for gets to run now rather
 * than at the end of the scheduler's time slice.
 *
 * @example
 * ```ts
 * import { yieldCpu } from "./ffi/mod.ts";
 * const word = new Int32Array(4); // in practice a word another process writes
 * for (let polls = 0; polls < 100 && Atomics.load(word, 0) === 0; polls++) yieldCpu();
 * ```
 */
export function yieldCpu(): void {
  backend.yieldCpu();
}

/**
 * The address of a view's first byte, so that another thread of this process (a Worker) can
 * see the same memory through {@link bufferAt}.
 *
 * @example
 * ```ts
 * import { addressOf, bufferAt } from "./ffi/mod.ts";
 * const same = new Int32Array(bufferAt(addressOf(words), words.byteLength));
 * ```
 */
export function addressOf(view: ArrayBufferView): number {
  return backend.addressOf(view);
}

/**
 * An ArrayBuffer over `byteLength` bytes at `address` (from {@link addressOf} in this process;
 * any other address crashes the process).
 *
 * @example
 * ```ts
 * import { bufferAt } from "./ffi/mod.ts";
 * const words = new Int32Array(bufferAt(address, 4096));
 * ```
 */
export function bufferAt(address: number, byteLength: number): ArrayBuffer {
  return backend.bufferAt(address, byteLength);
}

/** Where a guest finds its ivshmem shared memory. */
export interface IvshmemDevice {
  /** PCI device directory, e.g. /sys/bus/pci/devices/0000:00:04.0 */
  device: string;
  /** The BAR2 file to pass to {@link mapShared}. */
  path: string;
  /** BAR2 size in bytes. */
  size: number;
}

/** PCI ids of QEMU's ivshmem (Red Hat virtio vendor, ivshmem device). */
export const IVSHMEM_VENDOR = 0x1af4;
/** PCI device id of ivshmem-plain / ivshmem-doorbell. */
export const IVSHMEM_DEVICE = 0x1110;

/**
 * Guest side: find the first ivshmem PCI device (vendor 0x1af4, device 0x1110) and return the
 * path and size of its BAR2 (`resource2`), or null when there is none. The size comes from the
 * third line of the device's `resource` file (start end flags). `sysfsRoot` is for tests.
 *
 * @example
 * ```ts
 * import { findIvshmem, mapShared } from "./ffi/mod.ts";
 * const dev = findIvshmem();
 * if (dev) { const m = await mapShared(dev.path, dev.size); }
 * ```
 */
export function findIvshmem(sysfsRoot = "/sys/bus/pci/devices"): IvshmemDevice | null {
  let names: string[];
  try {
    names = readdirSync(sysfsRoot).sort();
  } catch {
    return null;
  }
  for (const name of names) {
    const dir = `${sysfsRoot}/${name}`;
    try {
      const vendor = parseInt(readFileSync(`${dir}/vendor`, "utf8").trim(), 16);
      const device = parseInt(readFileSync(`${dir}/device`, "utf8").trim(), 16);
      if (vendor !== IVSHMEM_VENDOR || device !== IVSHMEM_DEVICE) continue;
      const path = `${dir}/resource2`;
      let size = 0;
      try {
        const line = readFileSync(`${dir}/resource`, "utf8").split("\n")[2] ?? "";
        const [start, end] = line.trim().split(/\s+/).map((x) => BigInt(x));
        if (end > start) size = Number(end - start + 1n);
      } catch {
        size = 0;
      }
      if (size === 0) size = statSync(path).size;
      if (size > 0) return { device: dir, path, size };
    } catch {
      continue;
    }
  }
  return null;
}

export { FutexWaiter } from "./futex_waiter.ts";

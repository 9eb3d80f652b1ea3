/**
 * Shared memory on top of a backend's {@link Libc}: mapping a file (a VM's `/dev/shm` backing
 * file, an ivshmem BAR, a region a broker handed out), and creating a sealed memfd region that
 * nobody can shrink. Runtime-neutral; `ffi/mod.ts` exposes these with its backend's libc.
 *
 * Why sealed memfds: a process that can `ftruncate` a file another process has mapped makes
 * that process die with SIGBUS on its next access past the new end. A host client must be
 * able to open its region read/write to map it, so a plain file lets any host client kill the
 * broker. A memfd sealed with F_SEAL_SHRINK (and GROW, and SEAL so the seals stay) cannot
 * change size through any file descriptor, whoever opens it.
 *
 * @example
 * ```ts
 * // Use ffi/mod.ts: mapSharedSync(path, size) and createSealedRegion(name, size).
 * import { createSealedRegion } from "./mod.ts";
 * const region = createSealedRegion("vbus-demo", 1 << 20);
 * console.log(region.path); // "/proc/<pid>/fd/<fd>": another process of this user maps it
 * region.unmap();
 * ```
 * @module
 */
import {
  F_ADD_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  FfiError,
  type Libc,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  O_CLOEXEC,
  O_CREAT,
  O_EXCL,
  O_RDWR,
  type SharedMapping,
} from "./common.ts";

/** A sealed memfd region: its size can never change; the fd lives until `unmap()`. */
export interface SealedRegion extends SharedMapping {
  /** The memfd in this process. Closed by `unmap()`. */
  readonly fd: number;
  /** `/proc/<pid>/fd/<fd>`: how another process of the same user opens this memory. */
  readonly path: string;
}

/** The seals every region gets: no shrinking, no growing, no changing the seals. */
export const REGION_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

/**
 * Map `size` bytes of `path` MAP_SHARED read/write. With `create` the file is created if
 * missing (or, with `exclusive`, must not exist yet) and sized to `size`; without `create` it
 * is never resized, so mapping a region someone else sealed, or a file QEMU uses, never
 * touches its size. The fd is closed right after mmap.
 *
 * @example
 * ```ts
 * const m = mapFile(libc, "/dev/shm/vbus-vm1", 1 << 24, { create: false });
 * ```
 */
export function mapFile(
  libc: Libc,
  path: string,
  size: number,
  opts: { create: boolean; exclusive: boolean; mode: number },
): SharedMapping {
  let flags = O_RDWR | O_CLOEXEC;
  if (opts.create) flags |= O_CREAT | (opts.exclusive ? O_EXCL : 0);
  const fd = libc.open(path, flags, opts.mode);
  if (fd < 0) throw openError(path, libc.errno());
  try {
    if (opts.create && libc.ftruncate(fd, size) !== 0) {
      throw new FfiError("ftruncate", path, libc.errno(), `size ${size}`);
    }
    return mapping(libc, fd, path, size, false);
  } finally {
    libc.close(fd);
  }
}

/**
 * Create a memfd of `size` bytes named `name` (shown as `/memfd:<name>` in /proc), seal it
 * against any size change, and map it. Other processes of the same user map it through
 * {@link SealedRegion.path}; an `ftruncate` through any fd fails with EPERM.
 *
 * @throws {FfiError} naming the call (memfd_create, ftruncate, fcntl, mmap) and errno.
 * @example
 * ```ts
 * const r = createSealedRegion(libc, "vbus-1234-1", 16 << 20, process.pid);
 * r.unmap(); // unmaps and closes the memfd
 * ```
 */
export function createSealedRegion(
  libc: Libc,
  name: string,
  size: number,
  pid: number,
): SealedRegion {
  const fd = libc.memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw new FfiError("memfd_create", name, libc.errno());
  const path = `/proc/${pid}/fd/${fd}`;
  try {
    if (libc.ftruncate(fd, size) !== 0) {
      throw new FfiError("ftruncate", path, libc.errno(), `size ${size}`);
    }
    if (libc.fcntl(fd, F_ADD_SEALS, REGION_SEALS) !== 0) {
      throw new FfiError("fcntl", path, libc.errno(), "F_ADD_SEALS");
    }
    const m = mapping(libc, fd, path, size, true);
    return { ...m, fd, path, unmap: m.unmap };
  } catch (err) {
    libc.close(fd);
    throw err;
  }
}

function mapping(
  libc: Libc,
  fd: number,
  path: string,
  size: number,
  ownsFd: boolean,
): SharedMapping {
  const mem = libc.mmapShared(fd, size);
  if (mem === null) throw new FfiError("mmap", path, libc.errno(), `size ${size}`);
  let mapped = true;
  return {
    bytes: mem.bytes,
    size,
    path,
    unmap() {
      if (!mapped) return;
      mapped = false;
      const rc = mem.munmap();
      const err = rc === 0 ? 0 : libc.errno();
      if (ownsFd) libc.close(fd);
      if (rc !== 0) throw new FfiError("munmap", path, err);
    },
  };
}

/** `/proc/<pid>/fd/<n>`: a region another process handed out by its fd. */
const PROC_FD = /^\/proc\/\d+\/fd\/\d+$/;

function openError(path: string, errno: number): FfiError {
  if (PROC_FD.test(path) && (errno === 13 || errno === 1)) {
    // The kernel allows opening another process's fd only to its own user (ptrace read access).
    return new FfiError(
      "open",
      path,
      errno,
      "a region handed out by another process can only be opened by that process's user",
    );
  }
  return new FfiError("open", path, errno);
}

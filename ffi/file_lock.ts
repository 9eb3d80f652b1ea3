/**
 * An exclusive, non-blocking `flock` on a file, held for as long as this process keeps it: the
 * kernel drops it when the process dies however it dies (kill -9 included), so a lock is never
 * stale. The holder writes a note (its pid) into the file so that whoever is refused can say
 * who holds it. The file is never removed: unlinking a lock file lets two processes hold
 * "the" lock on two different inodes.
 *
 * @example
 * ```ts
 * // Use ffi/mod.ts.
 * import { tryLockFile } from "./mod.ts";
 * const lock = tryLockFile("/run/vbus/vm1.sock.lock", { note: `${process.pid}\n` });
 * if ("heldBy" in lock) console.log(`locked by pid ${lock.heldBy}`);
 * else lock.release();
 * ```
 * @module
 */
import { readFileSync, writeFileSync } from "node:fs";
import {
  EACCES,
  EWOULDBLOCK,
  FfiError,
  type Libc,
  LOCK_EX,
  LOCK_NB,
  O_CLOEXEC,
  O_CREAT,
  O_RDONLY,
  O_RDWR,
} from "./common.ts";

/** A lock this process holds. */
export interface FileLock {
  readonly path: string;
  /** Give the lock up (closes its fd). Idempotent. */
  release(): void;
}

/** Someone else holds the lock: `heldBy` is the note they wrote ("" when unreadable). */
export interface LockRefused {
  readonly path: string;
  readonly heldBy: string;
}

/**
 * Take an exclusive flock on `path` (created with `mode` if missing) without waiting. Returns
 * the lock, or who holds it. Another open file of this same process counts as another holder.
 *
 * @throws {FfiError} when the file cannot be opened or locked for another reason.
 * @example
 * ```ts
 * const r = tryLockFile(libc, "/run/vbus/vm1.sock.lock", { mode: 0o644, note: "123\n" });
 * ```
 */
export function tryLockFile(
  libc: Libc,
  path: string,
  opts: { mode: number; note: string },
): FileLock | LockRefused {
  let fd = libc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, opts.mode);
  let writable = true;
  if (fd < 0 && libc.errno() === EACCES) {
    // Created by another user: a read-only fd can hold the lock just as well.
    fd = libc.open(path, O_RDONLY | O_CLOEXEC, 0);
    writable = false;
  }
  if (fd < 0) throw new FfiError("open", path, libc.errno(), "lock file");
  if (libc.flock(fd, LOCK_EX | LOCK_NB) !== 0) {
    const err = libc.errno();
    libc.close(fd);
    if (err !== EWOULDBLOCK) throw new FfiError("flock", path, err, "LOCK_EX|LOCK_NB");
    let heldBy = "";
    try {
      heldBy = readFileSync(path, "utf8").trim();
    } catch { /* unreadable: the holder is unknown */ }
    return { path, heldBy };
  }
  if (writable) {
    try {
      writeFileSync(path, opts.note);
    } catch { /* the lock holds without the note */ }
  }
  let held = true;
  return {
    path,
    release() {
      if (!held) return;
      held = false;
      libc.close(fd);
    },
  };
}

/**
 * The guest side of a virtio-serial port: the character device `/dev/virtio-ports/NAME`.
 * Measured semantics (docs/ARCHITECTURE.md): a read returns EOF at once while no host process
 * is connected, writes block until one connects, and a second opener gets EBUSY.
 *
 * @example
 * ```ts
 * import { openDevice } from "./device_port.ts";
 * const port = await openDevice("/dev/virtio-ports/org.vbus.0");
 * port.write(new TextEncoder().encode("hello"));
 * ```
 * @module
 */
import { type FileHandle, open } from "node:fs/promises";
import { type Port, PORT_HIGH_WATER_BYTES } from "./port.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";

/** Directory where virtio-serial ports appear by name. */
export const VIRTIO_PORTS_DIR = "/dev/virtio-ports";
/** Default virtio-serial port name a guest opens: `/dev/virtio-ports/org.vbus.0`. */
export const DEFAULT_PORT_NAME = "org.vbus.0";
/** Bytes read per read() call. */
const READ_CHUNK_BYTES = 64 * 1024;

/** A {@link Port} over a character device opened read-write. */
export class DevicePort implements Port {
  #fh: FileHandle;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #writing = false;
  #closed = false;
  #onClose?: (err?: Error) => void;
  #drainWaiters: (() => void)[] = [];
  #paused = false;
  #unpause?: () => void;

  constructor(fh: FileHandle, readonly description: string) {
    this.#fh = fh;
  }

  start(onData: (chunk: Uint8Array) => void, onClose: (err?: Error) => void): void {
    this.#onClose = onClose;
    (async () => {
      try {
        while (!this.#closed) {
          if (this.#paused) await new Promise<void>((r) => this.#unpause = r);
          // A fresh buffer per read: frames are handed on as views of it.
          const buf = new Uint8Array(READ_CHUNK_BYTES);
          const { bytesRead } = await this.#fh.read(buf, 0, buf.length, null);
          if (bytesRead === 0) return this.#finish(); // EOF: the host side is gone
          onData(buf.subarray(0, bytesRead));
        }
      } catch (err) {
        this.#finish(this.#closed ? undefined : err as Error);
      }
    })();
  }

  write(bytes: Uint8Array): boolean {
    if (this.#closed) return false;
    this.#queue.push(bytes);
    this.#queued += bytes.length;
    if (!this.#writing) this.#pump();
    return this.#queued < PORT_HIGH_WATER_BYTES;
  }

  get pending(): number {
    return this.#queued;
  }

  drained(): Promise<void> {
    if (this.#closed || this.#queued < PORT_HIGH_WATER_BYTES) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    const r = this.#unpause;
    this.#unpause = undefined;
    r?.();
  }

  close(): void {
    if (this.#closed) return;
    this.#finish();
    this.resume();
  }

  async #pump() {
    this.#writing = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        // Coalesce small queued chunks into one write (one VM exit instead of many).
        const chunk = this.#takeBatch();
        let off = 0;
        while (off < chunk.length) {
          const { bytesWritten } = await this.#fh.write(chunk, off, chunk.length - off, null);
          off += bytesWritten;
        }
        this.#queued -= chunk.length;
        if (this.#queued < PORT_HIGH_WATER_BYTES) this.#wakeDrain();
      }
    } catch (err) {
      this.#finish(err as Error);
    } finally {
      this.#writing = false;
    }
  }

  #takeBatch(): Uint8Array {
    const q = this.#queue;
    if (q.length === 1 || q[0].length >= READ_CHUNK_BYTES) return q.shift()!;
    let n = 0;
    let count = 0;
    while (count < q.length && n + q[count].length <= READ_CHUNK_BYTES) n += q[count++].length;
    const out = new Uint8Array(n);
    let off = 0;
    for (const part of q.splice(0, count)) {
      out.set(part, off);
      off += part.length;
    }
    return out;
  }

  #finish(err?: Error) {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#wakeDrain();
    this.#fh.close().catch(() => {});
    this.#onClose?.(err);
  }

  #wakeDrain() {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }
}

/**
 * Open a virtio-serial character device. `EBUSY` means another process has the port open.
 *
 * @example
 * ```ts
 * const port = await openDevice(portPath("org.vbus.0"));
 * ```
 */
export async function openDevice(path: string): Promise<DevicePort> {
  try {
    const fh = await open(path, "r+");
    return new DevicePort(fh, path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = e.code === "EBUSY"
      ? " (another process has this port open: a virtio-serial port takes one opener)"
      : e.code === "ENOENT"
      ? " (no such port: is the VM started with the vbus virtserialport, see `vbus qemu-args`?)"
      : "";
    throw new VbusError(ErrorCode.Port, `cannot open ${path}: ${e.message}${hint}`);
  }
}

/**
 * Path of a named virtio-serial port in a guest.
 *
 * @example
 * ```ts
 * portPath("org.vbus.0"); // "/dev/virtio-ports/org.vbus.0"
 * ```
 */
export function portPath(name: string): string {
  return name.includes("/") ? name : `${VIRTIO_PORTS_DIR}/${name}`;
}

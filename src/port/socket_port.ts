/**
 * Ports over unix sockets (node:net, the same in Deno and Bun): the broker's connection to a
 * QEMU chardev, a host client's connection to the broker, and the simulated VMs of the tests.
 *
 * @example
 * ```ts
 * import { connectUnix } from "./socket_port.ts";
 * const port = await connectUnix("/run/vbus/broker.sock");
 * port.start((chunk) => console.log(chunk.length), () => console.log("closed"));
 * ```
 * @module
 */
import { connect, type Socket } from "node:net";
import type { Port } from "./port.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";

/** A {@link Port} over a connected `node:net` socket. */
export class SocketPort implements Port {
  #socket: Socket;
  #closed = false;
  #onClose?: (err?: Error) => void;
  #drainWaiters: (() => void)[] = [];

  constructor(socket: Socket, readonly description: string) {
    this.#socket = socket;
    socket.setNoDelay?.(true);
    socket.on("drain", () => this.#wakeDrain());
  }

  start(onData: (chunk: Uint8Array) => void, onClose: (err?: Error) => void): void {
    this.#onClose = onClose;
    const s = this.#socket;
    let error: Error | undefined;
    s.on("data", (chunk: Uint8Array) => onData(chunk));
    s.on("error", (err: Error) => error = err);
    s.on("close", () => this.#finish(error));
    if (s.destroyed) this.#finish(error);
  }

  write(bytes: Uint8Array): boolean {
    if (this.#closed) return false;
    return this.#socket.write(bytes);
  }

  get pending(): number {
    return this.#socket.writableLength;
  }

  drained(): Promise<void> {
    if (this.#closed || !this.#socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  pause(): void {
    this.#socket.pause();
  }

  resume(): void {
    this.#socket.resume();
  }

  close(): void {
    if (this.#closed) return;
    // Nothing more is read: a peer refused for what it sent must not go on filling memory
    // while its connection winds down.
    this.#socket.pause();
    // Once what we wrote is handed to the kernel (the peer can still read it from a unix
    // socket), nothing keeps the connection; a stuck peer gets at most a second.
    this.#socket.end(() => this.#socket.destroy());
    const timer = setTimeout(() => this.#socket.destroy(), 1000);
    (timer as { unref?: () => void }).unref?.();
    this.#socket.once("close", () => clearTimeout(timer));
  }

  /** Destroy at once, without flushing. */
  destroy(): void {
    this.#socket.destroy();
  }

  #finish(err?: Error) {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeDrain();
    this.#onClose?.(err);
  }

  #wakeDrain() {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }
}

/**
 * Connect to a unix socket and return a {@link SocketPort}. Rejects with a `PORT` error that
 * names the path when nothing listens there.
 *
 * @example
 * ```ts
 * const port = await connectUnix("/run/vbus/vm1.sock");
 * ```
 */
export function connectUnix(path: string): Promise<SocketPort> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    const onError = (err: Error) => {
      socket.destroy();
      reject(new VbusError(ErrorCode.Port, `cannot connect to ${path}: ${err.message}`));
    };
    socket.once("error", onError);
    socket.once("connect", () => {
      socket.off("error", onError);
      resolve(new SocketPort(socket, path));
    });
  });
}

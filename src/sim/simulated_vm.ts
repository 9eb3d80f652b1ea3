/**
 * A simulated VM port for tests and the demo, with QEMU's semantics: it listens on a unix
 * socket the way a `-chardev socket,server=on,wait=off` does (one host connection at a time;
 * the broker connects to it), and offers the guest side as a {@link Port} that behaves like
 * `/dev/virtio-ports/NAME`: one opener at a time, EOF at once while no host is connected,
 * EOF when the host goes away, and host bytes written while the guest has the port closed are
 * delivered when it opens it. Nothing in vbus is mocked: the broker talks to a real socket.
 *
 * @example
 * ```ts
 * import { SimulatedVm } from "./simulated_vm.ts";
 * import { connect } from "../client/bus.ts";
 * const vm = new SimulatedVm("vm1", "/tmp/vm1.sock");
 * await vm.start(); // the broker can now connect to /tmp/vm1.sock
 * const bus = await connect({ transport: () => vm.open() }); // the guest's client
 * ```
 * @module
 */
import { createServer, type Server, type Socket } from "node:net";
import { unlink } from "node:fs/promises";
import type { Port } from "../port/port.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";

/** A simulated guest with one virtio-serial port. */
export class SimulatedVm {
  #server?: Server;
  #host?: Socket; // the accepted host (broker) connection
  #waitingHosts: Socket[] = []; // QEMU serves one client; later ones wait their turn
  #guest?: GuestPort;
  #fromHostWhileClosed: Uint8Array[] = [];

  constructor(readonly name: string, readonly socketPath: string) {}

  /** Is a host process (the broker) connected to the chardev socket? */
  get hostConnected(): boolean {
    return this.#host !== undefined;
  }

  /** Is the guest side open? */
  get guestOpen(): boolean {
    return this.#guest !== undefined;
  }

  /** "Power on": listen on the chardev socket. */
  async start(): Promise<void> {
    await unlink(this.socketPath).catch(() => {});
    const server = createServer((socket) => this.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.socketPath, () => resolve());
    });
    this.#server = server;
  }

  /** "Power off" (like killing QEMU): drop the host connection and the socket. */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const s of this.#waitingHosts.splice(0)) s.destroy();
    this.#host?.destroy();
    this.#host = undefined;
    this.#guest?.hostGone();
    this.#guest = undefined;
    this.#fromHostWhileClosed = [];
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await unlink(this.socketPath).catch(() => {});
  }

  /** Guest side: open the port device. Rejects with EBUSY semantics if already open. */
  open(): Promise<Port> {
    if (!this.#server) {
      return Promise.reject(new VbusError(ErrorCode.Port, `VM ${this.name} is powered off`));
    }
    if (this.#guest) {
      return Promise.reject(
        new VbusError(ErrorCode.Port, `cannot open port of ${this.name}: EBUSY (already open)`),
      );
    }
    const port = new GuestPort(this);
    this.#guest = port;
    return Promise.resolve(port);
  }

  /** @internal */
  guestStarted(port: GuestPort) {
    if (!this.#host) {
      // Like the real device: a read with no host connected returns EOF at once.
      queueMicrotask(() => port.hostGone());
      return;
    }
    for (const chunk of this.#fromHostWhileClosed.splice(0)) port.deliver(chunk);
  }

  /** @internal */
  guestWrite(bytes: Uint8Array): boolean {
    return this.#host ? this.#host.write(bytes) : true;
  }

  /** @internal */
  guestPending(): number {
    return this.#host?.writableLength ?? 0;
  }

  /** @internal */
  guestClosed(port: GuestPort) {
    if (this.#guest === port) this.#guest = undefined;
  }

  #accept(socket: Socket) {
    if (this.#host) {
      this.#waitingHosts.push(socket);
      socket.on("close", () => {
        this.#waitingHosts = this.#waitingHosts.filter((s) => s !== socket);
      });
      return;
    }
    this.#host = socket;
    socket.on("data", (chunk: Uint8Array) => {
      if (this.#guest?.started) this.#guest.deliver(chunk);
      else this.#fromHostWhileClosed.push(chunk);
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      if (this.#host !== socket) return;
      this.#host = undefined;
      this.#fromHostWhileClosed = [];
      const guest = this.#guest;
      this.#guest = undefined;
      guest?.hostGone(); // guest reads see EOF: the peer is gone
      const next = this.#waitingHosts.shift();
      if (next) this.#accept(next);
    });
  }
}

/** The guest's end of a {@link SimulatedVm} port. */
class GuestPort implements Port {
  readonly description: string;
  started = false;
  #vm: SimulatedVm;
  #onData?: (chunk: Uint8Array) => void;
  #onClose?: (err?: Error) => void;
  #closed = false;

  constructor(vm: SimulatedVm) {
    this.#vm = vm;
    this.description = `simulated /dev/virtio-ports of ${vm.name}`;
  }

  start(onData: (chunk: Uint8Array) => void, onClose: (err?: Error) => void): void {
    this.#onData = onData;
    this.#onClose = onClose;
    this.started = true;
    this.#vm.guestStarted(this);
  }

  get pending(): number {
    return this.#vm.guestPending();
  }

  write(bytes: Uint8Array): boolean {
    if (this.#closed) return false;
    return this.#vm.guestWrite(bytes);
  }

  drained(): Promise<void> {
    return new Promise((resolve) => {
      const poll =
        () => (this.#closed || this.pending < 1024 * 1024 ? resolve() : setTimeout(poll, 1));
      poll();
    });
  }

  close(): void {
    this.#finish();
  }

  #paused = false;
  #held: Uint8Array[] = [];

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    for (const chunk of this.#held.splice(0)) this.deliver(chunk);
  }

  deliver(chunk: Uint8Array) {
    if (this.#closed) return;
    if (this.#paused) this.#held.push(chunk);
    else this.#onData?.(chunk);
  }

  hostGone() {
    this.#finish();
  }

  #finish() {
    if (this.#closed) return;
    this.#closed = true;
    this.#vm.guestClosed(this);
    this.#onClose?.();
  }
}

/**
 * A {@link Port} whose input is fed by its owner instead of read from a descriptor: one
 * channel of a multiplexed stream (the broker's side of `vbus agent`, or a local process's
 * connection to the agent once its ATTACH is read). Writes, backpressure and close go to the
 * callbacks the owner gives. Input that arrives before `start()` or while paused is kept, in
 * order, and delivered when reading (re)starts.
 *
 * @example
 * ```ts
 * import { FedPort } from "./fed_port.ts";
 * const port = new FedPort("channel 1", {
 *   write: () => true, pending: () => 0, drained: () => Promise.resolve(), close: () => {},
 * });
 * port.start((chunk) => console.log(chunk.length), () => console.log("closed"));
 * port.feed(new Uint8Array(3)); // 3
 * port.end(); // closed
 * ```
 * @module
 */
import type { Port } from "./port.ts";

/** Where a {@link FedPort}'s output and controls go. */
export interface FedPortSink {
  write(bytes: Uint8Array): boolean;
  pending(): number;
  drained(): Promise<void>;
  /** The port's user closed it (after this, `onClose` runs). */
  close(): void;
  pause?(): void;
  resume?(): void;
}

/** See the module doc. */
export class FedPort implements Port {
  #sink: FedPortSink;
  #onData?: (chunk: Uint8Array) => void;
  #onClose?: (err?: Error) => void;
  #queue: Uint8Array[] = [];
  #buffered = 0;
  #paused = false;
  #closed = false;
  #ended?: { err?: Error };

  constructor(readonly description: string, sink: FedPortSink) {
    this.#sink = sink;
  }

  /** Bytes fed and not yet delivered (before start, or while paused). */
  get buffered(): number {
    return this.#buffered;
  }

  get pending(): number {
    return this.#sink.pending();
  }

  start(onData: (chunk: Uint8Array) => void, onClose: (err?: Error) => void): void {
    this.#onData = onData;
    this.#onClose = onClose;
    this.#flush();
  }

  /** Input from the peer, in order. */
  feed(chunk: Uint8Array): void {
    if (this.#closed || this.#ended) return;
    if (this.#onData && !this.#paused && this.#queue.length === 0) return this.#onData(chunk);
    this.#queue.push(chunk);
    this.#buffered += chunk.length;
  }

  /** The peer is gone (`err`: how): delivered after the input fed before it. */
  end(err?: Error): void {
    if (this.#closed || this.#ended) return;
    this.#ended = { err };
    this.#flush();
  }

  write(bytes: Uint8Array): boolean {
    if (this.#closed) return false;
    return this.#sink.write(bytes);
  }

  drained(): Promise<void> {
    return this.#closed ? Promise.resolve() : this.#sink.drained();
  }

  pause(): void {
    this.#paused = true;
    this.#sink.pause?.();
  }

  resume(): void {
    this.#paused = false;
    this.#flush();
    this.#sink.resume?.();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#buffered = 0;
    this.#sink.close();
    this.#onClose?.();
  }

  #flush() {
    if (!this.#onData || this.#closed) return;
    while (this.#queue.length > 0 && !this.#paused && !this.#closed) {
      const chunk = this.#queue.shift()!;
      this.#buffered -= chunk.length;
      this.#onData(chunk);
    }
    if (this.#ended && this.#queue.length === 0 && !this.#closed) {
      this.#closed = true;
      this.#onClose?.(this.#ended.err);
    }
  }
}

/**
 * Two {@link Port}s joined in memory: what one side writes, the other reads, in order, with no
 * socket and no copy. A broker serves a client in its own process through such a pair
 * (`Broker.localPort`): a host service that embeds the broker reaches it with no system call
 * and no wake-up of another process.
 *
 * Writes are delivered in a microtask, all chunks written in one synchronous run together, so a
 * write never re-enters the writer through the reader's handler. Backpressure is a port's:
 * `write` returns false once more than {@link PORT_HIGH_WATER_BYTES} wait undelivered (the
 * reader paused), and `drained()` resolves when they fell below it again. Closing one side
 * ends the other after what was written before the close.
 *
 * @example
 * ```ts
 * import { memoryPortPair } from "./memory_port.ts";
 * const [a, b] = memoryPortPair("example");
 * b.start((chunk) => console.log("b got", chunk), () => console.log("b closed"));
 * a.start(() => {}, () => {});
 * a.write(new Uint8Array([1, 2, 3])); // b got Uint8Array(3) [1, 2, 3], in a microtask
 * a.close(); // then: b closed
 * ```
 * @module
 */
import { FedPort } from "./fed_port.ts";
import { type Port, PORT_HIGH_WATER_BYTES } from "./port.ts";

/** One direction of a pair: chunks written on one side, fed to the other. */
class Lane {
  #chunks: Uint8Array[] = [];
  #queued = 0;
  #scheduled = false;
  #drainWaiters: (() => void)[] = [];
  #ended = false;
  reader?: FedPort;

  /** Bytes written and not yet read (queued here, or held by a paused reader). */
  get pending(): number {
    return this.#queued + (this.reader?.buffered ?? 0);
  }

  write(chunk: Uint8Array): boolean {
    if (this.#ended) return false;
    this.#chunks.push(chunk);
    this.#queued += chunk.length;
    this.#schedule();
    return this.pending < PORT_HIGH_WATER_BYTES;
  }

  drained(): Promise<void> {
    if (this.#ended || this.pending < PORT_HIGH_WATER_BYTES) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** The writer closed: the reader ends after what was written before. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#schedule();
  }

  /** The reader resumed: what it held is read now, so writers may go on. */
  readerResumed(): void {
    this.#wakeDrained();
  }

  #schedule() {
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#deliver());
  }

  #deliver() {
    this.#scheduled = false;
    const reader = this.reader!;
    const chunks = this.#chunks;
    this.#chunks = [];
    this.#queued = 0;
    for (const chunk of chunks) reader.feed(chunk);
    if (this.#ended) reader.end();
    this.#wakeDrained();
  }

  #wakeDrained() {
    if (this.#drainWaiters.length === 0) return;
    if (!this.#ended && this.pending >= PORT_HIGH_WATER_BYTES) return;
    for (const w of this.#drainWaiters.splice(0)) w();
  }
}

/**
 * A pair of ports joined in memory (see the module doc). `description` names both in logs:
 * the first is "`description` (client)", the second "`description` (server)".
 *
 * @example
 * ```ts
 * import { memoryPortPair } from "./memory_port.ts";
 * const [client, server] = memoryPortPair("local client");
 * server.start((chunk) => server.write(chunk), () => {}); // echo
 * client.start((chunk) => console.log(chunk.length), () => {});
 * client.write(new Uint8Array(8)); // 8
 * ```
 */
export function memoryPortPair(description: string): [Port, Port] {
  const toServer = new Lane();
  const toClient = new Lane();
  const side = (name: string, out: Lane, incoming: Lane): FedPort => {
    let closed = false;
    const port = new FedPort(name, {
      write: (bytes) => out.write(bytes),
      pending: () => out.pending,
      drained: () => out.drained(),
      close: () => {
        if (closed) return;
        closed = true;
        out.end();
      },
      resume: () => incoming.readerResumed(),
    });
    incoming.reader = port;
    return port;
  };
  const client = side(`${description} (client)`, toServer, toClient);
  const server = side(`${description} (server)`, toClient, toServer);
  return [client, server];
}

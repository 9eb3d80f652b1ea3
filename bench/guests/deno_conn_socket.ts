/**
 * A `Deno.Conn` (e.g. an AF_VSOCK connection from `Deno.connect({ transport: "vsock" })`) seen
 * through the few node:net `Socket` members the framing code uses (bench/lib/frame.ts and
 * bench/guests/net_clients.ts, bench/guests/vsock_relay.ts): `write`, `writableLength`, `end`,
 * `destroy`, `pause`, `resume` and the events
 * `data`, `drain`, `error`, `close`. Writes are queued and written in order by one pump; reads
 * run in a loop from construction.
 *
 * @example
 * ```ts
 * const conn = await Deno.connect({ transport: "vsock", cid: 2, port: 5000 });
 * const sock = new DenoConnSocket(conn);
 * sock.on("data", (chunk) => console.log(chunk.length));
 * sock.write(new Uint8Array([1, 2, 3]));
 * ```
 * @module
 */

/** The part of `Deno.Conn` used here. */
export interface DenoConn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

type Listener = (arg?: unknown) => void;

/** See the module doc. */
export class DenoConnSocket {
  private queue: Uint8Array[] = [];
  private queued = 0;
  private pumping = false;
  private closed = false;
  private paused: Promise<void> | undefined;
  private unpause: (() => void) | undefined;
  private listeners = new Map<string, Set<Listener>>();

  constructor(private conn: DenoConn) {
    void this.readLoop();
  }

  /** Bytes queued and not yet written. */
  get writableLength(): number {
    return this.queued;
  }

  on(event: string, fn: Listener): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, set = new Set());
    set.add(fn);
    return this;
  }
  once(event: string, fn: Listener): this {
    const once: Listener = (a) => {
      this.off(event, once);
      fn(a);
    };
    return this.on(event, once);
  }
  off(event: string, fn: Listener): this {
    this.listeners.get(event)?.delete(fn);
    return this;
  }
  private emit(event: string, arg?: unknown): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) fn(arg);
  }

  /** Queue bytes (the caller must not modify them afterwards). */
  write(chunk: Uint8Array): boolean {
    if (this.closed) return false;
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (!this.pumping) void this.pump();
    return this.queued < 16 * 1024;
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length && !this.closed) {
        const chunk = this.queue[0];
        let off = 0;
        while (off < chunk.length) off += await this.conn.write(chunk.subarray(off));
        this.queue.shift();
        this.queued -= chunk.length;
      }
    } catch (err) {
      this.fail(err as Error);
    } finally {
      this.pumping = false;
    }
    if (!this.closed) this.emit("drain");
  }

  /** Stop reading (backpressure) until {@link resume}. */
  pause(): void {
    this.paused ??= new Promise<void>((r) => (this.unpause = r));
  }
  /** Read again after {@link pause}. */
  resume(): void {
    const r = this.unpause;
    this.paused = this.unpause = undefined;
    r?.();
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        if (this.paused) await this.paused;
        if (this.closed) break;
        const buf = new Uint8Array(256 * 1024);
        const n = await this.conn.read(buf);
        if (n === null) break;
        this.emit("data", buf.subarray(0, n));
      }
    } catch (err) {
      if (!this.closed) this.emit("error", err);
    }
    this.destroy();
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.emit("error", err);
    this.destroy();
  }

  /** Close once the queue is written. */
  end(): void {
    const finish = () => this.destroy();
    if (this.queued === 0) finish();
    else this.once("drain", finish);
  }

  /** Close now. */
  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.resume();
    this.emit("close");
  }
}

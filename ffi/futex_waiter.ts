/**
 * An asynchronous futex wait that never blocks the event loop, in either runtime: a Worker
 * sleeps in FUTEX_WAIT on the shared word and wakes the main thread through
 * `Atomics.waitAsync` on a small control block (`futex_waiter_control.ts`).
 *
 * Why not the runtime's own async FFI: Bun has none (its `futexWait` blocks the JS thread),
 * and Deno's `nonblocking` calls go through a thread pool and a promise. Measured here,
 * process-to-process ping-pong: Bun 25 us with this waiter; Deno 45 us with it, 38 us with
 * `nonblocking` FFI.
 *
 * One waiter serves one sleeper: at most one `wait` at a time. Start it early and await
 * {@link FutexWaiter.ready}: a Worker takes milliseconds to start (more under `deno test`,
 * which type-checks it).
 *
 * @example
 * ```ts
 * import { FutexWaiter } from "./ffi/mod.ts";
 * const waiter = new FutexWaiter();
 * await waiter.ready;
 * const words = new Int32Array(mapping.bytes.buffer, 0, 64);
 * const seq = Atomics.load(words, 3);
 * if (!haveWork()) await waiter.wait(words, 3, seq, 50); // another process: Atomics.add + futexWake
 * await waiter.close();
 * ```
 * @module
 */
import { addressOf, futexWake } from "./mod.ts";
import type { FutexWaitResult } from "./common.ts";
import { WaiterControl, WaiterResult } from "./futex_waiter_control.ts";

const RESULTS: FutexWaitResult[] = ["ok", "not-equal", "timed-out"];
/** Extra time given to the worker beyond the futex timeout before giving up on it. */
const WORKER_GRACE_MS = 1000;
/** Longest wait for a new worker to start. */
const START_TIMEOUT_MS = 30_000;

interface AsyncWait {
  async: boolean;
  value: Promise<string> | string;
}
// deno-lint-ignore no-explicit-any
const waitAsync = (Atomics as any).waitAsync as (
  a: Int32Array,
  i: number,
  v: number,
  t?: number,
) => AsyncWait;

/**
 * The worker's module: beside this file, except in a `bun build --compile` executable, where
 * every bundled module's `import.meta.url` is the executable's own (`file:///$bunfs/root/vbus`)
 * and the worker, an entry point of its own (scripts/compile.mjs), keeps its project path.
 */
function workerModuleUrl(): string {
  const inBunExecutable = import.meta.url.startsWith("file:///$bunfs/");
  const path = inBunExecutable ? "./ffi/futex_worker.ts" : "./futex_worker.ts";
  return new URL(path, import.meta.url).href;
}

/** Sleeps in FUTEX_WAIT off the JS thread; see the module doc. */
export class FutexWaiter {
  /** Resolves once the worker listens (rejects if it cannot start). */
  readonly ready: Promise<void>;
  #ctl = new Int32Array(new SharedArrayBuffer(WaiterControl.BYTES));
  #worker: Worker;
  #request = 0;
  #busy = false;
  #closed = false;
  #failure: Error | null = null;
  #current: { view: Int32Array; index: number } | null = null;

  /** Start the worker. */
  constructor() {
    if (typeof waitAsync !== "function") throw new Error("FutexWaiter needs Atomics.waitAsync");
    const ctl = this.#ctl;
    this.#worker = new Worker(workerModuleUrl(), { type: "module" });
    this.#worker.onerror = (e: Event) => {
      e.preventDefault?.();
      this.#failure = new Error(`futex waiter worker failed: ${(e as ErrorEvent).message ?? e}`);
      Atomics.store(ctl, WaiterControl.DONE, this.#request);
      Atomics.notify(ctl, WaiterControl.DONE);
      Atomics.store(ctl, WaiterControl.READY, -1);
      Atomics.notify(ctl, WaiterControl.READY);
    };
    // Bun: do not keep the process alive just for this thread.
    (this.#worker as unknown as { unref?: () => void }).unref?.();
    // The worker installs its handler before any await, so this message is never lost.
    this.#worker.postMessage({ control: ctl.buffer });
    this.ready = (async () => {
      const r = waitAsync(ctl, WaiterControl.READY, 0, START_TIMEOUT_MS);
      if (r.async) await r.value;
      if (this.#failure) throw this.#failure;
      if (Atomics.load(ctl, WaiterControl.READY) !== 1) {
        throw new Error("futex waiter worker did not start");
      }
    })();
    this.ready.catch(() => {}); // reported by wait() as well
  }

  /**
   * Sleep until `view[index]` changes from `expected` and someone calls `futexWake` on it,
   * or `timeoutMs` passes. Resolves like `futexWait`. `view` must stay mapped until this
   * resolves.
   */
  async wait(
    view: Int32Array,
    index: number,
    expected: number,
    timeoutMs: number,
  ): Promise<FutexWaitResult> {
    if (this.#failure) throw this.#failure;
    if (this.#closed) return "not-equal";
    if (this.#busy) throw new Error("FutexWaiter: one wait at a time");
    if (!Number.isInteger(index) || index < 0 || index >= view.length) {
      throw new RangeError(`futex: index ${index} outside view of ${view.length} words`);
    }
    if (Atomics.load(view, index) !== (expected | 0)) return "not-equal";
    this.#busy = true;
    this.#current = { view, index };
    const ctl = this.#ctl;
    try {
      const request = ++this.#request;
      const address = addressOf(view);
      Atomics.store(ctl, WaiterControl.ADDRESS_LO, address % 2 ** 32 | 0);
      Atomics.store(ctl, WaiterControl.ADDRESS_HI, Math.floor(address / 2 ** 32) | 0);
      Atomics.store(ctl, WaiterControl.LENGTH, view.byteLength);
      Atomics.store(ctl, WaiterControl.INDEX, index);
      Atomics.store(ctl, WaiterControl.EXPECTED, expected | 0);
      Atomics.store(ctl, WaiterControl.TIMEOUT_MS, Math.max(1, Math.ceil(timeoutMs)));
      Atomics.store(ctl, WaiterControl.REQUEST, request);
      Atomics.notify(ctl, WaiterControl.REQUEST);
      // Loop: a notify meant for the previous request can arrive late and wake this one.
      const grace = Atomics.load(ctl, WaiterControl.READY) === 1
        ? WORKER_GRACE_MS
        : START_TIMEOUT_MS;
      const deadline = performance.now() + timeoutMs + grace;
      for (;;) {
        const done = Atomics.load(ctl, WaiterControl.DONE);
        if (done === request || this.#failure) break;
        const left = deadline - performance.now();
        if (left <= 0) return "timed-out"; // the worker is stuck: report it like a timeout
        const r = waitAsync(ctl, WaiterControl.DONE, done, left);
        if (r.async) await r.value;
      }
      if (this.#failure) throw this.#failure;
      const code = Atomics.load(ctl, WaiterControl.RESULT);
      if (code === WaiterResult.ERROR) throw new Error("futex waiter: FUTEX_WAIT failed");
      return RESULTS[code];
    } finally {
      this.#busy = false;
      this.#current = null;
    }
  }

  /** Stop the worker (waking a wait in progress). Resolves when it has let go of the memory. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const ctl = this.#ctl;
    Atomics.store(ctl, WaiterControl.STOP, 1);
    Atomics.add(ctl, WaiterControl.REQUEST, 1);
    Atomics.notify(ctl, WaiterControl.REQUEST);
    // A wait in progress sleeps in the kernel: a (spurious, harmless) wake ends it.
    const kick = () => this.#current && futexWake(this.#current.view, this.#current.index, 1 << 30);
    kick();
    for (let i = 0; i < 50 && Atomics.load(ctl, WaiterControl.DONE) !== -1 && !this.#failure; i++) {
      if (Atomics.load(ctl, WaiterControl.READY) !== 1) break; // never started: nothing to wait for
      const r = waitAsync(ctl, WaiterControl.DONE, Atomics.load(ctl, WaiterControl.DONE), 20);
      if (r.async) await r.value;
      kick();
    }
    this.#worker.terminate();
  }
}

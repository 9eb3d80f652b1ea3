/**
 * The thread behind {@link FutexWaiter} (`futex_waiter.ts`): it sleeps in FUTEX_WAIT so the
 * main thread's event loop never does. Requests and results pass through a small shared
 * control block (`WaiterControl` in futex_waiter.ts); the main thread awaits them with
 * `Atomics.waitAsync`, which wakes it faster than `postMessage` (measured ~18 us vs 35–75 us).
 *
 * @example
 * ```ts
 * // Started by FutexWaiter; not used directly.
 * new Worker(new URL("./futex_worker.ts", import.meta.url), { type: "module" });
 * ```
 * @module
 */
import { WaiterControl, WaiterResult } from "./futex_waiter_control.ts";

interface Init {
  control: SharedArrayBuffer;
}

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;
// The handler is installed before anything is awaited: Bun drops a message that arrives while
// a worker's top-level await is pending (ffi/mod.ts has one), so mod.ts is imported inside.
scope.onmessage = async (event: MessageEvent<Init>) => {
  scope.onmessage = null;
  const { bufferAt, futexWaitSync } = await import("./mod.ts");
  const ctl = new Int32Array(event.data.control);
  let words = new Int32Array(0);
  let address = 0;
  let seen = 0;
  Atomics.store(ctl, WaiterControl.READY, 1);
  Atomics.notify(ctl, WaiterControl.READY);
  for (;;) {
    Atomics.wait(ctl, WaiterControl.REQUEST, seen);
    seen = Atomics.load(ctl, WaiterControl.REQUEST);
    if (Atomics.load(ctl, WaiterControl.STOP) !== 0) break;
    let result: number;
    try {
      const at = (Atomics.load(ctl, WaiterControl.ADDRESS_HI) >>> 0) * 2 ** 32 +
        (Atomics.load(ctl, WaiterControl.ADDRESS_LO) >>> 0);
      const length = Atomics.load(ctl, WaiterControl.LENGTH);
      if (at !== address || length !== words.byteLength) {
        words = new Int32Array(bufferAt(at, length));
        address = at;
      }
      const r = futexWaitSync(
        words,
        Atomics.load(ctl, WaiterControl.INDEX),
        Atomics.load(ctl, WaiterControl.EXPECTED),
        Atomics.load(ctl, WaiterControl.TIMEOUT_MS),
      );
      result = r === "ok"
        ? WaiterResult.OK
        : r === "not-equal"
        ? WaiterResult.NOT_EQUAL
        : WaiterResult.TIMED_OUT;
    } catch {
      result = WaiterResult.ERROR;
    }
    Atomics.store(ctl, WaiterControl.RESULT, result);
    Atomics.store(ctl, WaiterControl.DONE, seen);
    Atomics.notify(ctl, WaiterControl.DONE);
  }
  Atomics.store(ctl, WaiterControl.DONE, -1);
  Atomics.notify(ctl, WaiterControl.DONE);
  scope.close?.();
};

/**
 * Let the event loop run (I/O, timers) before continuing: a loop that only awaits resolved
 * promises never does.
 *
 * @example
 * ```ts
 * import { yieldToEventLoop } from "./event_loop.ts";
 * const batches = [[1, 2], [3, 4]];
 * for (const batch of batches) {
 *   console.log(batch); // a turn's work
 *   await yieldToEventLoop(); // timers and I/O run before the next batch
 * }
 * ```
 * @module
 */
import { setImmediate } from "node:timers";

/** Resolves after pending I/O and timers had their turn (one `setImmediate`). */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

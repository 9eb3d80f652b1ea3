/**
 * Let the event loop run (I/O, timers) before continuing: a loop that only awaits resolved
 * promises never does.
 *
 * @example
 * ```ts
 * import { yieldToEventLoop } from "./event_loop.ts";
 * for (const batch of batches) { handle(batch); await yieldToEventLoop(); }
 * ```
 * @module
 */
import { setImmediate } from "node:timers";

/** Resolves after pending I/O and timers had their turn (one `setImmediate`). */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The control block shared by {@link FutexWaiter} and its worker: one Int32Array over a
 * SharedArrayBuffer, one field per index.
 *
 * ```text
 *   REQUEST     bumped by the main thread for each wait (the worker sleeps on it)
 *   DONE        set to REQUEST by the worker when that wait ended (the main thread awaits it)
 *   INDEX       word index in the watched view
 *   EXPECTED    value the word must still hold for the worker to sleep
 *   TIMEOUT_MS  longest sleep
 *   RESULT      a WaiterResult
 *   STOP        non-zero: the worker exits at its next request
 *   READY       set to 1 by the worker once it listens for requests
 *   ADDRESS_LO, ADDRESS_HI, LENGTH   the watched view (its address split in two 32-bit halves)
 * ```
 *
 * @example
 * ```ts
 * import { WaiterControl } from "./futex_waiter_control.ts";
 * const ctl = new Int32Array(new SharedArrayBuffer(WaiterControl.BYTES));
 * ```
 * @module
 */

/** Field indexes of the control block (see the module doc). */
export const WaiterControl = {
  REQUEST: 0,
  DONE: 1,
  INDEX: 2,
  EXPECTED: 3,
  TIMEOUT_MS: 4,
  RESULT: 5,
  STOP: 6,
  READY: 7,
  ADDRESS_LO: 8,
  ADDRESS_HI: 9,
  LENGTH: 10,
  BYTES: 12 * 4,
} as const;

/** What the worker reports in RESULT. */
export const WaiterResult = { OK: 0, NOT_EQUAL: 1, TIMED_OUT: 2, ERROR: 3 } as const;

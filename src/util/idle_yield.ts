/**
 * Whether a poller that found nothing hands its core to another process (sched_yield), and
 * how often. With more busy processes than cores (a publisher, a broker and a subscriber on two
 * cores, each polling its ring), a poller that only yields to its own event loop keeps its core
 * until the scheduler's time slice ends while the process it waits for is runnable: a request
 * and its reply then took 0.5 ms instead of tens of microseconds. But sched_yield is a system
 * call (1.4 µs here), which on a machine with a core to spare only slows the poll.
 *
 * So the yields adapt: one that came back late (another thread had the core meanwhile) means
 * the cores are contended, and every empty poll yields; one that came back at once doubles the
 * number of empty polls until the next, up to {@link IDLE_YIELD_MAX_INTERVAL}. One instance
 * serves every channel of the process: contention is the machine's, not a ring's.
 *
 * @example
 * ```ts
 * import { IdleYield } from "./idle_yield.ts";
 * const idle = new IdleYield();
 * for (let i = 0; i < 100; i++) idle.emptyPoll(); // after each poll that found no record
 * console.log(idle.yields <= 100); // true
 * ```
 * @module
 */
import { yieldCpu } from "../../ffi/mod.ts";

/** A yield that took longer than this (ms) gave the core to someone: the cores are contended. */
export const IDLE_YIELD_CONTENDED_MS = 0.005;
/** Most empty polls between two yields while yields come back at once. */
export const IDLE_YIELD_MAX_INTERVAL = 64;

/** The yield policy of a process's idle pollers; see the module doc. */
export class IdleYield {
  /** sched_yield calls made. */
  yields = 0;
  /** Of those, calls that came back late (the core was given away). */
  contended = 0;
  #interval = 1;
  #skip = 0;
  readonly #yieldFn: () => void;

  /** `yieldFn`: what a yield calls (default: sched_yield through `ffi/`). */
  constructor(yieldFn: () => void = yieldCpu) {
    this.#yieldFn = yieldFn;
  }

  /** Call after each poll that found nothing, before yielding to the event loop. */
  emptyPoll(): void {
    if (this.#skip > 0) {
      this.#skip--;
      return;
    }
    const start = performance.now();
    this.#yieldFn();
    this.yields++;
    if (performance.now() - start > IDLE_YIELD_CONTENDED_MS) {
      this.contended++;
      this.#interval = 1;
    } else {
      this.#interval = Math.min(2 * this.#interval, IDLE_YIELD_MAX_INTERVAL);
    }
    this.#skip = this.#interval - 1;
  }
}

/** The process's instance, shared by every ring channel. */
export const idleYield: IdleYield = new IdleYield();

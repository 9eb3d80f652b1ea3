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
 * number of empty polls until the next, up to {@link IDLE_YIELD_MAX_INTERVAL}. One instance,
 * {@link idleYield}, serves every channel of the process (contention is the machine's, not a
 * ring's). It does nothing until the FFI layer is loaded (`loadFfi` installs sched_yield), so
 * importing the library never needs `--allow-ffi`; `VBUS_IDLE_YIELD=0` keeps it off.
 *
 * @example
 * ```ts
 * import { IdleYield } from "./idle_yield.ts";
 * let calls = 0;
 * const idle = new IdleYield(() => calls++);
 * idle.emptyPoll(); // after a poll that found no record
 * console.log(calls); // 1 (then 2, 4, ... polls apart while yields come back at once)
 * ```
 * @module
 */
import process from "node:process";

/** A yield that took longer than this (ms) gave the core to someone: the cores are contended. */
export const IDLE_YIELD_CONTENDED_MS = 0.005;
/** Most empty polls between two yields while yields come back at once. */
export const IDLE_YIELD_MAX_INTERVAL = 64;

/** The yield policy of a process's idle pollers; see the module doc. */
export class IdleYield {
  /** Yields made. */
  yields = 0;
  /** Of those, yields that came back late (the core was given away). */
  contended = 0;
  #yieldFn: (() => void) | undefined;
  #interval = 1;
  #skip = 0;

  /** `yieldFn`: what a yield calls; without one, nothing until {@link install}. */
  constructor(yieldFn?: () => void) {
    this.#yieldFn = yieldFn;
  }

  /** True once there is something to yield with. */
  get active(): boolean {
    return this.#yieldFn !== undefined;
  }

  /**
   * Yield with `yieldFn` from now on (the FFI layer's sched_yield), unless the environment says
   * `VBUS_IDLE_YIELD=0`. Returns whether it is on.
   */
  install(yieldFn: () => void): boolean {
    if (yieldSwitchedOff()) return false;
    this.#yieldFn = yieldFn;
    return true;
  }

  /**
   * Call after each poll that found nothing, before yielding to the event loop. Returns true
   * when it gave the core away: the process that had it may have been the one we wait for.
   */
  emptyPoll(): boolean {
    const yieldFn = this.#yieldFn;
    if (yieldFn === undefined) return false;
    if (this.#skip > 0) {
      this.#skip--;
      return false;
    }
    const start = performance.now();
    yieldFn();
    this.yields++;
    if (performance.now() - start > IDLE_YIELD_CONTENDED_MS) {
      this.contended++;
      this.#interval = 1;
    } else {
      this.#interval = Math.min(2 * this.#interval, IDLE_YIELD_MAX_INTERVAL);
    }
    this.#skip = this.#interval - 1;
    return true;
  }
}

function yieldSwitchedOff(): boolean {
  try {
    return process.env.VBUS_IDLE_YIELD === "0";
  } catch {
    return false; // no permission to read the environment: the default
  }
}

/** The process's instance, shared by every ring channel. */
export const idleYield: IdleYield = new IdleYield();

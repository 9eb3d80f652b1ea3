/**
 * Exponential backoff with jitter, shared by the client's reconnect loop and the broker's
 * connections to VM ports, so a restarting VM or broker is not hammered.
 *
 * @example
 * ```ts
 * import { Backoff } from "./backoff.ts";
 * const backoff = new Backoff({ initialMs: 50, maxMs: 2000 });
 * await new Promise((r) => setTimeout(r, backoff.next()));
 * backoff.reset(); // after a success
 * ```
 * @module
 */

/** Backoff settings. */
export interface BackoffOptions {
  /** First delay. Default 50 ms. */
  initialMs?: number;
  /** Largest delay. Default 2000 ms. */
  maxMs?: number;
  /** Fraction of random jitter added, 0..1. Default 0.2. */
  jitter?: number;
}

/** Delays that double from `initialMs` up to `maxMs`, with jitter. */
export class Backoff {
  #initial: number;
  #max: number;
  #jitter: number;
  #attempt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.#initial = opts.initialMs ?? 50;
    this.#max = opts.maxMs ?? 2000;
    this.#jitter = opts.jitter ?? 0.2;
  }

  /** Attempts since the last reset. */
  get attempts(): number {
    return this.#attempt;
  }

  /** The next delay in milliseconds. */
  next(): number {
    const base = Math.min(this.#max, this.#initial * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    return Math.round(base * (1 + Math.random() * this.#jitter));
  }

  /** Start again from the first delay. */
  reset(): void {
    this.#attempt = 0;
  }
}

/** Resolve after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

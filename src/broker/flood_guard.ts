/**
 * The flood guard of one session: a token bucket refilled at `maxMsgsPerSecond`. Publishes
 * beyond it are rejected, counted and reported once a second; a session that floods for
 * {@link FLOOD_CLOSE_SECONDS} without pause is closed.
 *
 * @example
 * ```ts
 * import { FloodGuard } from "./flood_guard.ts";
 * const guard = new FloodGuard(1000, (n, fatal) => console.log(`${n} rejected`, fatal));
 * if (!guard.take()) console.log("rejected");
 * ```
 * @module
 */

/** Seconds of continuous flooding after which a session is closed. */
export const FLOOD_CLOSE_SECONDS = 10;
const REPORT_INTERVAL_MS = 1000;

/**
 * Reports rejected publishes: `n` since the last report; `fatal` when the session has flooded
 * for {@link FLOOD_CLOSE_SECONDS} and must be closed.
 */
export type FloodReport = (n: number, fatal: boolean) => void;

/** A token bucket with drop reports; see the module doc. */
export class FloodGuard {
  #limit: number;
  #report: FloodReport;
  #tokens: number;
  #refilledAt = Date.now();
  #floodSince = 0;
  #rejected = 0;
  #reportedAt = 0;
  #timer?: ReturnType<typeof setTimeout>;

  constructor(limit: number, report: FloodReport) {
    this.#limit = limit;
    this.#report = report;
    this.#tokens = limit;
  }

  /** Take a token for one publish; false when it must be rejected. */
  take(): boolean {
    if (this.#tokens >= 1) {
      this.#tokens--;
      return true;
    }
    const now = Date.now();
    const refill = ((now - this.#refilledAt) / 1000) * this.#limit;
    this.#refilledAt = now;
    this.#tokens = Math.min(this.#limit, this.#tokens + refill);
    if (this.#tokens >= 1) {
      this.#tokens--;
      this.#floodSince = 0;
      return true;
    }
    this.#floodSince ||= now;
    this.#rejected++;
    if (now - this.#reportedAt < REPORT_INTERVAL_MS) {
      // The last rejections of a burst are reported when the interval ends.
      this.#timer ??= setTimeout(() => {
        this.#timer = undefined;
        this.#flush(false);
      }, REPORT_INTERVAL_MS);
      (this.#timer as { unref?: () => void }).unref?.();
    } else {
      this.#flush(now - this.#floodSince >= FLOOD_CLOSE_SECONDS * 1000);
    }
    return false;
  }

  /** Stop reporting (the session ended). */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #flush(fatal: boolean) {
    if (this.#rejected === 0) return;
    this.#reportedAt = Date.now();
    const n = this.#rejected;
    this.#rejected = 0;
    this.#report(n, fatal);
  }
}

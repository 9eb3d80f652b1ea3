/**
 * Hard limits every session is held to. The broker announces them in WELCOME; clients check
 * them before sending so that a violation is reported where it happens.
 *
 * @example
 * ```ts
 * import { DEFAULT_LIMITS } from "./limits.ts";
 * console.log(DEFAULT_LIMITS.maxFrameBytes); // 8388608
 * ```
 * @module
 */

/**
 * Protocol limits. All sizes are in bytes.
 *
 * @example
 * ```ts
 * import { DEFAULT_LIMITS, type Limits } from "./limits.ts";
 * const small: Limits = { ...DEFAULT_LIMITS, maxFrameBytes: 64 * 1024, maxSubscriptions: 256 };
 * console.log(small.maxFrameBytes < DEFAULT_LIMITS.maxFrameBytes); // true
 * ```
 */
export interface Limits {
  /** Largest frame (header + head + payload) either side may send. */
  maxFrameBytes: number;
  /** Longest subject (UTF-8 bytes), including queue group names. */
  maxSubjectBytes: number;
  /** Most live subscriptions one session may hold. */
  maxSubscriptions: number;
  /** Largest encoded headers map of one message. */
  maxHeaderBytes: number;
  /** Bytes the broker queues for one session before it treats it as a slow consumer. */
  maxPendingBytes: number;
  /** Messages per second a session may publish before it is told to slow down (flood guard). */
  maxMsgsPerSecond: number;
  /** Protocol errors a session may cause before the broker closes it. */
  maxErrors: number;
  /** Most tokens in one subject or subscription pattern (bounds the cost of matching it). */
  maxSubjectTokens: number;
  /**
   * Tokens of all live subscriptions of one session together. A publish to a new subject walks
   * at most this many index nodes per session, so one VM cannot make matching slow for all.
   */
  maxSubscriptionTokens: number;
  /**
   * How long (ms) a "block" subscriber that stopped reading may hold its publishers. After that
   * it is treated as a slow consumer: its backlog beyond `maxPendingBytes` is dropped, counted
   * and reported, and the publishers run again.
   */
  maxBlockMs: number;
  /** A connection that has not sent HELLO within this many ms is closed. */
  helloTimeoutMs: number;
  /** Most host-local client connections at once; further ones are refused with an ERR. */
  maxHostConnections: number;
}

/** Defaults: generous enough for 1 MiB values, small enough to bound a hostile guest. */
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxFrameBytes: 8 * 1024 * 1024,
  maxSubjectBytes: 256,
  maxSubscriptions: 4096,
  maxHeaderBytes: 16 * 1024,
  maxPendingBytes: 64 * 1024 * 1024,
  maxMsgsPerSecond: 5_000_000,
  maxErrors: 100,
  maxSubjectTokens: 32,
  maxSubscriptionTokens: 16_384,
  maxBlockMs: 2_000,
  helloTimeoutMs: 5_000,
  maxHostConnections: 64,
});

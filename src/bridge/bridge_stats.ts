/**
 * Counters of one bridge, part of `Broker.stats()` (`bridges`), the `$VBUS.STATS` answer and
 * `vbus stats`.
 *
 * @example
 * ```ts
 * import { newBridgeStats } from "./bridge_stats.ts";
 * const s = newBridgeStats("nats", ["nats://127.0.0.1:4222"], "vbus-hostA-1f2e3d");
 * s.msgsOut++;
 * ```
 * @module
 */

/**
 * Counters for one bridge.
 *
 * @example
 * ```ts
 * import type { BridgeStats } from "./bridge_stats.ts";
 * function health(b: BridgeStats): string {
 *   if (!b.connected) return `${b.name}: away (${b.lastError}), ${b.buffered} buffered`;
 *   return `${b.name}: ${b.server}, ${b.msgsOut} out, ${b.msgsIn} in, ${b.dropped} dropped`;
 * }
 * ```
 */
export interface BridgeStats {
  /** Kind of bridge ("nats"). */
  name: string;
  /** Value of this broker's origin header: what marks the messages it sends. */
  origin: string;
  /** Configured servers. */
  servers: string[];
  /** Connected to a NATS server now. */
  connected: boolean;
  /** The server connected to now (URL), or null. */
  server: string | null;
  /** Its server name (from its INFO), or null. */
  serverName: string | null;
  /** Connections made: the first one and every reconnect. */
  connects: number;
  /** Reconnects after a connection was lost (failovers included). */
  reconnects: number;
  /** Connections lost. */
  disconnects: number;
  /** The last connection error, or null. */
  lastError: string | null;
  /** Messages handed to NATS (exports and replies to remote requesters). */
  msgsOut: number;
  /** Payload bytes of those messages. */
  bytesOut: number;
  /**
   * Messages taken in from NATS (imports and answers to local requesters), delivered or
   * dropped; not the copies it ignores (its own, other clients' reply inboxes seen by a
   * wildcard import, queue-group copies already served on their origin host).
   */
  msgsIn: number;
  /** Payload bytes of those messages. */
  bytesIn: number;
  /** Exports waiting in the buffer now (NATS away or behind). */
  buffered: number;
  /** Bytes of those exports (payloads, subjects and headers). */
  bufferedBytes: number;
  /** Messages not carried (sum of `drops`). */
  dropped: number;
  /**
   * `dropped` by reason: `buffer_full` (exports beyond the buffer bound, oldest first),
   * `too_large` (beyond the NATS server's max_payload or the broker's maxFrameBytes),
   * `bad_subject`, `bad_headers` (not representable on the other side), `reply_unknown`
   * (an answer for an expired or unknown reply route), `stopped` (buffered when the broker
   * stopped).
   */
  drops: Record<string, number>;
  /**
   * Exports handed to a connection that was lost before the server confirmed them (a PONG
   * after them): they may or may not have reached NATS.
   */
  maybeLost: number;
  /** Reply routes of requests in flight across the bridge. */
  pendingReplies: number;
  /** NATS subscriptions of the bridge (imports, queue groups, its reply inbox). */
  subscriptions: number;
}

/** Fresh counters for a bridge. */
export function newBridgeStats(name: string, servers: string[], origin: string): BridgeStats {
  return {
    name,
    origin,
    servers: [...servers],
    connected: false,
    server: null,
    serverName: null,
    connects: 0,
    reconnects: 0,
    disconnects: 0,
    lastError: null,
    msgsOut: 0,
    bytesOut: 0,
    msgsIn: 0,
    bytesIn: 0,
    buffered: 0,
    bufferedBytes: 0,
    dropped: 0,
    drops: {},
    maybeLost: 0,
    pendingReplies: 0,
    subscriptions: 0,
  };
}

/** Reasons in {@link BridgeStats.drops}. */
export const BridgeDrop = {
  BufferFull: "buffer_full",
  TooLarge: "too_large",
  BadSubject: "bad_subject",
  BadHeaders: "bad_headers",
  ReplyUnknown: "reply_unknown",
  Stopped: "stopped",
} as const;

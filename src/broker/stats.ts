/**
 * Counters the broker keeps per VM (and for host clients): traffic, errors by code, denied
 * operations, dropped messages, and which data path a session uses. Exposed by
 * `Broker.stats()`, the `$VBUS.STATS` request subject and `vbus stats`.
 *
 * @example
 * ```ts
 * import { newEndpointStats } from "./stats.ts";
 * const s = newEndpointStats("vm1");
 * s.msgsIn++;
 * ```
 * @module
 */
import type { BridgeStats } from "../bridge/bridge_stats.ts";
import type { SessionStats } from "./session_stats.ts";

/**
 * Counters for one VM, or for all host clients together.
 *
 * @example
 * ```ts
 * import type { EndpointStats } from "./stats.ts";
 * function report(vm: EndpointStats): string {
 *   const drops = Object.entries(vm.drops).map(([why, n]) => `${why}=${n}`).join(" ");
 *   return `${vm.name}: ${vm.path}, ${vm.msgsIn} in, ${vm.msgsOut} out, dropped ${drops || 0}`;
 * }
 * ```
 */
export interface EndpointStats {
  /** The VM's name, or "host" for the host clients. */
  name: string;
  /** A session is live on this endpoint now. */
  connected: boolean;
  /** Sessions started since the broker started (each HELLO counts). */
  sessions: number;
  /** Data path of the live session: "stream" (port frames) or "ring" (shared memory). */
  path: "stream" | "ring" | "none";
  /** Why the fast path is not used, when it is not. */
  pathReason?: string;
  /** Messages published by this endpoint (into the broker). */
  msgsIn: number;
  /** Payload bytes of those messages. */
  bytesIn: number;
  /** Messages delivered to this endpoint. */
  msgsOut: number;
  /** Payload bytes of those messages. */
  bytesOut: number;
  /** Messages that came in through the shared-memory ring. */
  ringMsgsIn: number;
  /** Messages delivered through the shared-memory ring. */
  ringMsgsOut: number;
  /**
   * Messages that went into the broker's backlog for the ring because it was full when they
   * were routed (a second copy each when written; a slow-consumer drop may still take some):
   * a subscriber that fell behind for a while.
   */
  ringMsgsQueued: number;
  /**
   * Records of this endpoint's ring that the broker stopped retaining for a backlog because
   * retention would have covered more than half its ring: their messages still wait in the
   * backlog, but would not be sent again by the client if the broker died
   * (`retained_records.ts`).
   */
  ringUnretained: number;
  /** How the broker wakes this endpoint's parked ring reader: DOORBELL frames or futex. */
  wake?: "doorbell" | "futex";
  /** Parked readers the broker woke with FUTEX_WAKE (host-local clients only). */
  futexWakes: number;
  /** Publishes and subscribes refused by permissions. */
  denied: number;
  /** Messages not delivered to this endpoint or not accepted from it (sum of `drops`). */
  dropped: number;
  /**
   * `dropped` by reason: `slow_consumer` (it did not keep up), `too_large` (larger than its
   * ring), `block_timeout` (its "block" subscription held publishers past `maxBlockMs`),
   * `flood` (its own publishes beyond `maxMsgsPerSecond`).
   */
  drops: Record<string, number>;
  /** Times this endpoint's input was paused for a "block" subscriber that fell behind. */
  blocked: number;
  /** Errors sent to this endpoint, by code. */
  errors: Record<string, number>;
  /** Sessions closed by the broker, by reason. */
  closed: Record<string, number>;
  /** Live subscriptions. */
  subscriptions: number;
}

/** Reasons in {@link EndpointStats.drops}. */
export const DropReason = {
  SlowConsumer: "slow_consumer",
  TooLarge: "too_large",
  BlockTimeout: "block_timeout",
  Flood: "flood",
} as const;

/** Count one drop (or `n`) for `reason`. */
export function countDrop(stats: EndpointStats, reason: string, n = 1): void {
  stats.dropped += n;
  stats.drops[reason] = (stats.drops[reason] ?? 0) + n;
}

/** Fresh counters for an endpoint. */
export function newEndpointStats(name: string): EndpointStats {
  return {
    name,
    connected: false,
    sessions: 0,
    path: "none",
    msgsIn: 0,
    bytesIn: 0,
    msgsOut: 0,
    bytesOut: 0,
    ringMsgsIn: 0,
    ringMsgsOut: 0,
    ringMsgsQueued: 0,
    ringUnretained: 0,
    futexWakes: 0,
    denied: 0,
    dropped: 0,
    drops: {},
    blocked: 0,
    errors: {},
    closed: {},
    subscriptions: 0,
  };
}

/**
 * Snapshot of the whole broker (`Broker.stats()`, the `$VBUS.STATS` answer).
 *
 * @example
 * ```ts
 * import type { BrokerStats } from "./stats.ts";
 * function disconnectedVms(stats: BrokerStats): string[] {
 *   return stats.vms.filter((vm) => !vm.connected).map((vm) => vm.name);
 * }
 * ```
 */
export interface BrokerStats {
  /** When the broker started (ISO time). */
  startedAt: string;
  /** Milliseconds since then. */
  uptimeMs: number;
  /** One per configured VM, in config order. */
  vms: EndpointStats[];
  /** The host clients together (live ones and those that left). */
  host: EndpointStats;
  /** One per configured bridge (e.g. `bridge.nats`); empty without. */
  bridges: BridgeStats[];
  /** Live sessions: each VM's, and each host client on its own (see session_stats.ts). */
  sessions: SessionStats[];
}

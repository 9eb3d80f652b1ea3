/**
 * What a running bridge shows outside the broker (`Broker.bridges`): the origin marker
 * on what it sends, whether it is connected, a flush, and its counters.
 *
 * @example
 * ```ts
 * import type { Bridge } from "./bridge.ts";
 * async function waitUntilSubscribed(bridge: Bridge): Promise<void> {
 *   if (bridge.connected) await bridge.flush(); // NATS has the bridge's subscriptions now
 *   console.log(bridge.origin, bridge.stats().subscriptions);
 * }
 * ```
 * @module
 */
import type { BridgeStats } from "./bridge_stats.ts";

/**
 * A running bridge, as `Broker.bridges` lists it.
 *
 * @example
 * ```ts
 * import type { Broker } from "../broker/broker.ts";
 * function bridgesAway(broker: Broker): string[] {
 *   return broker.bridges.filter((b) => !b.connected).map((b) => b.stats().name);
 * }
 * ```
 */
export interface Bridge {
  /** Value of the origin header on everything this bridge sends (loop prevention). */
  readonly origin: string;
  /** Is it connected to the other system now? */
  readonly connected: boolean;
  /**
   * Resolves once the other system has everything sent so far (subscriptions included).
   * Rejects when not connected.
   */
  flush(): Promise<void>;
  /** A snapshot of the bridge's counters. */
  stats(): BridgeStats;
}

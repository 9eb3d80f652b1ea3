/**
 * What the broker tells about one live session (`Broker.stats().sessions`, the `$VBUS.STATS`
 * answer, the monitoring endpoint and `vbus top`): who it is, its data path, its subscriptions
 * with how many messages each was routed, what waits for it (ring backlog, port output) and how
 * full its rings are. A host client's session carries its own counters; a VM has one session at
 * a time, and its counters are the VM's ({@link BrokerStats.vms}).
 *
 * @example
 * ```ts
 * import type { SessionStats } from "./session_stats.ts";
 * const busiest = (s: SessionStats) => s.subjects[0]?.subject;
 * ```
 * @module
 */
import type { EndpointStats } from "./stats.ts";
import type { RingFill } from "../ring/fill.ts";

/** Subscriptions listed per session in stats (the busiest): the rest are only counted. */
export const SUBJECTS_LISTED = 32;
/** Longest client description kept from a HELLO (it is the peer's free text). */
export const CLIENT_NAME_MAX = 96;

/**
 * One subscription of a session.
 *
 * @example
 * ```ts
 * import type { SubscriptionStats } from "./session_stats.ts";
 * const line = (s: SubscriptionStats) =>
 *   `${s.subject}${s.queue ? ` (queue ${s.queue})` : ""}: ${s.msgs} msgs`;
 * ```
 */
export interface SubscriptionStats {
  /** The session's id of the subscription (its SUB frame's). */
  sid: number;
  /** The subscribed pattern (wildcards allowed). */
  subject: string;
  /** Queue group, or null for a plain subscription. */
  queue: string | null;
  /** Messages the router handed to it since it was made (delivered or then dropped). */
  msgs: number;
  /** Subscribed with `slow: "block"`. */
  block: boolean;
}

/**
 * One live session; see the module doc.
 *
 * @example
 * ```ts
 * import type { SessionStats } from "./session_stats.ts";
 * function fullestRing(sessions: SessionStats[]): string | undefined {
 *   let best: { id: string; fill: number } | undefined;
 *   for (const s of sessions) {
 *     if (!s.rings) continue; // not on the ring path
 *     const fill = s.rings.inbound.usedBytes / s.rings.inbound.capacityBytes;
 *     if (!best || fill > best.fill) best = { id: s.id, fill };
 *   }
 *   return best?.id;
 * }
 * ```
 */
export interface SessionStats {
  /** Session id (`vm1#<run>.<n>`); empty before its HELLO. */
  id: string;
  /** The VM it arrived on, or "host" for a host-local client. */
  endpoint: string;
  /** "hello" until the handshake is done. */
  state: "hello" | "open";
  /** The client's own description from its HELLO (untrusted text, at most 96 characters). */
  client: string;
  /** When the broker got the connection (ISO time). */
  connectedAt: string;
  /** Data path now: "ring" (shared memory), "stream" (port frames), "none" before HELLO. */
  path: "stream" | "ring" | "none";
  /** How the broker wakes its parked ring reader, on the ring path. */
  wake?: "doorbell" | "futex";
  /** Live subscriptions. */
  subscriptions: number;
  /** The busiest {@link SUBJECTS_LISTED} of them, most messages first. */
  subjects: SubscriptionStats[];
  /** Messages waiting for room in its inbound ring. */
  backlogMsgs: number;
  /** Memory those waiting messages hold. */
  backlogBytes: number;
  /** Bytes handed to its port and not yet taken by the kernel. */
  portPendingBytes: number;
  /** Ring fill, on the ring path: inbound (broker to peer) and outbound (peer to broker). */
  rings?: { inbound: RingFill; outbound: RingFill };
  /** A host client's own counters (absent for a VM's session: see the VM's). */
  stats?: EndpointStats;
}

/** The {@link SUBJECTS_LISTED} busiest of `subs`, as {@link SubscriptionStats}. */
export function busiestSubjects(
  subs: Iterable<
    { sid: number; subject: string; queue: string | null; delivered: number; block?: boolean }
  >,
): SubscriptionStats[] {
  const all: SubscriptionStats[] = [];
  for (const e of subs) {
    all.push({
      sid: e.sid,
      subject: e.subject,
      queue: e.queue,
      msgs: e.delivered,
      block: e.block === true,
    });
  }
  all.sort((a, b) => b.msgs - a.msgs || a.sid - b.sid);
  return all.length > SUBJECTS_LISTED ? all.slice(0, SUBJECTS_LISTED) : all;
}

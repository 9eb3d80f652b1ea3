/**
 * Host-local clients' counters, one set per client: each host session counts into its own
 * {@link EndpointStats}, and the `host` entry of the broker's stats is their sum plus what
 * clients that left counted (and the refused connections). So a stats reader sees each host
 * client on its own, and the `host` entry no longer says what the last client to say HELLO
 * did: it is connected while any client is, on the ring path while any client is, woken by
 * futex while any ring client is.
 *
 * @example
 * ```ts
 * import { HostStatsPool } from "./host_stats.ts";
 * const pool = new HostStatsPool();
 * const mine = pool.open(); // give it to the client's session
 * mine.msgsIn++;
 * pool.close(mine); // the session ended: its counters stay in the total
 * console.log(pool.total().msgsIn); // 1
 * ```
 * @module
 */
import { type EndpointStats, newEndpointStats } from "./stats.ts";

/** Counters of {@link EndpointStats} that add up across sessions. */
const SUMMED = [
  "sessions",
  "msgsIn",
  "bytesIn",
  "msgsOut",
  "bytesOut",
  "ringMsgsIn",
  "ringMsgsOut",
  "ringMsgsQueued",
  "ringUnretained",
  "futexWakes",
  "denied",
  "dropped",
  "blocked",
] as const;
/** Counters by key that add up across sessions. */
const SUMMED_BY_KEY = ["drops", "errors", "closed"] as const;

/** See the module doc. */
export class HostStatsPool {
  /** What closed sessions counted, and what is counted for no session (refusals). */
  readonly base: EndpointStats = newEndpointStats("host");
  #live = new Set<EndpointStats>();

  /** Fresh counters for a new host session. */
  open(): EndpointStats {
    const stats = newEndpointStats("host");
    this.#live.add(stats);
    return stats;
  }

  /** A session ended: keep what it counted in the total. */
  close(stats: EndpointStats): void {
    if (!this.#live.delete(stats)) return;
    addInto(this.base, stats);
  }

  /** The `host` entry: every host session's counters together (a fresh object). */
  total(): EndpointStats {
    const out = structuredClone(this.base);
    let ring = false, stream = false, futex = false;
    const reasons: string[] = [];
    for (const s of this.#live) {
      addInto(out, s);
      out.subscriptions += s.subscriptions;
      if (!s.connected) continue;
      out.connected = true;
      if (s.path === "ring") {
        ring = true;
        if (s.wake === "futex") futex = true;
      } else if (s.path === "stream") {
        stream = true;
        if (s.pathReason) reasons.push(s.pathReason);
      }
    }
    out.path = ring ? "ring" : stream ? "stream" : "none";
    if (ring) out.wake = futex ? "futex" : "doorbell";
    else delete out.wake;
    if (!ring && reasons.length > 0) out.pathReason = reasons[0];
    else delete out.pathReason;
    return out;
  }
}

function addInto(into: EndpointStats, from: EndpointStats) {
  for (const k of SUMMED) into[k] += from[k];
  for (const k of SUMMED_BY_KEY) {
    for (const [key, n] of Object.entries(from[k])) into[k][key] = (into[k][key] ?? 0) + n;
  }
}

/**
 * What a client knows about the fate of its publishes when a session ends, and the counters
 * `bus.stats` shows.
 *
 * A publish resolves once it is handed over: written into the outbound ring, or to the port.
 * Whether the broker handled it (routed it, refused it with an ERR, or dropped it for a slow
 * consumer and said so) is known in two ways:
 * - on the ring, the broker publishes its consumer position after every record it handled,
 *   so when a session ends, what it had not read is still in shared memory and is re-sent
 *   (see `ring_salvage.ts`): nothing on the ring is lost, at most one record is sent twice
 *   (and those the broker retained, below);
 * - on the port stream, bytes handed to the socket can die in buffers with the broker. A
 *   PONG proves the broker handled everything sent before its PING, so the publishes sent
 *   after the last answered PING are the ones that may have been lost ("maybe lost").
 *
 * The count is what this client can know. A ring record whose message the broker had queued
 * for a subscriber with a full ring stays unread in the ring until that copy is written (the
 * broker retains it, within half the ring), so it is re-sent too; a message the broker had
 * queued for a subscriber on the port stream when it died is that subscriber's loss, not
 * counted here.
 *
 * @example
 * ```ts
 * import { DeliveryLedger } from "./delivery_ledger.ts";
 * const ledger = new DeliveryLedger();
 * ledger.portPublished();
 * const mark = ledger.portMark(); // taken when a PING is sent
 * ledger.confirm(mark, 0);        // its PONG arrived
 * ledger.sessionEnded(undefined); // 0: nothing sent after the PING
 * ```
 * @module
 */

/**
 * Cumulative counters of one connection (all sessions), as `bus.stats` returns them.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * import type { ClientStats } from "./delivery_ledger.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const { disconnects, resent, maybeLost, undecodable }: ClientStats = bus.stats;
 * console.log({ disconnects, resent, maybeLost, undecodable });
 * ```
 */
export interface ClientStats {
  /** Sessions that ended other than by `close()`/`drain()`. */
  disconnects: number;
  /** Publishes recovered from the outbound ring of a session that ended, and sent again. */
  resent: number;
  /**
   * Publishes handed over that the broker was not seen to handle before their session ended:
   * they may have been lost (they may also have arrived). The sum of the `maybeLost` fields
   * of all `disconnected` events.
   */
  maybeLost: number;
  /** Received messages whose payload could not be decoded (each one an `error` event). */
  undecodable: number;
}

/** What the ring side of a session that ended tells the ledger. */
export interface RingSessionEnd {
  /** PUBs the session's ring sender accepted. */
  accepted: number;
  /** Of those, the ones still waiting for room, handed back to the reconnect buffer. */
  handedBack: number;
  /** PUB frames recovered from the ring, to be re-sent. */
  recovered: number;
  /**
   * Unread PUB records left in the ring for a broker that may still read them (a guest hung
   * up itself); counted as maybe lost.
   */
  leftInRing: number;
  /** The ring could not be read completely (its positions or records were damaged). */
  damaged: boolean;
}

/** Per-session bookkeeping and cumulative counters; see the module doc. */
export class DeliveryLedger {
  /** The counters `bus.stats` returns (copied there). */
  readonly stats: ClientStats = { disconnects: 0, resent: 0, maybeLost: 0, undecodable: 0 };
  #portSent = 0;
  #portConfirmed = 0;
  #ringConfirmed = 0;

  /** A new session starts: nothing of it is sent or confirmed yet. */
  sessionStarted(): void {
    this.#portSent = 0;
    this.#portConfirmed = 0;
    this.#ringConfirmed = 0;
  }

  /** A PUB frame was handed to the port. */
  portPublished(): void {
    this.#portSent++;
  }

  /** The port mark of a PING sent on the port now: the PUBs its PONG will confirm. */
  portMark(): number {
    return this.#portSent;
  }

  /**
   * The port mark of a PING sent through the ring: it confirms nothing sent on the port (the
   * broker may read the ring before port bytes that were written earlier).
   */
  unchangedPortMark(): number {
    return this.#portConfirmed;
  }

  /** A PONG arrived for a PING sent with these marks. */
  confirm(portMark: number, ringMark: number): void {
    if (portMark > this.#portConfirmed) this.#portConfirmed = portMark;
    if (ringMark > this.#ringConfirmed) this.#ringConfirmed = ringMark;
  }

  /**
   * The session ended (`ring` undefined on the port stream). Returns how many of its
   * publishes may have been lost, and counts them.
   */
  sessionEnded(ring: RingSessionEnd | undefined): number {
    let lost = this.#portSent - this.#portConfirmed + (ring?.leftInRing ?? 0);
    if (ring?.damaged) {
      // The broker's position could not be trusted: whatever it had not confirmed by a PONG
      // and was not recovered may be gone.
      const written = ring.accepted - ring.handedBack;
      lost += Math.max(0, written - this.#ringConfirmed - ring.recovered - ring.leftInRing);
    }
    this.stats.maybeLost += lost;
    this.stats.disconnects++;
    this.sessionStarted();
    return lost;
  }
}

/**
 * Connection status events: what happened to the connection, for logs, metrics and tests.
 * `error` events include received messages whose payload could not be decoded (code CODEC,
 * with the subject); `disconnected` and `reconnected` say how many publishes may have been
 * lost with the session and how many were recovered from shared memory and re-sent.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect();
 * bus.on("reconnected", (e) => console.log(`resubscribed ${e.resubscribed}, re-sent ${e.resent}`));
 * bus.on("disconnected", (e) => e.maybeLost && console.warn(`${e.maybeLost} publishes may be lost`));
 * (async () => {
 *   for await (const e of bus.status()) console.log(e.type);
 * })();
 * ```
 * @module
 */

/** Every status event the client emits. */
export type StatusEvent =
  | { type: "connected"; session: string; identity: string; port: string }
  | {
    type: "disconnected";
    reason: string;
    port: string;
    /**
     * Publishes of the session that ended that may have been lost: handed to the port after
     * the last PING the broker answered (bytes that can die in socket buffers with the
     * broker). They may also have arrived. On the ring, unread records are recovered and
     * re-sent instead (`resending`); they count here only when they could not be read back
     * (the ring was damaged), or when a guest hung up itself and left them for a broker that
     * may still be running to read.
     */
    maybeLost: number;
    /** Publishes recovered from the outbound ring (the broker never read them), re-sent first. */
    resending: number;
  }
  | { type: "reconnecting"; attempt: number; /** Milliseconds until this attempt. */ delay: number }
  | {
    type: "reconnected";
    session: string;
    identity: string;
    port: string;
    /** Subscriptions re-sent to the broker. */
    resubscribed: number;
    /** Publishes buffered while disconnected and now sent. */
    flushed: number;
    /** Publishes recovered from the last session's outbound ring and now sent again, first. */
    resent: number;
    /**
     * Publishes that may have been lost since the last session: the `maybeLost` of the
     * `disconnected` event before this one, repeated (do not add both).
     */
    maybeLost: number;
  }
  | {
    type: "error";
    code: string;
    message: string;
    /** The subject concerned; for a CODEC error, the subject of the undecodable message. */
    subject?: string;
  }
  | {
    type: "slowConsumer";
    /** Where it was detected: "broker" (dropped there) or "client" (a subscription queue). */
    where: "broker" | "client";
    dropped: number;
    subject?: string;
  }
  | {
    type: "dataPath";
    /** "ring": messages travel through shared memory; "stream": through the port. */
    path: "ring" | "stream";
    /** Why not the ring, when it is not. */
    reason?: string;
  }
  | { type: "closed"; error?: Error };

/** The `type` of a {@link StatusEvent}. */
export type StatusType = StatusEvent["type"];
/** The event of a given type. */
export type StatusOf<K extends StatusType> = Extract<StatusEvent, { type: K }>;

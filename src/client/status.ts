/**
 * Connection status events: what happened to the connection, for logs, metrics and tests.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect();
 * bus.on("reconnected", (e) => console.log(`resubscribed ${e.resubscribed} subscriptions`));
 * (async () => {
 *   for await (const e of bus.status()) console.log(e.type);
 * })();
 * ```
 * @module
 */

/** Every status event the client emits. */
export type StatusEvent =
  | { type: "connected"; session: string; identity: string; port: string }
  | { type: "disconnected"; reason: string; port: string }
  | { type: "reconnecting"; attempt: number; delayMs: number }
  | {
    type: "reconnected";
    session: string;
    identity: string;
    port: string;
    /** Subscriptions re-sent to the broker. */
    resubscribed: number;
    /** Publishes buffered while disconnected and now sent. */
    flushed: number;
  }
  | { type: "error"; code: string; message: string; subject?: string }
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

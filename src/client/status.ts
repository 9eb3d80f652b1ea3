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
import { QueuedIterator } from "./queued_iterator.ts";

/**
 * Every status event the client emits.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * import type { StatusEvent } from "./status.ts";
 * function describe(e: StatusEvent): string {
 *   switch (e.type) {
 *     case "disconnected":
 *       return `lost ${e.port}: ${e.reason} (${e.maybeLost} publishes may be lost)`;
 *     case "reconnected":
 *       return `back on ${e.port}: ${e.resubscribed} resubscribed, ${e.resent} re-sent`;
 *     default:
 *       return e.type;
 *   }
 * }
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * for await (const e of bus.status()) console.log(describe(e));
 * ```
 */
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

/**
 * The `type` of a {@link StatusEvent}.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * import type { StatusType } from "./status.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const logged: StatusType[] = ["disconnected", "reconnected", "slowConsumer"];
 * for (const type of logged) bus.on(type, (e) => console.log(JSON.stringify(e)));
 * ```
 */
export type StatusType = StatusEvent["type"];
/** The event of a given type. */
export type StatusOf<K extends StatusType> = Extract<StatusEvent, { type: K }>;

/** Status events one status() stream holds for a reader that does not keep up. */
const STREAM_BOUND = 1024;

/**
 * Where a connection's status events go: listeners by type, and async-iterable streams.
 * A listener that throws is logged and the others still run.
 *
 * @example
 * ```ts
 * import { StatusEmitter } from "./status.ts";
 * const events = new StatusEmitter((type, err) => console.error(type, err));
 * const off = events.on("closed", () => console.log("closed"));
 * events.emit({ type: "closed" });
 * off();
 * events.end();
 * ```
 */
export class StatusEmitter {
  #listeners = new Map<StatusType, Set<(e: StatusEvent) => void>>();
  #streams = new Set<QueuedIterator<StatusEvent>>();
  #ended = false;
  #listenerFailed: (type: StatusType, err: unknown) => void;

  /** @param listenerFailed called when a listener throws */
  constructor(listenerFailed: (type: StatusType, err: unknown) => void) {
    this.#listenerFailed = listenerFailed;
  }

  /** Call `listener` for every event of `type`; returns a function that removes it. */
  on<K extends StatusType>(type: K, listener: (e: StatusOf<K>) => void): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = new Set());
    set.add(listener as (e: StatusEvent) => void);
    return () => set!.delete(listener as (e: StatusEvent) => void);
  }

  /** Every event from now on; the stream ends with {@link end}. */
  stream(): AsyncIterable<StatusEvent> {
    const q = new QueuedIterator<StatusEvent>(STREAM_BOUND);
    if (this.#ended) q.end();
    else this.#streams.add(q);
    return q;
  }

  /** Hand `e` to the listeners of its type and to every stream. */
  emit(e: StatusEvent): void {
    for (const l of this.#listeners.get(e.type) ?? []) {
      try {
        l(e);
      } catch (err) {
        this.#listenerFailed(e.type, err);
      }
    }
    for (const s of this.#streams) s.push(e);
  }

  /** End every stream (the connection closed). */
  end(): void {
    this.#ended = true;
    for (const s of this.#streams) s.end();
    this.#streams.clear();
  }
}

/**
 * Headers across the bridge. vbus headers are a map of string to string; NATS headers are
 * MIME-style (printable ASCII names without ':', values without CR or LF, trimmed, several
 * values per name): a message whose headers NATS cannot carry is not exported. Going out, every message gets the bridge's origin marker
 * ({@link ORIGIN_HEADER}: loop prevention) and the queue groups that already had a member on
 * this host ({@link QUEUES_HEADER}); coming in, the queue groups are taken off, several
 * values of one name are joined with ", ", and the origin stays visible to subscribers.
 *
 * @example
 * ```ts
 * import { fromNatsHeaders, HeaderEncoder } from "./nats_headers.ts";
 * const h = new HeaderEncoder("vbus-hostA-1f2e").encode({ trace: "abc" }, ["workers"]);
 * fromNatsHeaders(h).headers; // { trace: "abc", "Vbus-Origin": "vbus-hostA-1f2e" }
 * ```
 * @module
 */
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import type { Headers } from "../protocol/ops.ts";

/** Names the broker instance a message left from; a message carrying it is not exported. */
export const ORIGIN_HEADER = "Vbus-Origin";
/** Queue groups served on the origin host: no member elsewhere gets the message too. */
export const QUEUES_HEADER = "Vbus-Queues";

/** Does a local message carry an origin marker (it came over a bridge already)? */
export function hasOrigin(headers: Headers): boolean {
  for (const k in headers) {
    if (k.length === ORIGIN_HEADER.length && k.toLowerCase() === "vbus-origin") return true;
  }
  return false;
}

/** NATS headers for an export. Throws when a vbus header cannot be carried by NATS. */
export function toNatsHeaders(
  headers: Headers | null,
  origin: string,
  queues: readonly string[],
): MsgHdrs {
  const h = natsHeaders();
  if (headers !== null) {
    for (const k in headers) {
      h.append(k, headers[k]); // throws on a name or value NATS cannot carry
    }
  }
  h.set(ORIGIN_HEADER, origin);
  h.delete(QUEUES_HEADER); // only the bridge says which groups were served
  for (const q of queues) h.append(QUEUES_HEADER, q);
  return h;
}

/**
 * Headers for exports of one bridge. Most messages carry nothing but the origin marker: those
 * share one headers object, encoded once (the client only ever calls `encode()` on it).
 */
export class HeaderEncoder {
  #origin: string;
  #originOnly: MsgHdrs;

  constructor(origin: string) {
    this.#origin = origin;
    // MsgHdrsImpl's encode() is not in the public MsgHdrs type; publish() calls it.
    const h = natsHeaders() as MsgHdrs & { encode(): Uint8Array };
    h.set(ORIGIN_HEADER, origin);
    const bytes = h.encode();
    h.encode = () => bytes;
    this.#originOnly = h;
  }

  /** NATS headers for an export. Throws when a vbus header cannot be carried by NATS. */
  encode(headers: Headers | null, queues: readonly string[]): MsgHdrs {
    if (headers === null && queues.length === 0) return this.#originOnly;
    return toNatsHeaders(headers, this.#origin, queues);
  }
}

/** What an imported message's NATS headers say. */
export interface IncomingHeaders {
  /** Headers for local subscribers (null when there are none). */
  headers: Headers | null;
  /** The origin marker, or null. */
  origin: string | null;
  /** Queue groups served on the origin host. */
  queues: string[];
  /** NATS status code (e.g. 503: no responders), 0 when none. */
  status: number;
}

/** Read an imported message's headers. */
export function fromNatsHeaders(h: MsgHdrs | undefined): IncomingHeaders {
  if (!h) return { headers: null, origin: null, queues: [], status: 0 };
  let headers: Headers | null = null;
  let origin: string | null = null;
  let queues: string[] = [];
  for (const [k, values] of h) {
    if (k === QUEUES_HEADER) {
      queues = values;
      continue;
    }
    if (k === ORIGIN_HEADER) origin = values[0] ?? null;
    (headers ??= {})[k] = values.join(", ");
  }
  return { headers, origin, queues, status: h.code };
}

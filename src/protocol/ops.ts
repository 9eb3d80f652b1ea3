/**
 * Operation codes of wire protocol v1 and the shape of each op's head. `docs/PROTOCOL.md` is
 * the prose version of this file.
 *
 * @example
 * ```ts
 * import { Op, opName } from "./ops.ts";
 * opName(Op.Pub); // "PUB"
 * ```
 * @module
 */

/** Protocol version spoken by this code. */
export const PROTOCOL_VERSION = 1;

/** Operation codes (frame byte 2). */
export const Op = {
  /** client -> broker: {@link HelloHead} */
  Hello: 1,
  /** broker -> client: {@link WelcomeHead} */
  Welcome: 2,
  /** client -> broker: {@link SubHead} */
  Sub: 3,
  /** client -> broker: {@link UnsubHead} */
  Unsub: 4,
  /** client -> broker: {@link PubHead}, payload = encoded value */
  Pub: 5,
  /** broker -> client: {@link MsgHead}, payload = encoded value */
  Msg: 6,
  /** either way: empty array head; answered by PONG in order */
  Ping: 7,
  /** either way: empty array head */
  Pong: 8,
  /** either way: {@link ErrHead} */
  Err: 9,
  /** either way: {@link DoorbellHead}; wakes a parked ring consumer (fast path) */
  Doorbell: 10,
} as const;

const NAMES = [
  "",
  "HELLO",
  "WELCOME",
  "SUB",
  "UNSUB",
  "PUB",
  "MSG",
  "PING",
  "PONG",
  "ERR",
  "DOORBELL",
];

/** Is `op` a known operation code? */
export function isOp(op: number): boolean {
  return op >= Op.Hello && op <= Op.Doorbell;
}

/** Human-readable name of an op, for logs and errors. */
export function opName(op: number): string {
  return NAMES[op] ?? `op(${op})`;
}

/** Features a peer may announce in HELLO/WELCOME; the session uses the intersection. */
export const Feature = {
  /** Message headers on PUB/MSG. */
  Headers: "headers",
  /** The broker answers a request with no subscribers with a status-503 MSG at once. */
  NoResponders: "no-responders",
  /** Shared-memory rings for PUB/MSG (fast path). */
  SharedMemory: "shm",
  /** The session's own publishes are not delivered to its own subscriptions (nats `no_echo`). */
  NoEcho: "no-echo",
} as const;

/**
 * Message headers: string keys to string values.
 *
 * @example
 * ```ts
 * import type { Headers } from "./ops.ts";
 * const headers: Headers = { "trace-id": "4bf92f35", "content-type": "application/json" };
 * console.log(headers["trace-id"]);
 * ```
 */
export type Headers = Record<string, string>;

/** Header the broker sets on a status message (e.g. no responders). */
export const STATUS_HEADER = "vbus-status";
/** Status value for "no responders". */
export const STATUS_NO_RESPONDERS = "503";

/** HELLO head: what the client is and wants. Its `name` is informational, never identity. */
export interface HelloHead {
  v: number;
  features: string[];
  /** Free-form client description, e.g. "vbus-ts/0.1 bun/1.4.5 guest". */
  client?: string;
  /** Random number echoed in WELCOME so the client can tell its welcome from stale bytes. */
  nonce: number;
  /** Shared-memory offer (fast path); absent when the guest mapped nothing. */
  shm?: Record<string, unknown>;
}

/** WELCOME head: the negotiated session. */
export interface WelcomeHead {
  v: number;
  features: string[];
  nonce: number;
  /** Identity the broker assigned from the port (the VM name, or "host"). */
  identity: string;
  /** Session id, unique within this broker run. */
  session: string;
  /** Prefix for this session's reply inboxes; always subscribable by the session. */
  inbox: string;
  maxFrameBytes: number;
  maxSubjectBytes: number;
  maxSubscriptions: number;
  maxHeaderBytes: number;
  /** How often the broker pings (ms); the client may ping at the same rate. */
  pingIntervalMs: number;
  /** Shared-memory answer (fast path). */
  shm?: Record<string, unknown>;
}

/**
 * SUB head: [sid, subject pattern, queue group or null], optionally followed by the slow
 * consumer policy "drop" (default) or "block".
 */
export type SubHead = [sid: number, subject: string, queue: string | null, slow?: SlowPolicy];
/** What the broker does when a subscriber falls behind: drop oldest (counted) or block publishers. */
export type SlowPolicy = "drop" | "block";
/** UNSUB head: [sid, max]; max 0 removes at once, otherwise after max messages in total. */
export type UnsubHead = [sid: number, max: number];
/** PUB head: [subject, reply or null, headers or null]. */
export type PubHead = [subject: string, reply: string | null, headers: Headers | null];
/** MSG head: [sid, subject, reply or null, headers or null]. */
export type MsgHead = [sid: number, subject: string, reply: string | null, headers: Headers | null];
/** ERR head: a stable code, a message, and the subject concerned if any. */
export interface ErrHead {
  code: string;
  message: string;
  subject?: string;
  /** The sender closes the session after this error. */
  fatal?: boolean;
  /** Name of the op that caused it ("PUB", "SUB", ...), when one frame did. */
  op?: string;
}
/** DOORBELL head: [ring id (0 outbound, 1 inbound), kind (0 data to read, 1 space to write)]. */
export type DoorbellHead = [ring: number, kind: number];

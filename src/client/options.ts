/**
 * Options of `connect()`, `publish()`, `subscribe()` and `request()`, with their defaults, and
 * how the client decides where its port is.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock", name: "my-service" });
 * ```
 * @module
 */
import process from "node:process";
import type { Port, PortOpener } from "../port/port.ts";
import type { Headers } from "../protocol/ops.ts";
import { DEFAULT_PORT_NAME } from "../port/device_port.ts";
import type { Msg } from "./msg.ts";
import type { Logger } from "../util/log.ts";

/**
 * What `connect({ broker })` needs of a broker in this process (a `Broker` is one).
 *
 * @example
 * ```ts
 * import { Broker, connect, parseConfig } from "../../mod.ts";
 * const broker = new Broker(parseConfig('{ "vms": [] }'));
 * await broker.start();
 * const bus = await connect({ broker }); // in-process: no socket
 * ```
 */
export interface LocalBroker {
  /** A new in-process port to the broker (one session each). */
  localPort(): Promise<Port>;
}

/**
 * Where and how to connect.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * import type { ConnectOptions } from "./options.ts";
 * const opts: ConnectOptions = {
 *   server: "/run/vbus/broker.sock", // on the host; a guest leaves it out (or names its `port`)
 *   name: "my-service",
 *   wake: "futex",
 *   reconnectBufferBytes: 1 << 20,
 *   timeout: 5000,
 * };
 * const bus = await connect(opts);
 * ```
 */
export interface ConnectOptions {
  /**
   * Guest side: the virtio-serial port, a name under /dev/virtio-ports or a full path.
   * Default: `VBUS_PORT`, else `org.vbus.0`.
   */
  port?: string;
  /** Host side: the broker's unix socket. Default: `VBUS_SERVER`. Takes precedence over `port`. */
  server?: string;
  /** Any other byte stream (e.g. a simulated VM in tests); called again on every reconnect. */
  transport?: PortOpener;
  /**
   * A `Broker` running in this process: connect to it with no socket (`Broker.localPort`), as
   * a host client, with a shared-memory ring unless `shm: false`. For a host service that
   * embeds the broker. Takes precedence over `server`, `port` and `transport`.
   */
  broker?: LocalBroker;
  /**
   * The shared-memory fast path. In a guest: `true` (default) finds the ivshmem device by PCI
   * id; a string maps that file instead (e.g. a simulated VM's /dev/shm file); `false` uses the
   * port stream only. On the host (`server`): `true` (default) asks the broker for a region.
   */
  shm?: string | boolean;
  /**
   * Host side (`server`) with shared memory: how the broker wakes this client's parked ring
   * reader. "doorbell" (default): a DOORBELL frame on the socket. "futex": FUTEX_WAKE on the
   * ring's wake word, with a Worker sleeping for this client (no frame, no socket read).
   * Guests always use doorbells: a futex does not cross the VM boundary.
   */
  wake?: "doorbell" | "futex";
  /** Free-form name sent in HELLO for the broker's logs (never used as identity). */
  name?: string;
  /** Reconnect after the port drops. Default true. */
  reconnect?: boolean;
  /** Give up after this many failed attempts in a row; -1 = never. Default -1. */
  maxReconnectAttempts?: number;
  /** First reconnect delay in milliseconds; doubles up to `reconnectMaxDelay`. Default 50. */
  reconnectDelay?: number;
  /** Largest reconnect delay in milliseconds. Default 2000. */
  reconnectMaxDelay?: number;
  /** Bytes of publishes buffered while disconnected; beyond, publish rejects. Default 8 MiB. */
  reconnectBufferBytes?: number;
  /**
   * Milliseconds `connect()` waits for the first session (as nats.js's `timeout`). Default
   * 10 000. A permanent error (permission denied, no such device) fails at once instead, and so
   * does a broker socket that is missing (ENOENT) or stale (ECONNREFUSED) unless
   * `waitOnFirstConnect` is set. Within it, one attempt waits at most 5 s for the broker's
   * WELCOME, then says HELLO again on a fresh port (a HELLO lost in transit is not fatal).
   */
  timeout?: number;
  /**
   * Keep retrying a missing (ENOENT) or stale (ECONNREFUSED) broker socket on the first connect
   * until `timeout`, for a service that may start before its broker (as nats.js's
   * `waitOnFirstConnect`). Default false: the first connect fails at once, naming the path.
   * Reconnects always retry these.
   */
  waitOnFirstConnect?: boolean;
  /** Client PING interval in milliseconds; a session missing 3 PONGs is reconnected. Default 10 000. */
  pingInterval?: number;
  /** Default timeout of `request()` in milliseconds. Default 5000. */
  requestTimeout?: number;
  /**
   * Do not deliver this connection's own publishes to its own subscriptions (as nats.js's
   * `noEcho`). The broker must support it (the `no-echo` feature): `connect()` fails if it
   * does not. Default false.
   */
  noEcho?: boolean;
  /**
   * Where the client logs (data path decisions, futex fallbacks; at debug level connect
   * attempts, sessions and disconnects): any object with `debug`, `info`, `warn` and `error`
   * taking `(message, fields?)`, e.g. `createLogger("my-app", { format: "json" })` or
   * `console`. Default: a stderr logger set by `VBUS_LOG` and `VBUS_LOG_FORMAT` (a bad value
   * of either makes `connect()` fail with a message saying which values exist).
   */
  logger?: Logger;
}

/**
 * Options of `publish()`.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * await bus.publish("jobs.new", { id: 7 }, { reply: "jobs.done", headers: { "trace-id": "a1" } });
 * ```
 */
export interface PublishOptions {
  /** Subject the receiver should answer to. */
  reply?: string;
  /** Message headers (string to string). */
  headers?: Headers;
}

/**
 * Options of `subscribe()`.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * bus.subscribe<{ id: number }>("jobs.new", {
 *   queue: "workers", // each job goes to one member of the group
 *   max: 100,
 *   callback: (err, msg) => {
 *     if (err) return console.error(`refused: ${err.message}`);
 *     console.log("job", msg.data.id);
 *   },
 * });
 * ```
 */
export interface SubscribeOptions<T = unknown> {
  /** Queue group: one member of the group receives each message. */
  queue?: string;
  /** Unsubscribe automatically after this many messages. */
  max?: number;
  /**
   * When this subscriber falls behind at the broker: "drop" (default) drops the oldest
   * messages for it, counted and reported as a slow-consumer event; "block" holds the
   * publishers instead, so their publish() waits (applies to this connection's whole queue).
   */
  slow?: "drop" | "block";
  /**
   * Receive messages through this callback instead of iterating. The message is readable until
   * the callback returns or, when it returns a promise (an `async` callback), until that
   * promise settles; a throw or a rejection is logged and never stops the connection. `err`
   * is null for messages; when the broker refuses the subscription the callback is called once
   * with that error and no message.
   */
  callback?: (err: Error | null, msg: Msg<T>) => void;
  /**
   * Messages queued for an iterator that is not reading before further ones are dropped
   * (counted, and reported as a slow-consumer status event). Default 65 536.
   */
  maxPending?: number;
}

/**
 * Options of `request()`.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const stop = new AbortController(); // e.g. aborted when the user cancels
 * const answer = await bus.request<number>("math.double", 21, {
 *   timeout: 1000,
 *   headers: { "trace-id": "a1" },
 *   signal: stop.signal,
 * });
 * console.log(answer.data);
 * ```
 */
export interface RequestOptions {
  /** Milliseconds to wait for the reply. Default: the connection's `requestTimeout`. */
  timeout?: number;
  /** Headers sent with the request. */
  headers?: Headers;
  /**
   * Give up waiting when this signal aborts: the request rejects with an `ABORTED`
   * `VbusError` named "AbortError" (its `cause` is the signal's reason), and a reply
   * arriving later is ignored.
   */
  signal?: AbortSignal;
}

/** Defaults applied by `connect()`. */
export const CONNECT_DEFAULTS = {
  reconnect: true,
  maxReconnectAttempts: -1,
  reconnectDelay: 50,
  reconnectMaxDelay: 2000,
  reconnectBufferBytes: 8 * 1024 * 1024,
  timeout: 10_000,
  waitOnFirstConnect: false,
  pingInterval: 10_000,
  requestTimeout: 5000,
  noEcho: false,
} as const;

/**
 * Connect options that were renamed, with their new names: durations are milliseconds named
 * without a unit, as in nats.js. `connect()` refuses an old name rather than ignore it.
 */
export const RENAMED_OPTIONS: Readonly<Record<string, string>> = {
  timeoutMs: "timeout",
  pingIntervalMs: "pingInterval",
  requestTimeoutMs: "requestTimeout",
  reconnectDelayMs: "reconnectDelay",
  reconnectMaxDelayMs: "reconnectMaxDelay",
};

/** Default subscription queue bound. */
export const DEFAULT_MAX_PENDING = 65_536;

function env(name: string): string | undefined {
  try {
    return process.env[name] || undefined;
  } catch {
    return undefined; // no env permission (Deno without --allow-env)
  }
}

/**
 * Where the client will connect, from options then environment then the default guest port.
 *
 * @example
 * ```ts
 * resolveEndpoint({}); // { kind: "device", path: "/dev/virtio-ports/org.vbus.0" } unless VBUS_* is set
 * ```
 */
export function resolveEndpoint(
  opts: Pick<ConnectOptions, "port" | "server">,
): { kind: "server" | "device"; path: string } {
  if (opts.server) return { kind: "server", path: opts.server };
  if (opts.port) return { kind: "device", path: opts.port };
  const server = env("VBUS_SERVER");
  if (server) return { kind: "server", path: server };
  return { kind: "device", path: env("VBUS_PORT") ?? DEFAULT_PORT_NAME };
}

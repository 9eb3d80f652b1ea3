/**
 * The client: one connection to the broker through a port, used the same way in a guest (over
 * `/dev/virtio-ports/...`) and on the host (over the broker's unix socket). It reconnects by
 * itself, re-sends its subscriptions and says so; publishes made while disconnected are
 * buffered up to a bound and otherwise rejected, never silently dropped.
 *
 * When a session ends under it (the broker crashed, was killed, reset the session), what it
 * had not read of the outbound ring is recovered from shared memory and sent again first on
 * the next session, and publishes that may have been lost on the way (sent on the port after
 * the last answered PING) are counted: `maybeLost` in the `disconnected` and `reconnected`
 * events and in {@link Bus.stats} (see `delivery_ledger.ts`). Messages the broker had put in
 * the inbound ring are delivered before the session is given up.
 *
 * Payloads from other VMs are untrusted: a message whose value cannot be decoded is delivered,
 * its `data` throws a CODEC error and an `error` status event reports it (see `msg.ts`).
 *
 * `Bus` is the facade, holding its `Connection` (`connection.ts`) privately; the parts
 * are `session_setup.ts` (connect loop, HELLO/WELCOME), `client_shm.ts` (shared memory and the
 * ring), `outbound.ts` (sending, the reconnect buffer, what PONGs confirmed),
 * `subscriptions.ts` (SUB/UNSUB, delivery), `requests.ts`, `keepalive.ts` (PING/PONG),
 * `status.ts`, and below those `pub_heads.ts`, `ring_sender.ts`, `ring_salvage.ts`,
 * `reconnect_buffer.ts`, `delivery_ledger.ts`.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const sub = bus.subscribe<{ temp: number }>("sensors.*.temp");
 * await bus.publish("sensors.vm1.temp", { temp: 21.5 });
 * for await (const msg of sub) {
 *   console.log(msg.subject, msg.data.temp);
 *   break;
 * }
 * await bus.close();
 * ```
 * @module
 */
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import type { RingChannelStats } from "../shm/ring_channel.ts";
import { sleep } from "../util/backoff.ts";
import type { FutexSleepCounts } from "./client_shm.ts";
import { Connection } from "./connection.ts";
import type { ClientStats } from "./delivery_ledger.ts";
import type { Msg } from "./msg.ts";
import type {
  ConnectOptions,
  PublishOptions,
  RequestOptions,
  SubscribeOptions,
} from "./options.ts";
import type { StatusEvent, StatusType } from "./status.ts";
import type { Subscription } from "./subscription.ts";

export type { ClientStats } from "./delivery_ledger.ts";
export type { FutexSleepCounts } from "./client_shm.ts";

/** How long `close()` waits for the broker to read what is still in the outbound ring. */
const CLOSE_FLUSH_MS = 2000;

/**
 * Information about the current session.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const info = bus.info;
 * if (info) console.log(`${info.identity} on ${info.port}, session ${info.session}`);
 * ```
 */
export interface SessionInfo {
  /** Identity the broker gave this connection (the VM name, or "host"). */
  identity: string;
  /** Session id (changes on every reconnect). */
  session: string;
  /** Features in use. */
  features: string[];
  /** Where the bytes go. */
  port: string;
  /** Largest frame the broker accepts. */
  maxFrameBytes: number;
}

let startBus!: (opts: ConnectOptions) => Promise<Bus>;

/**
 * A connection to the vbus broker. Get one with {@link connect}.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * bus.subscribe<number>("math.double", { callback: (_err, m) => m.respond(m.data * 2) });
 * const answer = await bus.request<number>("math.double", 21, { timeout: 1000 });
 * console.log(answer.data, await bus.rtt());
 * await bus.drain();
 * ```
 */
export class Bus {
  #c: Connection;

  /** Resolves when the connection is closed for good: `undefined` if by `close()`, else the error. */
  readonly closed: Promise<Error | undefined>;

  private constructor(opts: ConnectOptions) {
    this.#c = new Connection(opts);
    this.closed = this.#c.closed;
  }

  static {
    startBus = async (opts) => {
      const bus = new Bus(opts);
      try {
        await bus.#c.start();
      } catch (err) {
        await bus.close();
        throw err;
      }
      return bus;
    };
  }

  /** The current session, or undefined while not connected. */
  get info(): SessionInfo | undefined {
    const w = this.#c.welcome;
    if (!w || this.#c.state !== "connected") return undefined;
    return {
      identity: w.identity,
      session: w.session,
      features: [...w.features],
      port: this.#c.port?.description ?? "",
      maxFrameBytes: w.maxFrameBytes,
    };
  }

  /** True while a session is established. */
  get isConnected(): boolean {
    return this.#c.state === "connected";
  }

  /** True once closed. */
  get isClosed(): boolean {
    return this.#c.state === "closed";
  }

  /** True from `drain()` until the connection is closed. */
  get isDraining(): boolean {
    return this.#c.state === "draining";
  }

  // ---- publish / subscribe / request ------------------------------------------------------

  /**
   * Publish `value` (anything msgpack encodes; `Uint8Array` travels as binary) to `subject`.
   * Resolves once the message is handed to the port, or buffered during a reconnect; waits
   * while the port is backed up. Rejects on an invalid subject, an oversized message, a full
   * reconnect buffer, or a closed connection.
   */
  publish(subject: string, value?: unknown, opts?: PublishOptions): Promise<void> {
    try {
      return this.#c.out.publish(subject, value, opts);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Publish without waiting: returns false (and sends nothing) when the port is backed up,
   * so the caller can retry later. Throws on the same errors `publish` rejects with.
   */
  tryPublish(subject: string, value?: unknown, opts?: PublishOptions): boolean {
    return this.#c.out.tryPublish(subject, value, opts);
  }

  /**
   * Subscribe to a subject pattern (`*` matches one token, `>` the rest). Iterate the result
   * with `for await`, or pass `callback` (see {@link SubscribeOptions} for how long a
   * callback's message is readable).
   */
  subscribe<T = unknown>(subject: string, opts: SubscribeOptions<T> = {}): Subscription<T> {
    if (this.#c.state === "closed" || this.#c.state === "draining") {
      throw new VbusError(ErrorCode.Closed, "connection is closed", subject);
    }
    const maxSubject = this.#c.welcome?.maxSubjectBytes ?? DEFAULT_LIMITS.maxSubjectBytes;
    return this.#c.subs.subscribe(subject, opts, maxSubject);
  }

  /**
   * Send `value` to `subject` and wait for one reply. Rejects at once with `NO_RESPONDERS`
   * when nothing subscribes to `subject`, with `TIMEOUT` after `timeout` ms, and with
   * `ABORTED` (an error named "AbortError") when `signal` aborts.
   */
  request<T = unknown>(
    subject: string,
    value?: unknown,
    opts: RequestOptions = {},
  ): Promise<Msg<T>> {
    if (this.#c.state === "closed" || this.#c.state === "draining") {
      return Promise.reject(new VbusError(ErrorCode.Closed, "connection is closed", subject));
    }
    const timeout = opts.timeout ?? this.#c.opts.requestTimeout;
    if (!(timeout > 0) || !Number.isFinite(timeout)) {
      return Promise.reject(
        new RangeError(`timeout must be a positive number of ms, not ${timeout}`),
      );
    }
    this.#c.subs.ensureInbox();
    const token = this.#c.requests.nextToken();
    return new Promise<Msg<T>>((resolve, reject) => {
      const requests = this.#c.requests;
      requests.add(
        token,
        subject,
        timeout,
        resolve as (m: Msg<unknown>) => void,
        reject,
        opts.signal,
      );
      if (!requests.has(token)) return; // the signal had aborted already
      const send = () =>
        this.publish(subject, value, {
          reply: `${this.#c.subs.inbox}.${token}`,
          headers: opts.headers,
        })
          .catch((err) => requests.settle(token, err));
      // The reply subject names the current session's inbox, which the broker gives anew in every
      // WELCOME: while disconnected, wait for the next session instead of buffering a request
      // whose reply would go to the old inbox (nobody would hear it; the request would time out).
      if (this.#c.state === "connected") send();
      else {
        this.#c.waitConnected().then(
          () => {
            if (requests.has(token)) send();
          },
          (err) => requests.settle(token, err),
        );
      }
    });
  }

  /**
   * Resolves when the broker has processed everything sent before it (a PING/PONG round
   * trip). If the connection drops first, rejects: what was sent may be lost.
   */
  flush(): Promise<void> {
    return this.#c.flush();
  }

  /**
   * The round trip to the broker in milliseconds (fractional): one PING/PONG, behind whatever
   * this connection sent before it, as nats.js's `rtt()`. Rejects when not connected.
   */
  async rtt(): Promise<number> {
    if (this.#c.state === "closed") throw new VbusError(ErrorCode.Closed, "connection is closed");
    if (this.#c.state !== "connected") {
      throw new VbusError(ErrorCode.Port, "not connected: no round trip to measure");
    }
    const start = performance.now();
    await this.flush();
    return performance.now() - start;
  }

  /**
   * Unsubscribe everything, let in-flight messages arrive and be handed out, flush what was
   * published, then close.
   */
  async drain(): Promise<void> {
    if (this.#c.state === "closed" || this.#c.state === "draining") return;
    if (this.#c.state === "connected") {
      this.#c.subs.unsubscribeAll();
      await this.flush().catch(() => {});
    }
    this.#c.state = "draining";
    this.#c.subs.endAll();
    await this.close();
  }

  /** Close the connection. Pending requests and flushes reject; subscriptions end. */
  async close(): Promise<void> {
    if (this.#c.state === "connected" && this.#c.shm.ring) {
      // On the port, what was written reaches the broker before our EOF does; records in the
      // outbound ring do only once the broker has read them. A flush travels in the ring
      // behind them, so its answer says they were (bounded: a dead broker cannot hold us).
      const timeout = new AbortController();
      await Promise.race([this.flush().catch(() => {}), sleep(CLOSE_FLUSH_MS, timeout.signal)]);
      timeout.abort();
    }
    this.#c.shutdown(undefined);
    await this.closed;
  }

  // ---- status events ----------------------------------------------------------------------

  /**
   * Call `listener` for every event of `type`; returns a function that removes it.
   *
   * @example
   * ```ts
   * import { connect } from "./bus.ts";
   * const bus = await connect({ server: "/run/vbus/broker.sock" });
   * const off = bus.on("reconnected", (e) => console.log(`resubscribed ${e.resubscribed}`));
   * off();
   * ```
   */
  on<K extends StatusType>(
    type: K,
    listener: (e: Extract<StatusEvent, { type: K }>) => void,
  ): () => void {
    return this.#c.status.on(type, listener);
  }

  /** Every status event from now on, as an async iterable (ends when the connection closes). */
  status(): AsyncIterable<StatusEvent> {
    return this.#c.status.stream();
  }

  /**
   * Counters of the current session's shared-memory rings, or undefined on the port stream:
   * frames each way, doorbells rung, parks, full-ring waits, and (with `wake: "futex"`) how
   * often this client slept in FUTEX_WAIT waiting for data and for space, and how many of
   * those sleeps ran to their timeout (an idle peer, or a lost wake-up).
   *
   * @example
   * ```ts
   * import { connect } from "./bus.ts";
   * const bus = await connect({ server: "/run/vbus/broker.sock" });
   * const s = bus.ringStats;
   * if (s) console.log(`${s.framesOut} frames out, waited for space ${s.spaceWaits} times`);
   * ```
   */
  get ringStats(): (RingChannelStats & { futex?: FutexSleepCounts }) | undefined {
    return this.#c.shm.stats;
  }

  /** The data path of the current session: "ring" (shared memory) or "stream" (the port). */
  get dataPath(): "ring" | "stream" | undefined {
    if (this.#c.state !== "connected") return undefined;
    return this.#c.shm.ring ? "ring" : "stream";
  }

  /**
   * Counters of this connection over all its sessions: `disconnects`, publishes `resent`
   * from the outbound ring of a session that ended, publishes that `maybeLost` on the way
   * when a session ended (see `delivery_ledger.ts` for what can and cannot be known), and
   * received messages whose payload was `undecodable`.
   *
   * @example
   * ```ts
   * import { connect } from "./bus.ts";
   * const bus = await connect({ server: "/run/vbus/broker.sock" });
   * const { resent, maybeLost } = bus.stats;
   * console.log(`${resent} publishes re-sent from the rings of sessions that ended`);
   * if (maybeLost > 0) console.warn(`${maybeLost} publishes may have been lost in broker crashes`);
   * ```
   */
  get stats(): ClientStats {
    return { ...this.#c.out.stats };
  }
}

/**
 * Connect to the broker. In a guest this opens `/dev/virtio-ports/org.vbus.0` (or `port`,
 * or `VBUS_PORT`); on the host pass `server` (or set `VBUS_SERVER`) to use the broker's socket.
 * Resolves once the session is established; rejects after `timeout` ms, or at once on an error
 * retrying cannot cure (a permission this process lacks, no such device, a broker without a
 * feature the options need).
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * const bus = await connect({ name: "sensor" });
 * await bus.publish("sensors.temp", 21.5);
 * await bus.drain();
 * ```
 */
export function connect(opts: ConnectOptions = {}): Promise<Bus> {
  try {
    return startBus(opts);
  } catch (err) {
    return Promise.reject(err);
  }
}

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
import type { Port, PortOpener } from "../port/port.ts";
import { connectUnix } from "../port/socket_port.ts";
import { openDevice, portPath } from "../port/device_port.ts";
import { encodeFrame, type Frame, FrameDecoder, FrameHeader } from "../protocol/frame.ts";
import { FrameWriter } from "../protocol/frame_writer.ts";
import { copyBytes, encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import {
  decodeErrHead,
  decodeMsgHead,
  decodeWelcomeHead,
  headersSize,
  isHeaders,
} from "../protocol/heads.ts";
import {
  Feature,
  type Headers,
  type HelloHead,
  Op,
  PROTOCOL_VERSION,
  STATUS_HEADER,
  STATUS_NO_RESPONDERS,
  type WelcomeHead,
} from "../protocol/ops.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import { validatePattern, validateSubject } from "../subject/subject.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import { Msg } from "./msg.ts";
import {
  CONNECT_DEFAULTS,
  type ConnectOptions,
  type PublishOptions,
  RENAMED_OPTIONS,
  type RequestOptions,
  resolveEndpoint,
  type SubscribeOptions,
} from "./options.ts";
import { QueuedIterator } from "./queued_iterator.ts";
import type { StatusEvent, StatusOf, StatusType } from "./status.ts";
import { Subscription, type SubscriptionOwner } from "./subscription.ts";
import { RingSender } from "./ring_sender.ts";
import { ReconnectBuffer } from "./reconnect_buffer.ts";
import { salvageOutboundRing } from "./ring_salvage.ts";
import { type ClientStats, DeliveryLedger, type RingSessionEnd } from "./delivery_ledger.ts";
import { RequestTable } from "./requests.ts";
import type { FutexWaiter } from "../../ffi/futex_waiter.ts";
import {
  type Ffi,
  loadFfi,
  type ShmAnswer,
  type ShmOffer,
  writeGuestNonce,
} from "../shm/negotiation.ts";
import { type FutexWakeups, RingChannel, type RingChannelStats } from "../shm/ring_channel.ts";
import { attachRegion } from "../ring/region.ts";
import { findVbusIvshmem } from "../shm/find_ivshmem.ts";
import { decodeDoorbellHead } from "../protocol/heads.ts";
import { HeadReader } from "../protocol/fast_heads.ts";
import { statSync } from "node:fs";
import { createLogger, type Logger } from "../util/log.ts";
import { connectHint, isPermissionDenied } from "./hints.ts";

export type { ClientStats } from "./delivery_ledger.ts";

/** FUTEX_WAIT sleeps of a `wake: "futex"` client, waiting for data and for space. */
export interface FutexSleepCounts {
  data: { sleeps: number; timeouts: number };
  space: { sleeps: number; timeouts: number };
}

/** How this connection gets shared memory. */
type ShmPlan =
  | { kind: "none"; reason: string }
  | { kind: "guest"; path?: string } // map a file or the ivshmem BAR, offer it in HELLO
  | { kind: "host"; futex: boolean }; // ask the broker for a per-session region

/** A flush() or keep-alive PING waiting for its PONG, with what that PONG will confirm. */
interface PongWaiter {
  resolve(): void;
  reject(err: Error): void;
  /** PUBs sent on the port before the PING (see DeliveryLedger). */
  portMark: number;
  /** PUBs accepted by the ring sender before the PING. */
  ringMark: number;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** Subjects whose PUB head is kept encoded. */
const HEAD_CACHE_SIZE = 1024;
const EMPTY_ARRAY_HEAD = encodeValue([]);
const CLIENT_FEATURES = [Feature.Headers, Feature.NoResponders];
/** Unanswered client PINGs after which the connection is considered dead. */
const MAX_PINGS_OUT = 3;
/** How long `close()` waits for the broker to read what is still in the outbound ring. */
const CLOSE_FLUSH_MS = 2000;

type State = "connecting" | "connected" | "reconnecting" | "draining" | "closed";

/** Information about the current session. */
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

/** A connection to the vbus broker. Create it with {@link connect}. */
export class Bus implements SubscriptionOwner {
  #opts:
    & Required<
      Omit<ConnectOptions, "port" | "server" | "transport" | "name" | "shm" | "wake" | "logger">
    >
    & {
      name?: string;
    };
  #shmPlan: ShmPlan;
  #ffi?: Ffi;
  #guestMapping?: { bytes: Uint8Array; unmap(): void };
  #sessionMapping?: { bytes: Uint8Array; unmap(): void };
  #futexWaiters?: [FutexWaiter, FutexWaiter];
  #futexCounts?: FutexSleepCounts;
  #ring?: RingChannel;
  /** Sends through the ring, in order; set while a session on the ring is established. */
  #sender?: RingSender;
  #headCache = new Map<string, Uint8Array>();
  #heads = new HeadReader();
  #opener: PortOpener;
  #state: State = "connecting";
  #port?: Port;
  #writer?: FrameWriter;
  #welcome?: WelcomeHead;
  #features = new Set<string>();
  #subs = new Map<number, Subscription<unknown>>();
  #nextSid = 1;
  #pongWaiters: PongWaiter[] = [];
  #pingsOut = 0;
  #pingTimer?: ReturnType<typeof setInterval>;
  #buffer: ReconnectBuffer;
  #ledger = new DeliveryLedger();
  /** Publishes that may have been lost since the last established session (for `reconnected`). */
  #maybeLostSinceSession = 0;
  #connectedWaiters: { resolve(): void; reject(err: Error): void }[] = [];
  #requests = new RequestTable();
  #inboxSid = 0;
  #inboxSubject = "";
  #listeners = new Map<StatusType, Set<(e: StatusEvent) => void>>();
  #statusStreams = new Set<QueuedIterator<StatusEvent>>();
  #closedResolve!: (err: Error | undefined) => void;
  #abort = new AbortController();
  #everConnected = false;
  #log: Logger;

  /** Resolves when the connection is closed for good: `undefined` if by `close()`, else the error. */
  readonly closed: Promise<Error | undefined>;

  /** @internal Use {@link connect}. */
  constructor(opts: ConnectOptions = {}) {
    for (const [old, now] of Object.entries(RENAMED_OPTIONS)) {
      if (old in opts) {
        throw new TypeError(`connect option "${old}" is now "${now}" (milliseconds, as in nats.js)`);
      }
    }
    const { port: _p, server: _s, transport, shm, wake, logger, ...rest } = opts;
    // Made per connection, not at import: a bad VBUS_LOG is reported by connect() itself.
    this.#log = logger ?? createLogger("vbus-client");
    if (wake !== undefined && wake !== "doorbell" && wake !== "futex") {
      throw new TypeError(`wake must be "doorbell" or "futex", not ${JSON.stringify(wake)}`);
    }
    this.#opts = { ...CONNECT_DEFAULTS, ...stripUndefined(rest) };
    this.#buffer = new ReconnectBuffer(this.#opts.reconnectBufferBytes);
    const futexOnlyOnHost =
      `wake: "futex" is only for host-local clients (server); a guest is woken by doorbell frames`;
    if (transport) {
      if (wake === "futex") throw new TypeError(futexOnlyOnHost);
      this.#opener = transport;
      this.#shmPlan = typeof shm === "string"
        ? { kind: "guest", path: shm }
        : { kind: "none", reason: "no shared-memory file given for this transport" };
    } else {
      const endpoint = resolveEndpoint(opts);
      if (wake === "futex" && endpoint.kind !== "server") throw new TypeError(futexOnlyOnHost);
      this.#opener = endpoint.kind === "server"
        ? () => connectUnix(endpoint.path)
        : () => openDevice(portPath(endpoint.path));
      this.#shmPlan = shm === false
        ? { kind: "none", reason: "disabled by the shm option" }
        : endpoint.kind === "server"
        ? { kind: "host", futex: wake === "futex" }
        : { kind: "guest", path: typeof shm === "string" ? shm : undefined };
    }
    this.closed = new Promise((r) => this.#closedResolve = r);
  }

  /** The current session, or undefined while not connected. */
  get info(): SessionInfo | undefined {
    const w = this.#welcome;
    if (!w || this.#state !== "connected") return undefined;
    return {
      identity: w.identity,
      session: w.session,
      features: [...this.#features],
      port: this.#port?.description ?? "",
      maxFrameBytes: w.maxFrameBytes,
    };
  }

  /** True while a session is established. */
  get isConnected(): boolean {
    return this.#state === "connected";
  }

  /** True once closed. */
  get isClosed(): boolean {
    return this.#state === "closed";
  }

  /** @internal First connection, bounded by `timeout`. */
  async start(): Promise<void> {
    await this.#prepareShm();
    const timeout = setTimeout(() => this.#abort.abort(), this.#opts.timeout);
    try {
      await this.#connectLoop();
    } finally {
      clearTimeout(timeout);
    }
    if (this.#state !== "connected") {
      const err = this.#lastError ?? new VbusError(ErrorCode.Port, "not connected");
      const waited = this.#refused ? "" : ` within ${this.#opts.timeout} ms`;
      throw new VbusError(
        ErrorCode.Port,
        `could not connect${waited}: ${err.message}${connectHint(err)}`,
      );
    }
  }

  #lastError?: Error;
  /** The first connect was refused for good (permission denied): no point waiting. */
  #refused = false;

  // ---- publish / subscribe / request ------------------------------------------------------

  /**
   * Publish `value` (anything msgpack encodes; `Uint8Array` travels as binary) to `subject`.
   * Resolves once the message is handed to the port, or buffered during a reconnect; waits
   * while the port is backed up. Rejects on an invalid subject, an oversized message, a full
   * reconnect buffer, or a closed connection.
   */
  publish(subject: string, value?: unknown, opts?: PublishOptions): Promise<void> {
    try {
      return this.#publish(subject, value, opts);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Publish without waiting: returns false (and sends nothing) when the port is backed up,
   * so the caller can retry later. Throws on the same errors `publish` rejects with.
   */
  tryPublish(subject: string, value?: unknown, opts?: PublishOptions): boolean {
    if (this.#state === "connected") {
      const sender = this.#sender;
      if (sender) {
        const r = sender.tryPublish(this.#pubHead(subject, opts), value);
        if (r === "too-large") {
          throw new VbusError(
            ErrorCode.FrameTooLarge,
            "message does not fit in the shared-memory ring",
            subject,
          );
        }
        return r === "ok";
      }
      if (this.#writer?.blocked) return false;
    }
    this.#publish(subject, value, opts).catch(() => {});
    return true;
  }

  #publish(subject: string, value: unknown, opts?: PublishOptions): Promise<void> {
    const head = this.#pubHead(subject, opts);
    const sender = this.#sender;
    if (sender && this.#state === "connected") return sender.publish(head, value, subject);
    const payload = encodeValue(value);
    const size = FrameHeader.LENGTH + head.length + payload.length;
    const max = this.#welcome?.maxFrameBytes ?? DEFAULT_LIMITS.maxFrameBytes;
    if (size > max) {
      throw new VbusError(
        ErrorCode.FrameTooLarge,
        `message of ${size} bytes exceeds the broker's limit of ${max}`,
        subject,
      );
    }
    if (this.#state === "connected") {
      const writer = this.#writer!;
      writer.frame(Op.Pub, head, payload);
      this.#ledger.portPublished();
      return writer.blocked ? writer.ready() : RESOLVED;
    }
    this.#buffer.add(encodeFrame(Op.Pub, head, payload), subject);
    return RESOLVED;
  }

  /** Check a publish's subject, reply and headers; its encoded PUB head. */
  #pubHead(subject: string, opts: PublishOptions | undefined): Uint8Array {
    if (this.#state === "closed" || this.#state === "draining") {
      throw new VbusError(ErrorCode.Closed, "connection is closed", subject);
    }
    const maxSubject = this.#welcome?.maxSubjectBytes ?? DEFAULT_LIMITS.maxSubjectBytes;
    const problem = validateSubject(subject, maxSubject);
    if (problem) {
      throw new VbusError(
        ErrorCode.BadSubject,
        `invalid subject "${subject}": ${problem}`,
        subject,
      );
    }
    const reply = opts?.reply ?? null;
    if (reply !== null) {
      const p = validateSubject(reply, maxSubject);
      if (p) {
        throw new VbusError(ErrorCode.BadSubject, `invalid reply subject "${reply}": ${p}`, reply);
      }
    }
    const headers = opts?.headers ?? null;
    if (headers !== null) this.#checkHeaders(headers, subject);
    return reply === null && headers === null
      ? this.#plainHead(subject)
      : encodeValue([subject, reply, headers]);
  }

  /** The PUB head of a plain publish to `subject`, encoded once and cached. */
  #plainHead(subject: string): Uint8Array {
    let head = this.#headCache.get(subject);
    if (!head) {
      if (this.#headCache.size >= HEAD_CACHE_SIZE) this.#headCache.clear();
      head = encodeValue([subject, null, null]);
      this.#headCache.set(subject, head);
    }
    return head;
  }

  /**
   * Send SUB, UNSUB or PING. With shared memory they go through the ring like PUBs, so a
   * publish can never overtake the subscription or flush sent before it.
   */
  #control(op: number, head: Uint8Array) {
    if (this.#sender) this.#sender.control(op, head);
    else this.#writer?.frame(op, head);
  }

  /** Send a PING now, for `waiter`, noting what its PONG will confirm. */
  #ping(waiter: PongWaiter) {
    const sender = this.#sender;
    if (sender) {
      waiter.portMark = this.#ledger.unchangedPortMark();
      waiter.ringMark = sender.pubsAccepted;
    } else waiter.portMark = this.#ledger.portMark();
    this.#pongWaiters.push(waiter);
    this.#control(Op.Ping, EMPTY_ARRAY_HEAD);
  }

  #checkHeaders(headers: Headers, subject: string) {
    if (!isHeaders(headers)) {
      throw new VbusError(
        ErrorCode.BadHeaders,
        "headers must map non-empty strings to strings",
        subject,
      );
    }
    if (this.#welcome && !this.#features.has(Feature.Headers)) {
      throw new VbusError(ErrorCode.BadHeaders, "the broker did not accept headers", subject);
    }
    const max = this.#welcome?.maxHeaderBytes ?? DEFAULT_LIMITS.maxHeaderBytes;
    if (headersSize(headers) > max) {
      throw new VbusError(ErrorCode.BadHeaders, `headers exceed ${max} bytes`, subject);
    }
  }

  /**
   * Subscribe to a subject pattern (`*` matches one token, `>` the rest). Iterate the result
   * with `for await`, or pass `callback`.
   */
  subscribe<T = unknown>(subject: string, opts: SubscribeOptions<T> = {}): Subscription<T> {
    if (this.#state === "closed" || this.#state === "draining") {
      throw new VbusError(ErrorCode.Closed, "connection is closed", subject);
    }
    const maxSubject = this.#welcome?.maxSubjectBytes ?? DEFAULT_LIMITS.maxSubjectBytes;
    const problem = validatePattern(subject, maxSubject);
    if (problem) {
      throw new VbusError(
        ErrorCode.BadSubject,
        `invalid subject "${subject}": ${problem}`,
        subject,
      );
    }
    if (opts.queue !== undefined) {
      const q = validateSubject(opts.queue, maxSubject);
      if (q) {
        throw new VbusError(
          ErrorCode.BadSubject,
          `invalid queue group "${opts.queue}": ${q}`,
          subject,
        );
      }
    }
    if (opts.max !== undefined && (!Number.isInteger(opts.max) || opts.max <= 0)) {
      throw new RangeError("max must be a positive integer");
    }
    const sid = this.#nextSid++;
    const sub = new Subscription<T>(this, sid, subject, opts);
    this.#subs.set(sid, sub as Subscription<unknown>);
    if (this.#state === "connected") this.#sendSub(sub as Subscription<unknown>);
    return sub;
  }

  #sendSub(sub: Subscription<unknown>) {
    const head = sub.opts.slow === "block"
      ? [sub.sid, sub.subject, sub.queue ?? null, "block"]
      : [sub.sid, sub.subject, sub.queue ?? null];
    this.#control(Op.Sub, encodeValue(head));
    if (sub.opts.max) {
      const remaining = sub.opts.max - sub.received;
      this.#control(Op.Unsub, encodeValue([sub.sid, Math.max(1, remaining)]));
    }
  }

  /** @internal */
  unsubscribeSid(sid: number, max?: number): void {
    const sub = this.#subs.get(sid);
    if (!sub) return;
    if (max !== undefined && max > sub.received) {
      sub.opts.max = max;
      if (this.#state === "connected") this.#control(Op.Unsub, encodeValue([sid, max]));
      return;
    }
    this.#subs.delete(sid);
    if (this.#state === "connected") this.#control(Op.Unsub, encodeValue([sid, 0]));
    sub.end();
  }

  /** @internal */
  async drainSid(sid: number): Promise<void> {
    const sub = this.#subs.get(sid);
    if (!sub) return;
    if (this.#state === "connected") {
      this.#control(Op.Unsub, encodeValue([sid, 0]));
      // Every MSG the broker sent before it saw the UNSUB arrives before this PONG.
      await this.flush().catch(() => {});
    }
    this.#subs.delete(sid);
    sub.end();
  }

  /** @internal */
  slowConsumer(sub: Subscription<unknown>, dropped: number): void {
    // Report the first drop and then every 1000th, so a stuck iterator does not flood events.
    if (sub.dropped === 1 || sub.dropped % 1000 === 0) {
      this.#emit({
        type: "slowConsumer",
        where: "client",
        dropped: sub.dropped,
        subject: sub.subject,
      });
    }
    void dropped;
  }

  /**
   * Send `value` to `subject` and wait for one reply. Rejects at once with `NO_RESPONDERS`
   * when nothing subscribes to `subject`, and with `TIMEOUT` after `timeout` ms.
   */
  request<T = unknown>(
    subject: string,
    value?: unknown,
    opts: RequestOptions = {},
  ): Promise<Msg<T>> {
    if (this.#state === "closed" || this.#state === "draining") {
      return Promise.reject(new VbusError(ErrorCode.Closed, "connection is closed", subject));
    }
    this.#ensureInbox();
    const token = this.#requests.nextToken();
    const timeout = opts.timeout ?? this.#opts.requestTimeout;
    return new Promise<Msg<T>>((resolve, reject) => {
      this.#requests.add(token, subject, timeout, resolve as (m: Msg<unknown>) => void, reject);
      const send = () =>
        this.publish(subject, value, {
          reply: `${this.#inboxSubject}.${token}`,
          headers: opts.headers,
        })
          .catch((err) => this.#requests.settle(token, err));
      // The reply subject names the current session's inbox, which the broker gives anew in every
      // WELCOME: while disconnected, wait for the next session instead of buffering a request
      // whose reply would go to the old inbox (nobody would hear it; the request would time out).
      if (this.#state === "connected") send();
      else {
        this.#waitConnected().then(
          () => {
            if (this.#requests.has(token)) send();
          },
          (err) => this.#requests.settle(token, err),
        );
      }
    });
  }

  #ensureInbox() {
    if (this.#inboxSid) return;
    this.#inboxSid = this.#nextSid++;
    if (this.#state === "connected") this.#sendInboxSub();
  }

  #sendInboxSub() {
    this.#inboxSubject = this.#welcome!.inbox;
    this.#control(Op.Sub, encodeValue([this.#inboxSid, `${this.#inboxSubject}.*`, null]));
  }

  /**
   * Resolves when the broker has processed everything sent before it (a PING/PONG round
   * trip). If the connection drops first, rejects: what was sent may be lost.
   */
  async flush(): Promise<void> {
    if (this.#state === "closed") throw new VbusError(ErrorCode.Closed, "connection is closed");
    if (this.#state !== "connected" && this.#state !== "draining") await this.#waitConnected();
    return new Promise((resolve, reject) =>
      this.#ping({ resolve, reject, portMark: 0, ringMark: 0 })
    );
  }

  #waitConnected(): Promise<void> {
    return new Promise((resolve, reject) => this.#connectedWaiters.push({ resolve, reject }));
  }

  /**
   * Unsubscribe everything, let in-flight messages arrive and be handed out, flush what was
   * published, then close.
   */
  async drain(): Promise<void> {
    if (this.#state === "closed" || this.#state === "draining") return;
    const connected = this.#state === "connected";
    if (connected) {
      for (const sid of this.#subs.keys()) this.#control(Op.Unsub, encodeValue([sid, 0]));
      await this.flush().catch(() => {});
    }
    this.#state = "draining";
    for (const sub of this.#subs.values()) sub.end();
    this.#subs.clear();
    await this.close();
  }

  /** Close the connection. Pending requests and flushes reject; subscriptions end. */
  async close(): Promise<void> {
    if (this.#state === "connected" && this.#ring) {
      // On the port, what was written reaches the broker before our EOF does; records in the
      // outbound ring do only once the broker has read them. A flush travels in the ring
      // behind them, so its answer says they were (bounded: a dead broker cannot hold us).
      const timeout = new AbortController();
      await Promise.race([this.flush().catch(() => {}), sleep(CLOSE_FLUSH_MS, timeout.signal)]);
      timeout.abort();
    }
    this.#shutdown(undefined);
    await this.closed;
  }

  #shutdown(error: Error | undefined) {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#abort.abort();
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#writer?.flush();
    this.#port?.close();
    const closing = error ?? new VbusError(ErrorCode.Closed, "connection closed");
    for (const p of this.#sender?.close() ?? []) p.reject(closing);
    this.#sender = undefined;
    const mappings = [this.#guestMapping, this.#sessionMapping];
    this.#guestMapping = this.#sessionMapping = undefined;
    const waiters = this.#futexWaiters ?? [];
    this.#futexWaiters = undefined;
    this.#stopRing()
      .then(() => Promise.all(waiters.map((w) => w.close())))
      .then(() => mappings.forEach((m) => m?.unmap()));
    const closedErr = error ?? new VbusError(ErrorCode.Closed, "connection closed");
    for (const w of this.#pongWaiters.splice(0)) w.reject(closedErr);
    for (const w of this.#connectedWaiters.splice(0)) w.reject(closedErr);
    this.#requests.failAll(closedErr);
    for (const sub of this.#subs.values()) sub.end(error);
    this.#subs.clear();
    if (this.#buffer.bytes > 0) {
      this.#emit({
        type: "error",
        code: ErrorCode.Closed,
        message:
          `closed with ${this.#buffer.length} publishes (${this.#buffer.bytes} bytes) still buffered; they were not sent`,
      });
    }
    this.#buffer.clear();
    this.#emit({ type: "closed", error });
    for (const s of this.#statusStreams) s.end();
    this.#closedResolve(error);
  }

  // ---- status events ----------------------------------------------------------------------

  /** Call `listener` for every event of `type`; returns a function that removes it. */
  on<K extends StatusType>(type: K, listener: (e: StatusOf<K>) => void): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = new Set());
    set.add(listener as (e: StatusEvent) => void);
    return () => set!.delete(listener as (e: StatusEvent) => void);
  }

  /** Every status event from now on, as an async iterable (ends when the connection closes). */
  status(): AsyncIterable<StatusEvent> {
    const q = new QueuedIterator<StatusEvent>(1024);
    if (this.#state === "closed") q.end();
    else this.#statusStreams.add(q);
    return q;
  }

  #emit(e: StatusEvent) {
    for (const l of this.#listeners.get(e.type) ?? []) {
      try {
        l(e);
      } catch (err) {
        console.error(`vbus: status listener for "${e.type}" threw:`, err);
      }
    }
    for (const s of this.#statusStreams) s.push(e);
  }

  // ---- connection lifecycle ---------------------------------------------------------------

  async #connectLoop(): Promise<void> {
    const backoff = new Backoff({
      initialMs: this.#opts.reconnectDelay,
      maxMs: this.#opts.reconnectMaxDelay,
    });
    const signal = this.#abort.signal;
    while (this.#state !== "closed" && !signal.aborted) {
      try {
        const port = await this.#opener();
        if ((this.#state as State) === "closed" || signal.aborted) {
          port.close();
          return;
        }
        await this.#handshake(port);
        return;
      } catch (err) {
        this.#lastError = err as Error;
        if (err instanceof VbusError && err.code === ErrorCode.BadVersion) {
          this.#shutdown(err);
          return;
        }
        if (!this.#everConnected && isPermissionDenied(err as Error)) {
          this.#refused = true;
          return;
        }
        const attempt = backoff.attempts + 1;
        const max = this.#opts.maxReconnectAttempts;
        if (max >= 0 && attempt > max) {
          this.#shutdown(
            new VbusError(
              ErrorCode.Port,
              `gave up after ${max} attempts: ${(err as Error).message}`,
            ),
          );
          return;
        }
        const delayMs = backoff.next();
        this.#log.debug("connect attempt failed, retrying", {
          attempt,
          delayMs,
          error: (err as Error).message,
        });
        if (this.#everConnected) this.#emit({ type: "reconnecting", attempt, delay: delayMs });
        await sleep(delayMs, signal);
      }
    }
  }

  #handshake(port: Port): Promise<void> {
    return new Promise((resolve, reject) => {
      const decoder = new FrameDecoder(DEFAULT_LIMITS.maxFrameBytes * 2);
      let nonce = 0;
      let offerShm = this.#shmPlan.kind !== "none";
      let established = false;
      const timer = setTimeout(() => {
        port.close();
        fail(new VbusError(ErrorCode.Port, `no WELCOME from the broker on ${port.description}`));
      }, this.#opts.timeout);
      const onAbort = () => port.close();
      this.#abort.signal.addEventListener("abort", onAbort, { once: true });
      const fail = (err: Error) => {
        clearTimeout(timer);
        this.#abort.signal.removeEventListener("abort", onAbort);
        reject(err);
      };
      const onFrame = (frame: Frame) => {
        if (established) return this.#onFrame(frame);
        if (frame.op === Op.Err) {
          const e = decodeErrHead(frame.head);
          if (e.code === ErrorCode.BadVersion) {
            port.close();
            fail(new VbusError(e.code, e.message));
          }
          return;
        }
        if (frame.op !== Op.Welcome) return; // stale bytes from an earlier session
        const welcome = decodeWelcomeHead(frame.head);
        if (welcome.nonce !== nonce) return;
        if (offerShm) {
          const problem = this.#attachRing(port, welcome.shm as ShmAnswer | undefined);
          if (problem) {
            // The broker set up rings we cannot use: start the session again without them.
            this.#emit({ type: "dataPath", path: "stream", reason: problem });
            this.#log.info("shared-memory fast path not used", { reason: problem });
            offerShm = false;
            sendHello();
            return;
          }
        }
        established = true;
        clearTimeout(timer);
        this.#abort.signal.removeEventListener("abort", onAbort);
        decoder.setMaxFrameBytes(welcome.maxFrameBytes);
        this.#established(port, welcome);
        resolve();
      };
      port.start(
        (chunk) => {
          try {
            decoder.push(chunk, onFrame);
          } catch (err) {
            if (!established) {
              decoder.resync(); // garbage before our WELCOME: skip to the next frame start
              return;
            }
            this.#emit({
              type: "error",
              code: (err as VbusError).code ?? ErrorCode.BadFrame,
              message: (err as Error).message,
            });
            this.#hangUp(port);
          }
        },
        (err) => {
          if (!established) {
            fail(
              err ??
                new VbusError(
                  ErrorCode.Port,
                  `${port.description} closed before WELCOME (is the broker connected?)`,
                ),
            );
          } else this.#onPortClosed(port, err);
        },
      );
      const sendHello = () => {
        nonce = Math.floor(Math.random() * 0x7fffffff);
        const hello: HelloHead = {
          v: PROTOCOL_VERSION,
          features: CLIENT_FEATURES,
          client: `vbus-ts/0.1 ${runtimeName()}${this.#opts.name ? ` ${this.#opts.name}` : ""}`,
          nonce,
        };
        const offer = offerShm ? this.#shmOffer() : undefined;
        if (offer) hello.shm = offer as Record<string, unknown>;
        else offerShm = false;
        port.write(encodeFrame(Op.Hello, encodeValue(hello)));
      };
      sendHello();
    });
  }

  /** Map what the plan says, once per connection; on failure say why and use the stream. */
  async #prepareShm() {
    const plan = this.#shmPlan;
    if (plan.kind === "none") return;
    try {
      this.#ffi = await loadFfi();
      if (plan.kind === "guest") {
        let path = plan.path;
        let size: number;
        if (path) {
          size = statSync(path).size;
        } else {
          // The vbus one by its region signature, or VBUS_IVSHMEM: see find_ivshmem.ts.
          const dev = findVbusIvshmem({ map: this.#ffi.mapSharedSync });
          path = dev.path;
          size = dev.size;
        }
        this.#guestMapping = this.#ffi.mapSharedSync(path, size);
      }
      if (plan.kind === "host" && plan.futex && !this.#futexWaiters) {
        // Started once and kept across reconnects: a Worker takes a while to start.
        let waiters: FutexWaiter[] = [];
        try {
          waiters = [new this.#ffi.FutexWaiter(), new this.#ffi.FutexWaiter()];
          await Promise.all(waiters.map((w) => w.ready));
          this.#futexWaiters = waiters as [FutexWaiter, FutexWaiter];
        } catch (err) {
          await Promise.all(waiters.map((w) => w.close()));
          plan.futex = false;
          this.#log.warn("futex wake-ups unavailable, using doorbell frames", {
            reason: (err as Error).message,
          });
        }
      }
    } catch (err) {
      const reason = `shared memory unavailable: ${(err as Error).message}`;
      this.#shmPlan = { kind: "none", reason };
      this.#log.info("using the port stream only", { reason });
    }
  }

  #shmOffer(): ShmOffer | undefined {
    const plan = this.#shmPlan;
    if (plan.kind === "host") return plan.futex ? { want: true, futex: true } : { want: true };
    if (plan.kind === "guest" && this.#guestMapping) {
      const bytes = this.#guestMapping.bytes;
      return { size: bytes.length, nonce: writeGuestNonce(bytes) };
    }
    return undefined;
  }

  /** Attach to the region the broker prepared; returns why not, or undefined on success. */
  #attachRing(port: Port, answer: ShmAnswer | undefined): string | undefined {
    if (!answer) return "the broker did not answer the shared-memory offer";
    if (!answer.ok) {
      return `the broker declined shared memory: ${answer.reason ?? "no reason given"}`;
    }
    try {
      let bytes: Uint8Array;
      if (this.#shmPlan.kind === "host") {
        if (typeof answer.path !== "string" || typeof answer.size !== "number") {
          return "malformed shared-memory answer";
        }
        const old = this.#sessionMapping;
        this.#sessionMapping = this.#ffi!.mapSharedSync(answer.path, answer.size);
        if (old) this.#stopRing().then(() => old.unmap());
        bytes = this.#sessionMapping.bytes;
      } else {
        bytes = this.#guestMapping!.bytes;
      }
      const region = attachRegion(bytes, "guest");
      if (region.epoch !== answer.epoch) {
        return `region epoch ${region.epoch} is not the broker's ${answer.epoch}`;
      }
      this.#stopRing();
      this.#futexCounts = undefined;
      const futex = this.#shmPlan.kind === "host" && this.#futexWaiters && answer.futex === true
        ? this.#futexSleepers()
        : undefined;
      this.#ring = new RingChannel(region, {
        maxFrameBytes: DEFAULT_LIMITS.maxFrameBytes * 2,
        ringDoorbell: (ring, kind) => this.#writer?.urgent(Op.Doorbell, encodeValue([ring, kind])),
        futex,
        onFrame: (frame) => this.#onRingFrame(frame),
        onCorrupt: (err) => {
          this.#emit({
            type: "error",
            code: ErrorCode.BadFrame,
            message: `shared-memory ring: ${err.message}`,
          });
          this.#hangUp(port); // a fresh session re-initialises the region
        },
      });
      return undefined;
    } catch (err) {
      return `cannot attach the region: ${(err as Error).message}`;
    }
  }

  /** Sleep in FUTEX_WAIT (one Worker per sleeper, started in #prepareShm). */
  #futexSleepers(): FutexWakeups {
    const ffi = this.#ffi!;
    const [dataWaiter, spaceWaiter] = this.#futexWaiters!;
    const all = this.#futexCounts = {
      data: { sleeps: 0, timeouts: 0 },
      space: { sleeps: 0, timeouts: 0 },
    };
    const sleeper =
      (waiter: FutexWaiter, counts: { sleeps: number; timeouts: number }) =>
      async (word: Int32Array, index: number, expected: number, ms: number) => {
        counts.sleeps++;
        if (await waiter.wait(word, index, expected, ms) === "timed-out") counts.timeouts++;
      };
    return {
      wake: (word, index) => ffi.futexWake(word, index, 1),
      peerSleeps: false, // the broker serves every session from one event loop: it takes frames
      sleep: { data: sleeper(dataWaiter, all.data), space: sleeper(spaceWaiter, all.space) },
    };
  }

  /** Stop the ring channel; resolves when it no longer touches the mapping. */
  #stopRing(): Promise<void> {
    const ring = this.#ring;
    if (!ring) return Promise.resolve();
    // The sender's queue must not outlive its ring (it would spin on a stopped one). Whoever
    // ends a session takes the queue first (#endRingSession, #shutdown); this only guards.
    for (const p of this.#sender?.close() ?? []) {
      p.reject(new VbusError(ErrorCode.Closed, "the session ended"));
    }
    this.#sender = undefined;
    this.#ring = undefined;
    ring.region.detach();
    return ring.stop();
  }

  /**
   * The session on the ring ended: take what waits in the sender's queue and what the broker
   * had not read of the outbound ring (it outlives the broker in shared memory) into the
   * reconnect buffer, oldest first, before anything published from now on. Runs before the
   * next HELLO, after which the broker re-initialises the region.
   */
  #endRingSession(port: Port): RingSessionEnd | undefined {
    const sender = this.#sender, ring = this.#ring;
    this.#sender = undefined;
    if (!sender || !ring) return undefined;
    const waiting = sender.close();
    const salvaged = salvageOutboundRing(ring.region.bytes, ring.region.tx, ring.maxFrameOut);
    // A guest that hung up itself (no PONGs, a bad frame) did not end the broker's session: a
    // broker that is still alive reads that ring when our next HELLO arrives, before it
    // re-initialises the region. Re-sending would duplicate all of it; count it instead.
    const leftInRing = this.#shmPlan.kind === "guest" && this.#hungUp.has(port);
    if (!leftInRing) this.#buffer.addRecovered(salvaged.frames);
    if (salvaged.problem) {
      this.#emit({
        type: "error",
        code: ErrorCode.BadFrame,
        message:
          `the outbound ring could not be read to its end (${salvaged.problem}); ${salvaged.frames.length} publishes recovered before that`,
      });
    }
    let handedBack = 0;
    for (const p of waiting) {
      if (p.op !== Op.Pub) continue; // SUB/UNSUB/PING: the next session resubscribes by itself
      handedBack++;
      if (p.frame) {
        this.#buffer.requeue(p.frame);
        continue;
      }
      try {
        this.#buffer.add(encodeFrame(Op.Pub, p.head, encodeValue(p.value)), p.subject ?? "");
        p.resolve();
      } catch (err) {
        p.reject(err as Error);
      }
    }
    return {
      accepted: sender.pubsAccepted,
      handedBack,
      recovered: leftInRing ? 0 : salvaged.frames.length,
      leftInRing: leftInRing ? salvaged.frames.length : 0,
      damaged: salvaged.problem !== undefined,
    };
  }

  #onRingFrame(frame: Frame) {
    if (frame.op !== Op.Msg) {
      throw new VbusError(
        ErrorCode.BadFrame,
        `unexpected op ${frame.op} in the shared-memory ring`,
      );
    }
    this.#onMsg(frame, true);
  }

  #established(port: Port, welcome: WelcomeHead) {
    const reconnect = this.#everConnected;
    this.#port = port;
    this.#writer = new FrameWriter(port);
    this.#welcome = welcome;
    this.#features = new Set(welcome.features);
    this.#state = "connected";
    this.#everConnected = true;
    this.#pingsOut = 0;
    this.#ledger.sessionStarted();
    const writer = this.#writer;
    const sender = this.#sender = this.#ring
      ? new RingSender(this.#ring, {
        sendOversize: (frame) => {
          writer.raw(frame);
          this.#ledger.portPublished();
        },
      })
      : undefined;
    // Subscriptions first, so replies to buffered requests have somewhere to land.
    let resubscribed = 0;
    for (const sub of this.#subs.values()) {
      this.#sendSub(sub);
      resubscribed++;
    }
    if (this.#inboxSid) this.#sendInboxSub();
    // Then, in order, what the last session's ring still held and what was published since.
    const { frames, recovered } = this.#buffer.take();
    for (const frame of frames) {
      if (sender) sender.frame(frame);
      else {
        writer.raw(frame);
        this.#ledger.portPublished();
      }
    }
    this.#ledger.stats.resent += recovered;
    const flushed = frames.length - recovered;
    const maybeLost = this.#maybeLostSinceSession;
    this.#maybeLostSinceSession = 0;
    this.#startPings();
    if (this.#ring) {
      this.#ring.start();
      this.#emit({ type: "dataPath", path: "ring" });
    } else if (this.#shmPlan.kind === "none") {
      this.#emit({ type: "dataPath", path: "stream", reason: this.#shmPlan.reason });
    }
    const base = { session: welcome.session, identity: welcome.identity, port: port.description };
    this.#log.debug(reconnect ? "reconnected" : "connected", {
      ...base,
      path: this.#ring ? "ring" : "stream",
      ...(this.#ring ? {} : {
        why: this.#shmPlan.kind === "none"
          ? this.#shmPlan.reason
          : String((welcome.shm as { reason?: unknown } | undefined)?.reason ?? "not offered"),
      }),
      resubscribed,
      resent: recovered,
      maybeLost,
    });
    if (reconnect) {
      this.#emit({
        type: "reconnected",
        ...base,
        resubscribed,
        flushed,
        resent: recovered,
        maybeLost,
      });
    } else this.#emit({ type: "connected", ...base });
    for (const w of this.#connectedWaiters.splice(0)) w.resolve();
  }

  /**
   * Counters of the current session's shared-memory rings, or undefined on the port stream:
   * frames each way, doorbells rung, parks, full-ring waits, and (with `wake: "futex"`) how
   * often this client slept in FUTEX_WAIT waiting for data and for space, and how many of
   * those sleeps ran to their timeout (an idle peer, or a lost wake-up).
   *
   * @example
   * ```ts
   * const s = bus.ringStats;
   * if (s) console.log(`${s.framesOut} frames out, waited for space ${s.spaceWaits} times`);
   * ```
   */
  get ringStats(): (RingChannelStats & { futex?: FutexSleepCounts }) | undefined {
    const ring = this.#ring;
    if (!ring) return undefined;
    const f = this.#futexCounts;
    return {
      ...ring.stats,
      ...(f ? { futex: { data: { ...f.data }, space: { ...f.space } } } : {}),
    };
  }

  /** The data path of the current session: "ring" (shared memory) or "stream" (the port). */
  get dataPath(): "ring" | "stream" | undefined {
    if (this.#state !== "connected") return undefined;
    return this.#ring ? "ring" : "stream";
  }

  /**
   * Counters of this connection over all its sessions: `disconnects`, publishes `resent`
   * from the outbound ring of a session that ended, publishes that `maybeLost` on the way
   * when a session ended (see `delivery_ledger.ts` for what can and cannot be known), and
   * received messages whose payload was `undecodable`.
   *
   * @example
   * ```ts
   * const { resent, maybeLost } = bus.stats;
   * if (maybeLost > 0) console.warn(`${maybeLost} publishes may have been lost in broker crashes`);
   * ```
   */
  get stats(): ClientStats {
    return { ...this.#ledger.stats };
  }

  /** @internal A received message's payload could not be decoded (see `msg.ts`). */
  undecodable(msg: Msg<unknown>, err: VbusError): void {
    this.#ledger.stats.undecodable++;
    this.#emit({
      type: "error",
      code: ErrorCode.Codec,
      message: err.message,
      subject: msg.subject,
    });
  }

  #onPortClosed(port: Port, err?: Error) {
    if (port !== this.#port || this.#state === "closed") return;
    const reason = err?.message ?? "port closed by the peer";
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    // What the broker put in the inbound ring before it went is still there: deliver it.
    this.#ring?.drain();
    const ringEnd = this.#endRingSession(port);
    this.#stopRing();
    this.#writer = undefined;
    const unconfirmed = new VbusError(
      ErrorCode.Port,
      `disconnected before the broker confirmed: ${reason}`,
    );
    for (const w of this.#pongWaiters.splice(0)) w.reject(unconfirmed);
    if (this.#state === "draining") return this.#shutdown(undefined);
    const maybeLost = this.#ledger.sessionEnded(ringEnd);
    this.#maybeLostSinceSession += maybeLost;
    this.#log.debug("disconnected", { reason, maybeLost, resending: ringEnd?.recovered ?? 0 });
    this.#emit({
      type: "disconnected",
      reason,
      port: port.description,
      maybeLost,
      resending: ringEnd?.recovered ?? 0,
    });
    if (!this.#opts.reconnect) {
      this.#shutdown(new VbusError(ErrorCode.Port, `disconnected: ${reason}`));
      return;
    }
    this.#state = "reconnecting";
    this.#connectLoop().catch((e) => this.#shutdown(e as Error));
  }

  /** Ports this client closed itself (rather than the broker or its death closing them). */
  #hungUp = new WeakSet<Port>();

  /** Close the session's port from this side (the broker may still be alive). */
  #hangUp(port: Port) {
    this.#hungUp.add(port);
    port.close();
  }

  #startPings() {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => {
      if (this.#state !== "connected") return;
      if (this.#pingsOut >= MAX_PINGS_OUT) {
        this.#emit({
          type: "error",
          code: ErrorCode.Port,
          message: `no PONG to ${MAX_PINGS_OUT} PINGs; reconnecting`,
        });
        if (this.#port) this.#hangUp(this.#port);
        return;
      }
      this.#pingsOut++;
      this.#ping({ resolve: () => this.#pingsOut = 0, reject: () => {}, portMark: 0, ringMark: 0 });
    }, this.#opts.pingInterval);
    (this.#pingTimer as { unref?: () => void }).unref?.();
  }

  #onFrame(frame: Frame) {
    // MSGs the broker put in the ring before this frame are handled before it.
    this.#ring?.drain();
    switch (frame.op) {
      case Op.Doorbell: {
        const [ring, kind] = decodeDoorbellHead(frame.head);
        this.#ring?.onDoorbell(ring, kind);
        return;
      }
      case Op.Msg:
        return this.#onMsg(frame);
      case Op.Pong: {
        const w = this.#pongWaiters.shift();
        if (!w) return;
        this.#ledger.confirm(w.portMark, w.ringMark);
        w.resolve();
        return;
      }
      case Op.Ping:
        this.#writer?.frame(Op.Pong, EMPTY_ARRAY_HEAD);
        return;
      case Op.Err:
        return this.#onErr(frame);
      case Op.Welcome:
        return; // a duplicate: ignore
      default:
        return;
    }
  }

  #onMsg(frame: Frame, inRing = false) {
    const [sid, subject, reply, headers] =
      this.#heads.msg(frame.buf, frame.headStart, frame.headEnd) ??
        decodeMsgHead(frame.buf, frame.headStart, frame.headEnd);
    let payload = frame.payload;
    if (sid === this.#inboxSid) {
      if (inRing) payload = copyBytes(payload); // the reply is read after the slot is reused
      const token = subject.slice(subject.lastIndexOf(".") + 1);
      if (headers?.[STATUS_HEADER] === STATUS_NO_RESPONDERS) {
        const to = this.#requests.subjectOf(token);
        this.#requests.settle(
          token,
          new VbusError(ErrorCode.NoResponders, `no responders for "${to ?? subject}"`, to),
        );
        return;
      }
      const msg = new Msg(subject, reply ?? undefined, headers ?? undefined, payload, sid, this);
      this.#requests.settle(token, msg);
      return;
    }
    const sub = this.#subs.get(sid);
    if (!sub) return; // unsubscribed while in flight
    // From the ring: a callback reads the slot in place; a queued message needs its own copy.
    const inPlace = inRing && sub.hasCallback;
    if (inRing && !inPlace) payload = copyBytes(payload);
    const msg = new Msg(subject, reply ?? undefined, headers ?? undefined, payload, sid, this);
    sub.dispatch(msg);
    if (inPlace) msg.expire();
    if (sub.isClosed) this.#subs.delete(sid);
  }

  #onErr(frame: Frame) {
    const e = decodeErrHead(frame.head) as ReturnType<typeof decodeErrHead> & { dropped?: number };
    if (e.code === ErrorCode.SlowConsumer) {
      this.#emit({ type: "slowConsumer", where: "broker", dropped: e.dropped ?? 0 });
      return;
    }
    this.#emit({ type: "error", code: e.code, message: e.message, subject: e.subject });
    const err = new VbusError(e.code, e.message, e.subject);
    if (e.op === "SUB" && e.subject !== undefined) {
      // The broker refused a subscription: end it with the error instead of leaving it silent.
      for (const [sid, sub] of this.#subs) {
        if (sub.subject === e.subject) {
          this.#subs.delete(sid);
          sub.end(err);
        }
      }
    } else if (e.op === "PUB" && e.subject !== undefined) {
      this.#requests.failOneTo(e.subject, err);
    }
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function runtimeName(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  if (g.Deno) return `deno/${g.Deno.version.deno}`;
  if (g.Bun) return `bun/${g.Bun.version}`;
  return "js";
}

/**
 * Connect to the broker. In a guest this opens `/dev/virtio-ports/org.vbus.0` (or `port`,
 * or `VBUS_PORT`); on the host pass `server` (or set `VBUS_SERVER`) to use the broker's socket.
 * Resolves once the session is established; rejects after `timeout`.
 *
 * @example
 * ```ts
 * const bus = await connect({ name: "sensor" });
 * await bus.publish("sensors.temp", 21.5);
 * await bus.drain();
 * ```
 */
export async function connect(opts: ConnectOptions = {}): Promise<Bus> {
  const bus = new Bus(opts);
  try {
    await bus.start();
  } catch (err) {
    await bus.close();
    throw err;
  }
  return bus;
}

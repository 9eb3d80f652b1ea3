/**
 * The machinery behind a {@link Bus}: the connection's state and its sessions. It connects
 * (and reconnects: `session_setup.ts`), sets each session up (subscriptions first, then what
 * waited to be sent), routes the frames of an established session (MSG to the subscriptions,
 * PONG to the flushes, ERR to what it concerns, DOORBELL to the ring), and takes a session
 * apart when its port closes (what was not delivered is kept for the next one). `Bus` is the
 * public face and holds its connection privately; nothing here is reachable from the API.
 *
 * @example
 * ```ts
 * import { Connection } from "./connection.ts";
 * const conn = new Connection({ server: "/run/vbus/broker.sock" });
 * await conn.start(); // the first session, within `timeout`
 * await conn.out.publish("sensors.temp", 21.5);
 * conn.shutdown(undefined);
 * ```
 * @module
 */
import type { Port, PortOpener } from "../port/port.ts";
import { connectUnix } from "../port/socket_port.ts";
import { openDevice, portPath } from "../port/device_port.ts";
import type { Frame } from "../protocol/frame.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { decodeDoorbellHead, decodeErrHead } from "../protocol/heads.ts";
import {
  Feature,
  type HelloHead,
  Op,
  PROTOCOL_VERSION,
  type WelcomeHead,
} from "../protocol/ops.ts";
import type { ShmAnswer } from "../shm/negotiation.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { ClientShm, shmPlanFor } from "./client_shm.ts";
import { agentSocket } from "../agent/attach.ts";
import { connectHint } from "./hints.ts";
import { MAX_PINGS_OUT } from "./keepalive.ts";
import type { MsgContext } from "./msg.ts";
import { PayloadSlab } from "../util/payload_slab.ts";
import {
  CONNECT_DEFAULTS,
  type ConnectOptions,
  RENAMED_OPTIONS,
  resolveEndpoint,
} from "./options.ts";
import { Outbound } from "./outbound.ts";
import { RequestTable } from "./requests.ts";
import {
  agentOpener,
  connectLoop,
  type ConnectOutcome,
  handshake,
  type HandshakeHooks,
} from "./session_setup.ts";
import { StatusEmitter, type StatusEvent } from "./status.ts";
import { SubscriptionTable } from "./subscriptions.ts";

const EMPTY_ARRAY_HEAD = encodeValue([]);
const CLIENT_FEATURES = [Feature.Headers, Feature.NoResponders];

/** Longest wait for WELCOME after one HELLO before the connect loop tries again. */
export const HANDSHAKE_ATTEMPT_MS = 5000;

/** Where a connection is in its life. */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "draining" | "closed";

/** The connect options with their defaults applied. */
export type ResolvedOptions =
  & Required<
    Omit<
      ConnectOptions,
      "port" | "server" | "transport" | "broker" | "name" | "shm" | "wake" | "logger"
    >
  >
  & { name?: string };

/** A connection's state and sessions; see the module doc. */
export class Connection {
  readonly opts: ResolvedOptions;
  readonly log: Logger;
  readonly shm: ClientShm;
  /** The sending side: publishes, control frames, PINGs, the reconnect buffer. */
  readonly out: Outbound;
  readonly requests: RequestTable = new RequestTable();
  readonly subs: SubscriptionTable;
  readonly status: StatusEmitter;
  /** Resolves when the connection is closed for good: `undefined` if by `close()`, else the error. */
  readonly closed: Promise<Error | undefined>;
  state: ConnectionState = "connecting";
  /** The current (or last) session's port and WELCOME. */
  port?: Port;
  welcome?: WelcomeHead;
  #opener: PortOpener;
  /** Publishes that may have been lost since the last established session (for `reconnected`). */
  #maybeLostSinceSession = 0;
  #connectedWaiters: { resolve(): void; reject(err: Error): void }[] = [];
  #closedResolve!: (err: Error | undefined) => void;
  #abort = new AbortController();
  #everConnected = false;
  /** Ports this client closed itself (rather than the broker or its death closing them). */
  #hungUp = new WeakSet<Port>();
  #handshakeHooks: HandshakeHooks;

  constructor(opts: ConnectOptions) {
    for (const [old, now] of Object.entries(RENAMED_OPTIONS)) {
      if (old in opts) {
        throw new TypeError(
          `connect option "${old}" is now "${now}" (milliseconds, as in nats.js)`,
        );
      }
    }
    const { port: _p, server: _s, transport, broker, shm, wake, logger, ...rest } = opts;
    // Made per connection, not at import: a bad VBUS_LOG is reported by connect() itself.
    const log = this.log = logger ?? createLogger("vbus-client");
    if (wake !== undefined && wake !== "doorbell" && wake !== "futex") {
      throw new TypeError(`wake must be "doorbell" or "futex", not ${JSON.stringify(wake)}`);
    }
    this.opts = { ...CONNECT_DEFAULTS, ...stripUndefined(rest) };
    this.out = new Outbound(this.opts.reconnectBufferBytes, {
      sendable: () => this.state !== "closed" && this.state !== "draining",
      connected: () => this.state === "connected",
      welcome: () => this.welcome,
    });
    const futexOnlyOnHost =
      `wake: "futex" is only for host-local clients (server); a guest is woken by doorbell frames`;
    if (broker) {
      // In this process: a host client with no socket (rings on memory it maps itself).
      this.#opener = () => broker.localPort();
      this.shm = new ClientShm(shmPlanFor({ kind: "server" }, shm, wake), log);
    } else if (transport) {
      if (wake === "futex") throw new TypeError(futexOnlyOnHost);
      this.#opener = transport;
      this.shm = new ClientShm(shmPlanFor({ kind: "transport" }, shm, wake), log);
    } else {
      const endpoint = resolveEndpoint(opts);
      if (wake === "futex" && endpoint.kind !== "server") throw new TypeError(futexOnlyOnHost);
      // In a guest with `vbus agent` running (VBUS_AGENT, or its default socket), go through it.
      const agent = endpoint.kind === "device" && !opts.port ? agentSocket() : undefined;
      if (agent) {
        const shmAgent = new ClientShm(
          shm === false
            ? { kind: "none", reason: "disabled by the shm option" }
            : { kind: "agent" },
          log,
        );
        this.shm = shmAgent;
        this.#opener = agentOpener(agent, (a) => shmAgent.useAgentSlot(a));
      } else {
        this.#opener = endpoint.kind === "server"
          ? () => connectUnix(endpoint.path)
          : () => openDevice(portPath(endpoint.path));
        this.shm = new ClientShm(shmPlanFor(endpoint, shm, wake), log);
      }
    }
    this.status = new StatusEmitter((type, err) =>
      log.error(`status listener for "${type}" threw`, { error: describe(err) })
    );
    // Payload copies out of the ring share chunks, one connection's messages per chunk.
    const slab = new PayloadSlab();
    const msgContext: MsgContext = {
      respond: (reply, value, o) => {
        this.out.publish(reply, value, o).catch((err: Error) =>
          this.emit({
            type: "error",
            code: (err as VbusError).code ?? ErrorCode.Port,
            message: `a reply to "${reply}" was not sent: ${err.message}`,
            subject: reply,
          })
        );
      },
      undecodable: (msg, err) => {
        this.out.stats.undecodable++;
        this.emit({
          type: "error",
          code: ErrorCode.Codec,
          message: err.message,
          subject: msg.subject,
        });
      },
      copy: (source, start, end) => slab.copy(source, start, end),
    };
    this.subs = new SubscriptionTable(
      {
        control: (op, head) => this.out.control(op, head),
        connected: () => this.state === "connected",
        flush: () => this.flush(),
        emit: (e) => this.emit(e),
        callbackFailed: (subject, err) =>
          log.error("subscription callback failed", { subject, error: describe(err) }),
      },
      this.requests,
      msgContext,
    );
    this.#handshakeHooks = {
      hello: (nonce, offerShm) => this.#hello(nonce, offerShm),
      attach: (port, welcome) => this.#attach(port, welcome),
      established: (port, welcome) => this.#established(port, welcome),
      frame: (frame) => this.#onFrame(frame),
      closed: (port, err) => this.#onPortClosed(port, err),
      broken: (port, err) => {
        this.emit({
          type: "error",
          code: (err as VbusError).code ?? ErrorCode.BadFrame,
          message: err.message,
        });
        this.#hangUp(port);
      },
    };
    this.closed = new Promise((r) => this.#closedResolve = r);
  }

  /** First connection, bounded by `timeout`; fails at once on a permanent error. */
  async start(): Promise<void> {
    await this.shm.prepare();
    const timer = setTimeout(() => this.#abort.abort(), this.opts.timeout);
    let outcome: ConnectOutcome;
    try {
      outcome = await this.#connect(false);
    } finally {
      clearTimeout(timer);
    }
    if (outcome.kind === "connected") return;
    if (outcome.kind === "failed") {
      const err = outcome.error;
      const code = (err as VbusError).code === ErrorCode.BadVersion
        ? ErrorCode.BadVersion
        : ErrorCode.Port;
      throw new VbusError(code, `could not connect: ${err.message}${connectHint(err)}`);
    }
    const err = outcome.lastError ?? new VbusError(ErrorCode.Port, "not connected");
    throw new VbusError(
      ErrorCode.Port,
      `could not connect within ${this.opts.timeout} ms: ${err.message}${connectHint(err)}`,
    );
  }

  /** Close for good (`error`: why, when not by `close()`); everything waiting fails. */
  shutdown(error: Error | undefined): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.#abort.abort();
    const closedErr = error ?? new VbusError(ErrorCode.Closed, "connection closed");
    const unsent = this.out.shutdown(closedErr);
    this.port?.close();
    this.shm.shutdown();
    for (const w of this.#connectedWaiters.splice(0)) w.reject(closedErr);
    this.requests.failAll(closedErr);
    this.subs.endAll(error);
    if (unsent.bytes > 0) {
      this.emit({
        type: "error",
        code: ErrorCode.Closed,
        message:
          `closed with ${unsent.publishes} publishes (${unsent.bytes} bytes) still buffered; they were not sent`,
      });
    }
    this.emit({ type: "closed", error });
    this.status.end();
    this.#closedResolve(error);
  }

  #connect(everConnected: boolean): Promise<ConnectOutcome> {
    return connectLoop({
      opener: this.#opener,
      attempt: (port) =>
        handshake(port, {
          // One attempt waits at most HANDSHAKE_ATTEMPT_MS: a HELLO lost in transit (e.g. eaten
          // by a VM connection the broker was just closing) is sent again on a fresh port.
          timeout: Math.min(this.opts.timeout, HANDSHAKE_ATTEMPT_MS),
          signal: this.#abort.signal,
          offerShm: this.shm.unused === undefined,
          require: this.opts.noEcho ? [Feature.NoEcho] : [],
        }, this.#handshakeHooks),
      delay: this.opts.reconnectDelay,
      maxDelay: this.opts.reconnectMaxDelay,
      maxAttempts: this.opts.maxReconnectAttempts,
      signal: this.#abort.signal,
      everConnected,
      waitOnFirstConnect: this.opts.waitOnFirstConnect,
      closed: () => this.state === "closed",
      retrying: (attempt, delay, err) => {
        this.log.debug("connect attempt failed, retrying", { attempt, delay, error: err.message });
        if (everConnected) this.emit({ type: "reconnecting", attempt, delay });
      },
    });
  }

  #hello(nonce: number, offerShm: boolean): HelloHead {
    const hello: HelloHead = {
      v: PROTOCOL_VERSION,
      features: this.opts.noEcho ? [...CLIENT_FEATURES, Feature.NoEcho] : CLIENT_FEATURES,
      client: `vbus-ts/0.1 ${runtimeName()}${this.opts.name ? ` ${this.opts.name}` : ""}`,
      nonce,
    };
    const offer = offerShm ? this.shm.offer() : undefined;
    if (offer) hello.shm = offer as Record<string, unknown>;
    return hello;
  }

  /** Attach to the broker's region for this session; why not, or undefined. */
  #attach(port: Port, welcome: WelcomeHead): string | undefined {
    this.out.stopSender(new VbusError(ErrorCode.Closed, "the session ended"));
    const problem = this.shm.attach(welcome.shm as ShmAnswer | undefined, {
      ringDoorbell: (ring, kind) => this.out.writer?.urgent(Op.Doorbell, encodeValue([ring, kind])),
      onFrame: (frame) => this.#onRingFrame(frame),
      onCorrupt: (err) => {
        this.emit({
          type: "error",
          code: ErrorCode.BadFrame,
          message: `shared-memory ring: ${err.message}`,
        });
        this.#hangUp(port); // a fresh session re-initialises the region
      },
    });
    if (problem !== undefined) {
      // The broker set up rings we cannot use: the session starts again without them.
      this.emit({ type: "dataPath", path: "stream", reason: problem });
      this.log.info("shared-memory fast path not used", { reason: problem });
    }
    return problem;
  }

  #established(port: Port, welcome: WelcomeHead) {
    const reconnect = this.#everConnected;
    this.port = port;
    this.welcome = welcome;
    this.state = "connected";
    this.#everConnected = true;
    const ring = this.shm.ring;
    this.out.open(port, ring);
    // Subscriptions first, so replies to buffered requests have somewhere to land.
    const resubscribed = this.subs.resubscribe(welcome.inbox);
    // Then, in order, what the last session's ring still held and what was published since.
    const { flushed, recovered } = this.out.sendBuffered();
    const maybeLost = this.#maybeLostSinceSession;
    this.#maybeLostSinceSession = 0;
    this.out.pings.startKeepalive(this.opts.pingInterval, {
      active: () => this.state === "connected",
      ping: (w) => this.out.ping(w),
      dead: () => {
        this.emit({
          type: "error",
          code: ErrorCode.Port,
          message: `no PONG to ${MAX_PINGS_OUT} PINGs; reconnecting`,
        });
        if (this.port) this.#hangUp(this.port);
      },
    });
    const notRing = this.shm.unused;
    if (ring) {
      ring.start();
      this.emit({ type: "dataPath", path: "ring" });
    } else if (notRing !== undefined) {
      this.emit({ type: "dataPath", path: "stream", reason: notRing });
    }
    const base = { session: welcome.session, identity: welcome.identity, port: port.description };
    this.log.debug(reconnect ? "reconnected" : "connected", {
      ...base,
      path: ring ? "ring" : "stream",
      ...(ring ? {} : {
        why: notRing ??
          String((welcome.shm as { reason?: unknown } | undefined)?.reason ?? "not offered"),
      }),
      resubscribed,
      resent: recovered,
      maybeLost,
    });
    if (reconnect) {
      this.emit({
        type: "reconnected",
        ...base,
        resubscribed,
        flushed,
        resent: recovered,
        maybeLost,
      });
    } else this.emit({ type: "connected", ...base });
    for (const w of this.#connectedWaiters.splice(0)) w.resolve();
  }

  #onPortClosed(port: Port, err?: Error) {
    if (port !== this.port || this.state === "closed") return;
    const reason = err?.message ?? "port closed by the peer";
    const ring = this.shm.ring;
    // What the broker put in the inbound ring before it went is still there: deliver it.
    ring?.drain();
    // A guest that hung up itself (no PONGs, a bad frame) did not end the broker's session: a
    // broker that is still alive reads that ring when our next HELLO arrives.
    const leftInRing = this.shm.isGuest && this.#hungUp.has(port);
    const { ringEnd, problem } = this.out.endSession(ring, leftInRing, reason);
    if (problem) this.emit({ type: "error", code: ErrorCode.BadFrame, message: problem });
    this.shm.stopRing();
    if (this.state === "draining") return this.shutdown(undefined);
    const maybeLost = this.out.sessionEnded(ringEnd);
    this.#maybeLostSinceSession += maybeLost;
    this.log.debug("disconnected", { reason, maybeLost, resending: ringEnd?.recovered ?? 0 });
    this.emit({
      type: "disconnected",
      reason,
      port: port.description,
      maybeLost,
      resending: ringEnd?.recovered ?? 0,
    });
    if (!this.opts.reconnect) {
      this.shutdown(new VbusError(ErrorCode.Port, `disconnected: ${reason}`));
      return;
    }
    this.state = "reconnecting";
    this.#connect(true).then((outcome) => {
      if (outcome.kind !== "failed") return;
      const err = outcome.error;
      const code = (err as VbusError).code ?? ErrorCode.Port;
      this.shutdown(new VbusError(code, `could not reconnect: ${err.message}${connectHint(err)}`));
    }, (e) => this.shutdown(e as Error));
  }

  /** Report a status event. */
  emit(e: StatusEvent): void {
    this.status.emit(e);
  }

  /** Resolves when the next session is established; rejects if the connection closes first. */
  waitConnected(): Promise<void> {
    return new Promise((resolve, reject) => this.#connectedWaiters.push({ resolve, reject }));
  }

  /**
   * Resolves when the broker has processed everything sent before it (a PING/PONG round
   * trip); waits for a session first. Rejects if the connection drops before the PONG.
   */
  async flush(): Promise<void> {
    if (this.state === "closed") throw new VbusError(ErrorCode.Closed, "connection is closed");
    if (this.state !== "connected" && this.state !== "draining") await this.waitConnected();
    return new Promise((resolve, reject) =>
      this.out.ping({ resolve, reject, portMark: 0, ringMark: 0 })
    );
  }

  /** Close the session's port from this side (the broker may still be alive). */
  #hangUp(port: Port) {
    this.#hungUp.add(port);
    port.close();
  }

  #onFrame(frame: Frame) {
    // MSGs the broker put in the ring before this frame are handled before it.
    this.shm.ring?.drain();
    switch (frame.op) {
      case Op.Doorbell: {
        const [ring, kind] = decodeDoorbellHead(frame.head);
        this.shm.ring?.onDoorbell(ring, kind);
        return;
      }
      case Op.Msg:
        return this.subs.deliver(frame, false);
      case Op.Pong:
        return this.out.pong();
      case Op.Ping:
        this.out.writer?.frame(Op.Pong, EMPTY_ARRAY_HEAD);
        return;
      case Op.Err:
        return this.#onErr(frame);
      default:
        return; // a duplicate WELCOME, or an op this client does not use
    }
  }

  #onRingFrame(frame: Frame) {
    if (frame.op !== Op.Msg) {
      throw new VbusError(
        ErrorCode.BadFrame,
        `unexpected op ${frame.op} in the shared-memory ring`,
      );
    }
    this.subs.deliver(frame, true);
  }

  #onErr(frame: Frame) {
    const e = decodeErrHead(frame.head) as ReturnType<typeof decodeErrHead> & { dropped?: number };
    if (e.code === ErrorCode.SlowConsumer) {
      this.emit({ type: "slowConsumer", where: "broker", dropped: e.dropped ?? 0 });
      return;
    }
    this.emit({ type: "error", code: e.code, message: e.message, subject: e.subject });
    const err = new VbusError(e.code, e.message, e.subject);
    if (e.op === "SUB" && e.subject !== undefined) {
      // The broker refused a subscription: end it with the error instead of leaving it silent.
      this.subs.refused(e.subject, err);
    } else if (e.op === "PUB" && e.subject !== undefined) {
      this.requests.failOneTo(e.subject, err);
    }
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function describe(err: unknown): string {
  return err instanceof Error ? (err.stack ?? err.message) : String(err);
}

function runtimeName(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  if (g.Deno) return `deno/${g.Deno.version.deno}`;
  if (g.Bun) return `bun/${g.Bun.version}`;
  return "js";
}

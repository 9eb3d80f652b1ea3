/**
 * One peer's session inside the broker: a VM arriving on its port, or a host-local client. It
 * decodes frames from an untrusted stream, enforces limits and permissions, hands PUBs to the
 * router, and writes MSGs back. A misbehaving session gets ERR frames and, for faults that
 * break the stream or persist, is closed; other sessions never notice.
 *
 * @example
 * ```ts
 * // Sessions are made by the Broker for every connection; see broker.ts.
 * ```
 * @module
 */
import { randomBytes } from "node:crypto";
import type { Port } from "../port/port.ts";
import { FrameDecoder, type Frame } from "../protocol/frame.ts";
import { FrameWriter } from "../protocol/frame_writer.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import {
  decodeHelloHead,
  decodePubHead,
  decodeSubHead,
  decodeUnsubHead,
} from "../protocol/heads.ts";
import {
  type ErrHead,
  Feature,
  type Headers,
  Op,
  opName,
  PROTOCOL_VERSION,
  STATUS_HEADER,
  STATUS_NO_RESPONDERS,
  type WelcomeHead,
} from "../protocol/ops.ts";
import type { Limits } from "../protocol/limits.ts";
import { utf8Length, validatePattern, validateSubject } from "../subject/subject.ts";
import type { DeliveryTarget, RouteEntry, Router } from "./router.ts";
import { PermissionGuard } from "./permissions.ts";
import type { Permissions } from "./config.ts";
import type { EndpointStats } from "./stats.ts";
import type { Logger } from "../util/log.ts";

/** Features this broker offers; a session uses those its client also announced. */
export const BROKER_FEATURES: readonly string[] = [Feature.Headers, Feature.NoResponders];
/** Subjects under this prefix belong to the broker itself. */
export const SYSTEM_PREFIX = "$VBUS.";
/** Unanswered broker PINGs after which a session is considered dead. */
export const MAX_PINGS_OUT = 3;
/** Seconds of continuous flooding after which a session is closed. */
export const FLOOD_CLOSE_SECONDS = 10;

const EMPTY_ARRAY_HEAD = encodeValue([]);
const NO_RESPONDERS_HEADERS: Headers = { [STATUS_HEADER]: STATUS_NO_RESPONDERS };
const EMPTY = new Uint8Array(0);

/** What a session needs from the broker that owns it. */
export interface SessionContext {
  router: Router;
  limits: Limits;
  log: Logger;
  pingIntervalMs: number;
  /** Session ids are `${identity}#${this}`: unique across broker restarts. */
  nextSessionNumber(): string;
}

/** How a session is set up: who it is (from the port, never from HELLO) and what it may do. */
export interface SessionOptions {
  identity: string;
  /** True for sessions from the host socket: they may use `$VBUS.` subjects. */
  host: boolean;
  permissions?: Permissions;
  stats: EndpointStats;
  /** Called once when the session ends, with the reason. */
  onClose(session: Session, reason: string): void;
}

/** A broker-side session. */
export class Session implements DeliveryTarget {
  readonly identity: string;
  id = "";
  #ctx: SessionContext;
  #opts: SessionOptions;
  #port: Port;
  #writer: FrameWriter;
  #decoder: FrameDecoder;
  #state: "hello" | "open" | "closed" = "hello";
  #subs = new Map<number, RouteEntry>();
  #guard!: PermissionGuard;
  #features = new Set<string>();
  #errors = 0;
  #pingsOut = 0;
  #pingTimer?: ReturnType<typeof setInterval>;
  // Flood guard: a token bucket refilled at maxMsgsPerSecond.
  #tokens: number;
  #refilledAt = Date.now();
  #floodSince = 0;
  #floodDropped = 0;
  #floodReportedAt = 0;
  #slowDropped = 0;
  #slowReportedAt = 0;

  constructor(port: Port, ctx: SessionContext, opts: SessionOptions) {
    this.#port = port;
    this.#ctx = ctx;
    this.#opts = opts;
    this.identity = opts.identity;
    this.#writer = new FrameWriter(port);
    this.#decoder = new FrameDecoder(ctx.limits.maxFrameBytes);
    this.#tokens = ctx.limits.maxMsgsPerSecond;
  }

  /** The port this session runs on. */
  get port(): Port {
    return this.#port;
  }

  /** Is the handshake done and the session not closed? */
  get open(): boolean {
    return this.#state === "open";
  }

  /** Start reading the port. */
  start(): void {
    this.#port.start(
      (chunk) => this.#onData(chunk),
      (err) => this.close(err ? `port error: ${err.message}` : "port closed"),
    );
  }

  /** End the session: drop its subscriptions and close the port. Idempotent. */
  close(reason: string): void {
    if (this.#state === "closed") return;
    const wasOpen = this.#state === "open";
    this.#state = "closed";
    this.#dropSubscriptions();
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#writer.flush();
    this.#port.close();
    if (wasOpen) this.#opts.stats.connected = false;
    this.#opts.onClose(this, reason);
  }

  /** Send an ERR; `fatal` closes the session after it. */
  sendError(code: string, message: string, subject?: string, fatal = false, op?: string): void {
    const stats = this.#opts.stats;
    stats.errors[code] = (stats.errors[code] ?? 0) + 1;
    const head: ErrHead = { code, message };
    if (subject !== undefined) head.subject = subject;
    if (fatal) head.fatal = true;
    if (op !== undefined) head.op = op;
    this.#writer.frame(Op.Err, encodeValue(head));
    this.#ctx.log.warn("session error", { session: this.id || this.identity, code, message });
    if (fatal) {
      stats.closed[code] = (stats.closed[code] ?? 0) + 1;
      this.close(`${code}: ${message}`);
    } else if (++this.#errors > this.#ctx.limits.maxErrors) {
      stats.closed["TOO_MANY_ERRORS"] = (stats.closed["TOO_MANY_ERRORS"] ?? 0) + 1;
      this.#writer.frame(
        Op.Err,
        encodeValue({ code: ErrorCode.SessionClosed, message: "too many errors", fatal: true }),
      );
      this.close("too many errors");
    }
  }

  /** Router callback: write one MSG to this session, or drop it if the session is too far behind. */
  deliver(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
  ): boolean {
    if (entry.max > 0 && entry.delivered >= entry.max && this.#subs.delete(entry.sid)) {
      this.#opts.stats.subscriptions--; // the router removed it at its max
    }
    if (this.#state !== "open") return false;
    const stats = this.#opts.stats;
    if (this.#port.pending + this.#writer.batched > this.#ctx.limits.maxPendingBytes) {
      stats.dropped++;
      this.#slowDropped++;
      this.#reportSlow();
      return false;
    }
    if (reply !== null) this.#guard.grantReply(reply);
    const head = encodeValue([entry.sid, subject, reply, headers]);
    this.#writer.frame(Op.Msg, head, payload);
    stats.msgsOut++;
    stats.bytesOut += payload.length;
    return true;
  }

  #onData(chunk: Uint8Array) {
    if (this.#state === "closed") return;
    try {
      this.#decoder.push(chunk, (frame) => this.#onFrame(frame));
    } catch (err) {
      if ((this.#state as string) === "closed") return;
      const e = err instanceof VbusError ? err : new VbusError(ErrorCode.BadFrame, String(err));
      // A framing error means the stream position is lost: nothing after it can be trusted.
      this.sendError(e.code, e.message, undefined, true);
    }
  }

  #onFrame(frame: Frame) {
    if (this.#state === "closed") return;
    try {
      switch (frame.op) {
        case Op.Hello:
          return this.#onHello(frame);
        case Op.Pong:
          this.#pingsOut = 0;
          return;
      }
      if (this.#state !== "open") {
        throw new VbusError(ErrorCode.BadState, `${opName(frame.op)} before HELLO`);
      }
      switch (frame.op) {
        case Op.Pub:
          return this.#onPub(frame);
        case Op.Sub:
          return this.#onSub(frame);
        case Op.Unsub:
          return this.#onUnsub(frame);
        case Op.Ping:
          this.#writer.frame(Op.Pong, EMPTY_ARRAY_HEAD);
          return;
        case Op.Err:
          this.#ctx.log.warn("client reported an error", { session: this.id });
          return;
        default:
          throw new VbusError(ErrorCode.BadState, `${opName(frame.op)} is not sent by clients`);
      }
    } catch (err) {
      if (!(err instanceof VbusError)) throw err;
      this.sendError(err.code, err.message, err.subject, err.code === ErrorCode.BadVersion, opName(frame.op));
    }
  }

  #onHello(frame: Frame) {
    const hello = decodeHelloHead(frame.head);
    if (hello.v !== PROTOCOL_VERSION) {
      throw new VbusError(
        ErrorCode.BadVersion,
        `protocol version ${hello.v} is not supported (this broker speaks ${PROTOCOL_VERSION})`,
      );
    }
    if (this.#state === "open") {
      // A second HELLO: the guest process restarted on the same port. Start afresh.
      this.#dropSubscriptions();
      this.#ctx.log.info("session restarted by a new HELLO", { session: this.id });
    }
    const { identity } = this;
    this.id = `${identity}#${this.#ctx.nextSessionNumber()}`;
    const inbox = `_INBOX.${identity}.${randomBytes(8).toString("hex")}`;
    this.#guard = new PermissionGuard(this.#opts.permissions, inbox);
    this.#features = new Set(hello.features.filter((f) => BROKER_FEATURES.includes(f)));
    this.#errors = 0;
    this.#state = "open";
    const stats = this.#opts.stats;
    stats.connected = true;
    stats.sessions++;
    stats.path = "stream";
    const limits = this.#ctx.limits;
    const welcome: WelcomeHead = {
      v: PROTOCOL_VERSION,
      features: [...this.#features],
      nonce: hello.nonce,
      identity,
      session: this.id,
      inbox,
      maxFrameBytes: limits.maxFrameBytes,
      maxSubjectBytes: limits.maxSubjectBytes,
      maxSubscriptions: limits.maxSubscriptions,
      maxHeaderBytes: limits.maxHeaderBytes,
      pingIntervalMs: this.#ctx.pingIntervalMs,
    };
    this.#writer.frame(Op.Welcome, encodeValue(welcome));
    this.#startPings();
    this.#ctx.log.info("session open", {
      session: this.id,
      client: hello.client ?? "?",
      features: [...this.#features].join(","),
    });
  }

  #onPub(frame: Frame) {
    const [subject, reply, headers] = decodePubHead(frame.head);
    const limits = this.#ctx.limits;
    const stats = this.#opts.stats;
    if (!this.#takeToken()) return;
    const problem = validateSubject(subject, limits.maxSubjectBytes);
    if (problem) throw new VbusError(ErrorCode.BadSubject, `invalid subject: ${problem}`, subject);
    if (reply !== null) {
      const replyProblem = validateSubject(reply, limits.maxSubjectBytes);
      if (replyProblem) throw new VbusError(ErrorCode.BadSubject, `invalid reply subject: ${replyProblem}`, reply);
    }
    if (headers !== null) {
      if (!this.#features.has(Feature.Headers)) {
        throw new VbusError(ErrorCode.BadHeaders, "headers were not negotiated", subject);
      }
      let size = 0;
      for (const k in headers) size += utf8Length(k) + utf8Length(headers[k]) + 2;
      if (size > limits.maxHeaderBytes) {
        throw new VbusError(ErrorCode.BadHeaders, `headers exceed ${limits.maxHeaderBytes} bytes`, subject);
      }
    }
    if (
      (subject.startsWith(SYSTEM_PREFIX) && !this.#opts.host) || !this.#guard.canPublish(subject)
    ) {
      stats.denied++;
      throw new VbusError(ErrorCode.PermissionDenied, `publish to "${subject}" is not permitted`, subject);
    }
    stats.msgsIn++;
    stats.bytesIn += frame.payload.length;
    const delivered = this.#ctx.router.publish(subject, reply, headers, frame.payload);
    if (delivered === 0 && reply !== null && this.#features.has(Feature.NoResponders)) {
      this.#ctx.router.publish(reply, null, NO_RESPONDERS_HEADERS, EMPTY);
    }
  }

  #onSub(frame: Frame) {
    const [sid, subject, queue] = decodeSubHead(frame.head);
    const limits = this.#ctx.limits;
    const problem = validatePattern(subject, limits.maxSubjectBytes);
    if (problem) throw new VbusError(ErrorCode.BadSubject, `invalid subject: ${problem}`, subject);
    if (queue !== null) {
      const qProblem = validateSubject(queue, limits.maxSubjectBytes);
      if (qProblem) throw new VbusError(ErrorCode.BadSubject, `invalid queue group: ${qProblem}`, subject);
    }
    if (this.#subs.has(sid)) {
      throw new VbusError(ErrorCode.BadState, `subscription id ${sid} is already in use`, subject);
    }
    if (this.#subs.size >= limits.maxSubscriptions) {
      throw new VbusError(
        ErrorCode.TooManySubscriptions,
        `at most ${limits.maxSubscriptions} subscriptions per session`,
        subject,
      );
    }
    if (subject.startsWith(SYSTEM_PREFIX) || !this.#guard.canSubscribe(subject)) {
      this.#opts.stats.denied++;
      throw new VbusError(ErrorCode.PermissionDenied, `subscribe to "${subject}" is not permitted`, subject);
    }
    const entry: RouteEntry = { sid, subject, queue, max: 0, delivered: 0, target: this };
    this.#subs.set(sid, entry);
    this.#ctx.router.add(entry);
    this.#opts.stats.subscriptions++;
  }

  #onUnsub(frame: Frame) {
    const [sid, max] = decodeUnsubHead(frame.head);
    const entry = this.#subs.get(sid);
    if (!entry) return; // already gone (e.g. auto-unsubscribed): not an error
    if (max > 0 && entry.delivered < max) {
      entry.max = max;
      return;
    }
    this.#subs.delete(sid);
    if (this.#ctx.router.remove(entry)) this.#opts.stats.subscriptions--;
  }

  #dropSubscriptions() {
    for (const entry of this.#subs.values()) {
      if (this.#ctx.router.remove(entry)) this.#opts.stats.subscriptions--;
    }
    this.#subs.clear();
  }

  #takeToken(): boolean {
    const limit = this.#ctx.limits.maxMsgsPerSecond;
    if (this.#tokens >= 1) {
      this.#tokens--;
      return true;
    }
    const now = Date.now();
    const refill = ((now - this.#refilledAt) / 1000) * limit;
    this.#refilledAt = now;
    this.#tokens = Math.min(limit, this.#tokens + refill);
    if (this.#tokens >= 1) {
      this.#tokens--;
      this.#floodSince = 0;
      return true;
    }
    this.#floodSince ||= now;
    this.#floodDropped++;
    this.#opts.stats.dropped++;
    if (now - this.#floodReportedAt >= 1000) {
      this.#floodReportedAt = now;
      const n = this.#floodDropped;
      this.#floodDropped = 0;
      const fatal = now - this.#floodSince >= FLOOD_CLOSE_SECONDS * 1000;
      this.sendError(
        ErrorCode.Flood,
        `publishing faster than ${limit} msgs/s: ${n} message(s) rejected` +
          (fatal ? `; flooding for ${FLOOD_CLOSE_SECONDS} s, closing` : ""),
        undefined,
        fatal,
      );
    }
    return false;
  }

  #reportSlow() {
    const now = Date.now();
    if (now - this.#slowReportedAt < 1000) return;
    this.#slowReportedAt = now;
    const n = this.#slowDropped;
    this.#slowDropped = 0;
    const stats = this.#opts.stats;
    stats.errors[ErrorCode.SlowConsumer] = (stats.errors[ErrorCode.SlowConsumer] ?? 0) + 1;
    // Queued behind the backlog, so the client learns of it in order.
    this.#writer.frame(
      Op.Err,
      encodeValue({
        code: ErrorCode.SlowConsumer,
        message: `${n} message(s) dropped: more than ${this.#ctx.limits.maxPendingBytes} bytes were queued for this session`,
        dropped: n,
      }),
    );
    this.#ctx.log.warn("slow consumer", { session: this.id, dropped: n });
  }

  #startPings() {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingsOut = 0;
    this.#pingTimer = setInterval(() => {
      if (this.#state !== "open") return;
      if (++this.#pingsOut > MAX_PINGS_OUT) {
        const stats = this.#opts.stats;
        stats.closed["STALE"] = (stats.closed["STALE"] ?? 0) + 1;
        this.close(`no PONG to ${MAX_PINGS_OUT} PINGs`);
        return;
      }
      this.#writer.frame(Op.Ping, EMPTY_ARRAY_HEAD);
    }, this.#ctx.pingIntervalMs);
    (this.#pingTimer as { unref?: () => void }).unref?.();
  }
}

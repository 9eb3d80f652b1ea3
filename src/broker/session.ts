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
import { encodeFrame, FrameDecoder, type Frame, FrameHeader } from "../protocol/frame.ts";
import { FrameWriter } from "../protocol/frame_writer.ts";
import { HeadReader } from "../protocol/fast_heads.ts";
import { encodeValue, msgHeadMaxLength, PUB_HEAD_MARK, writeMsgHead } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import {
  decodeDoorbellHead,
  headersSize,
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
import { validatePattern, validateSubject } from "../subject/subject.ts";
import type { DeliveryTarget, RouteEntry, Router } from "./router.ts";
import { PermissionGuard } from "./permissions.ts";
import type { Permissions } from "./config.ts";
import type { EndpointStats } from "./stats.ts";
import type { Logger } from "../util/log.ts";
import { initRegion } from "../ring/region.ts";
import { RingChannel } from "../shm/ring_channel.ts";
import { Fifo } from "../util/fifo.ts";
import { yieldToEventLoop } from "../util/event_loop.ts";
import { hasGuestNonce, type ShmAnswer, type ShmOffer } from "../shm/negotiation.ts";

/** Features this broker offers; a session uses those its client also announced. */
export const BROKER_FEATURES: readonly string[] = [Feature.Headers, Feature.NoResponders];
/** Subjects under this prefix belong to the broker itself. */
export const SYSTEM_PREFIX = "$VBUS.";
/** Unanswered broker PINGs after which a session is considered dead. */
export const MAX_PINGS_OUT = 3;
/** Window over which `maxErrors` protocol errors close a session. */
export const ERROR_WINDOW_MS = 60_000;
/** Seconds of continuous flooding after which a session is closed. */
export const FLOOD_CLOSE_SECONDS = 10;

/** Backlog frames written to a subscriber's ring between two yields to the event loop. */
const FLUSH_BATCH = 1024;
const EMPTY_ARRAY_HEAD = encodeValue([]);
const NO_RESPONDERS_HEADERS: Headers = { [STATUS_HEADER]: STATUS_NO_RESPONDERS };
const EMPTY = new Uint8Array(0);

/** What a session needs from the broker that owns it. */
export interface SessionContext {
  router: Router;
  limits: Limits;
  log: Logger;
  pingIntervalMs: number;
  /** The session whose PUB is being routed right now (for the "block" policy). */
  publishing?: Session;
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
  /**
   * Shared memory for the fast path: a VM's mapped `shm` file (`perSession` false), a fresh
   * file made for this host client (`perSession` true), or why there is none.
   */
  shm?: SessionShm;
  /** Called once when the session ends, with the reason. */
  onClose(session: Session, reason: string): void;
}

/** Shared memory offered to a session (see {@link SessionOptions.shm}). */
export type SessionShm =
  | {
    bytes: Uint8Array;
    path: string;
    perSession: boolean;
    /** FUTEX_WAKE, for host-local clients that ask to be woken that way. */
    futexWake?: (word: Int32Array, index: number) => void;
  }
  | { reason: string };

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
  #errorsSince = 0;
  #reportTimer?: ReturnType<typeof setTimeout>;
  #framesBeforeHello = 0;
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
  #ring?: RingChannel;
  #blockSubs = 0; // live subscriptions with the "block" policy
  #heldPublishers = new Set<Session>(); // publishers this session holds
  #holders = new Set<Session>(); // subscribers holding this session
  // Private copy of a PUB head read from a guest's ring (heads are at most 64 KiB).
  #headCopy = new Uint8Array(64 * 1024);
  #heads = new HeadReader();
  // MSG frames waiting for room in this session's inbound ring, oldest first.
  #backlog = new Fifo<Uint8Array>();
  #backlogBytes = 0;
  #backlogFlushing = false;

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
    this.#stopRing();
    if (this.#reportTimer) clearTimeout(this.#reportTimer);
    for (const h of [...this.#holders]) h.#heldPublishers.delete(this);
    this.#holders.clear();
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
    } else if (this.#countError() > this.#ctx.limits.maxErrors) {
      stats.closed["TOO_MANY_ERRORS"] = (stats.closed["TOO_MANY_ERRORS"] ?? 0) + 1;
      this.#writer.frame(
        Op.Err,
        encodeValue({ code: ErrorCode.SessionClosed, message: "too many errors", fatal: true }),
      );
      this.close("too many errors");
    }
  }

  /** Protocol errors in the current minute: a long-lived session is judged on recent behaviour. */
  #countError(): number {
    const now = Date.now();
    if (now - this.#errorsSince > ERROR_WINDOW_MS) {
      this.#errorsSince = now;
      this.#errors = 0;
    }
    return ++this.#errors;
  }

  /** Router callback: write one MSG, or drop it if the session is too far behind. */
  deliver(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile = false,
    pubTail?: Uint8Array,
  ): boolean {
    if (entry.max > 0 && entry.delivered >= entry.max && this.#subs.delete(entry.sid)) {
      this.#opts.stats.subscriptions--; // the router removed it at its max
      if (entry.block) this.#blockSubs--;
    }
    if (this.#state !== "open") return false;
    // The broker's own subjects (e.g. $VBUS.STATS requests) never reach a VM, even via `>`.
    if (!this.#opts.host && subject.startsWith(SYSTEM_PREFIX)) return false;
    const stats = this.#opts.stats;
    if (reply !== null) this.#guard.grantReply(reply);
    const ring = this.#ring;
    if (ring && pubTail && this.#backlog.length === 0 && ring.tryWriteMsg(entry.sid, pubTail, payload)) {
      stats.msgsOut++;
      stats.ringMsgsOut++;
      stats.bytesOut += payload.length;
      return true;
    }
    const head = pubTail ? msgHead(entry.sid, pubTail) : encodeValue([entry.sid, subject, reply, headers]);
    if (ring) {
      const size = FrameHeader.LENGTH + head.length + payload.length;
      if (size > ring.maxFrameOut) {
        // Only a publisher on the port stream can send this much. Sent on the port, it could
        // be overtaken by ring records written after it, so it is not delivered: counted,
        // and both ends are told.
        stats.dropped++;
        const why = `a ${size}-byte message does not fit this session's shared-memory ring (largest ${ring.maxFrameOut})`;
        this.sendError(ErrorCode.FrameTooLarge, `${why}; not delivered`, subject);
        const publisher = this.#ctx.publishing;
        if (publisher && publisher !== this) {
          publisher.sendError(ErrorCode.FrameTooLarge, `not delivered to session ${this.id}: ${why}`, subject);
        }
        return false;
      }
      if (this.#backlog.length === 0 && ring.tryWriteFrame(Op.Msg, head, payload)) {
        stats.msgsOut++;
        stats.ringMsgsOut++;
        stats.bytesOut += payload.length;
        return true;
      }
      return this.#toBacklog(encodeFrame(Op.Msg, head, payload), payload.length);
    }
    if (this.#port.pending + this.#writer.batched > this.#ctx.limits.maxPendingBytes) {
      if (this.#blockSubs > 0) {
        // "block": keep the message and hold its publisher until this port drains.
        this.#writer.frame(Op.Msg, head, payload, 0, volatile);
        stats.msgsOut++;
        stats.bytesOut += payload.length;
        this.#holdPublisher();
        this.#port.drained().then(() => this.#releasePublishers());
        return true;
      }
      stats.dropped++;
      this.#slowDropped++;
      this.#reportSlow();
      return false;
    }
    // A payload read in place from a guest's ring is only valid now: the writer must copy it.
    this.#writer.frame(Op.Msg, head, payload, 0, volatile);
    stats.msgsOut++;
    stats.bytesOut += payload.length;
    return true;
  }

  /** "block" policy: stop reading from the session publishing now until this one catches up. */
  #holdPublisher() {
    const publisher = this.#ctx.publishing;
    if (!publisher || publisher === this || this.#heldPublishers.has(publisher)) return;
    this.#heldPublishers.add(publisher);
    publisher.holdFor(this);
  }

  #releasePublishers() {
    if (this.#heldPublishers.size === 0) return;
    const held = [...this.#heldPublishers];
    this.#heldPublishers.clear();
    for (const p of held) p.releaseFor(this);
  }

  /** Stop reading this session's input while `subscriber` is behind (its "block" policy). */
  holdFor(subscriber: Session): void {
    if (this.#holders.size === 0) {
      this.#ring?.pause();
      this.#port.pause();
      this.#opts.stats.blocked++;
    }
    this.#holders.add(subscriber);
  }

  /** `subscriber` caught up: read this session's input again once nobody holds it. */
  releaseFor(subscriber: Session): void {
    if (!this.#holders.delete(subscriber) || this.#holders.size > 0) return;
    this.#ring?.resume();
    this.#port.resume();
  }

  /** Queue a MSG for a full ring; beyond the bound drop the oldest, counted and reported. */
  #toBacklog(frame: Uint8Array, payloadLength: number): boolean {
    const stats = this.#opts.stats;
    const max = this.#ctx.limits.maxPendingBytes;
    this.#backlog.push(frame);
    this.#backlogBytes += frame.length;
    stats.msgsOut++;
    stats.bytesOut += payloadLength;
    if (this.#blockSubs > 0) {
      if (this.#backlogBytes > max) this.#holdPublisher();
    } else while (this.#backlogBytes > max && this.#backlog.length > 1) {
      const dropped = this.#backlog.shift()!;
      this.#backlogBytes -= dropped.length;
      stats.dropped++;
      stats.msgsOut--;
      this.#slowDropped++;
    }
    if (this.#slowDropped > 0) this.#reportSlow();
    if (!this.#backlogFlushing) this.#flushBacklog();
    return true;
  }

  async #flushBacklog() {
    this.#backlogFlushing = true;
    try {
      let written = 0;
      while (this.#backlog.length > 0 && this.#ring && this.#state === "open") {
        const ring = this.#ring;
        const frame = this.#backlog.peek()!;
        if (!ring.tryWriteEncoded(frame)) {
          await ring.waitForSpace(frame.length);
          continue;
        }
        this.#backlog.shift();
        this.#backlogBytes -= frame.length;
        this.#opts.stats.ringMsgsOut++;
        if (this.#backlogBytes <= this.#ctx.limits.maxPendingBytes / 2) this.#releasePublishers();
        // A subscriber that keeps up could keep this loop going without a single await:
        // let the rest of the broker run between batches.
        if (++written % FLUSH_BATCH === 0) await yieldToEventLoop();
      }
      this.#releasePublishers();
    } finally {
      this.#backlogFlushing = false;
    }
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
    // Whatever the client put in its ring before sending this frame is handled first.
    if (this.#ring && !this.#ring.drain()) return;
    this.#handle(frame, false);
  }

  /**
   * Act on one frame from the port or (`inRing`) from the client's ring. Recoverable errors
   * become ERR frames; from the ring, a malformed frame is a ring violation (rethrown).
   */
  #handle(frame: Frame, inRing: boolean) {
    try {
      switch (frame.op) {
        case Op.Hello:
          return this.#onHello(frame);
        case Op.Pong:
          this.#pingsOut = 0;
          return;
      }
      if (this.#state !== "open") {
        // A guest write left blocked in virtio-serial while no host was connected is delivered
        // to the next host connection, before the guest's new HELLO (measured on real guests: a
        // whole batch of PUBs after a broker restart). Report the first such frame, drop the rest
        // silently, so stale bytes never add up to "too many errors" and close the session.
        if (this.#framesBeforeHello++ > 0) return;
        throw new VbusError(ErrorCode.BadState, `${opName(frame.op)} before HELLO`);
      }
      switch (frame.op) {
        case Op.Pub:
          this.#onPub(frame, inRing);
          if (inRing) this.#opts.stats.ringMsgsIn++;
          return;
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
        case Op.Doorbell: {
          const [ring, kind] = decodeDoorbellHead(frame.head);
          this.#ring?.onDoorbell(ring, kind);
          return;
        }
        default:
          throw new VbusError(ErrorCode.BadState, `${opName(frame.op)} is not sent by clients`);
      }
    } catch (err) {
      if (!(err instanceof VbusError)) throw err;
      if (inRing && err.code === ErrorCode.BadFrame) throw err;
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
      this.#stopRing();
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
    const shm = this.#negotiateShm(hello.shm as ShmOffer | undefined);
    stats.path = shm?.ok ? "ring" : "stream";
    if (!shm?.ok) stats.wake = undefined;
    stats.pathReason = shm?.ok ? undefined : shm?.reason ?? "the client did not offer shared memory";
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
    if (shm) welcome.shm = shm as unknown as Record<string, unknown>;
    this.#writer.frame(Op.Welcome, encodeValue(welcome));
    this.#ring?.start();
    this.#startPings();
    this.#ctx.log.info("session open", {
      session: this.id,
      client: hello.client ?? "?",
      features: [...this.#features].join(","),
      path: stats.path,
      ...(stats.pathReason ? { why: stats.pathReason } : {}),
    });
  }

  /** Decide the data path for a new session; on success the ring channel is ready to start. */
  #negotiateShm(offer: ShmOffer | undefined): ShmAnswer | undefined {
    const shm = this.#opts.shm;
    if (!offer) return undefined;
    if (!shm) return { ok: false, reason: "no shared memory is configured for this endpoint" };
    if ("reason" in shm) return { ok: false, reason: shm.reason };
    if (shm.perSession) {
      if (offer.want !== true) return { ok: false, reason: "malformed shared-memory offer" };
    } else {
      if (offer.size !== shm.bytes.length) {
        return { ok: false, reason: `the guest mapped ${offer.size} bytes, the broker's ${shm.path} has ${shm.bytes.length}` };
      }
      if (typeof offer.nonce !== "number" || !hasGuestNonce(shm.bytes, offer.nonce)) {
        return { ok: false, reason: `the guest's region is not the broker's ${shm.path} (nonce mismatch)` };
      }
    }
    try {
      // A new epoch with empty rings: nothing from an earlier session can be read.
      const region = initRegion(shm.bytes, { pid: 0 });
      // Futexes only work when both sides map the same file on this host: never for a VM.
      const futexWake = shm.perSession && offer.futex === true ? shm.futexWake : undefined;
      const stats = this.#opts.stats;
      stats.wake = futexWake ? "futex" : "doorbell";
      this.#ring = new RingChannel(region, {
        maxFrameBytes: this.#ctx.limits.maxFrameBytes,
        ringDoorbell: (ring, kind) => this.#writer.urgent(Op.Doorbell, encodeValue([ring, kind])),
        futex: futexWake
          ? {
            peerSleeps: true,
            wake: (word, index) => {
              stats.futexWakes++;
              futexWake(word, index);
            },
          }
          : undefined,
        onFrame: (frame) => this.#onRingFrame(frame),
        onCorrupt: (err) => this.#ringViolation(err),
      });
      const answer: ShmAnswer = { ok: true, epoch: region.epoch };
      if (shm.perSession) {
        answer.path = shm.path;
        answer.size = shm.bytes.length;
      }
      if (futexWake) answer.futex = true;
      return answer;
    } catch (err) {
      return { ok: false, reason: `cannot initialise the region: ${(err as Error).message}` };
    }
  }

  /** A frame read in place from the client's outbound ring: PUB, SUB, UNSUB or PING. */
  #onRingFrame(frame: Frame) {
    if (this.#state !== "open") return;
    const op = frame.op;
    if (op !== Op.Pub && op !== Op.Sub && op !== Op.Unsub && op !== Op.Ping) {
      throw new VbusError(ErrorCode.BadFrame, `${opName(op)} does not belong in the shared-memory ring`);
    }
    this.#handle(frame, true);
  }

  /** The guest broke its ring: log, count, and reset the session; other VMs are unaffected. */
  #ringViolation(err: Error) {
    const stats = this.#opts.stats;
    stats.closed["RING_CORRUPT"] = (stats.closed["RING_CORRUPT"] ?? 0) + 1;
    this.#ctx.log.warn("shared-memory ring violation, resetting the session", { session: this.id, error: err.message });
    this.sendError(ErrorCode.BadFrame, `shared-memory ring violation: ${err.message}`, undefined, true);
  }

  #stopRing() {
    const ring = this.#ring;
    if (!ring) return;
    this.#ring = undefined;
    ring.region.detach();
    this.ringStopped = ring.stop();
    this.#backlog.clear();
    this.#backlogBytes = 0;
  }

  /** Resolves when the session's ring channel no longer touches shared memory. */
  ringStopped: Promise<void> = Promise.resolve();

  #onPub(frame: Frame, volatile = false) {
    let buf = frame.buf, start = frame.headStart, end = frame.headEnd;
    if (volatile) {
      // The guest can rewrite its ring at any moment: decode from our own copy of the head,
      // and forward exactly those bytes.
      const n = end - start;
      const copy = this.#headCopy;
      for (let i = 0; i < n; i++) copy[i] = buf[start + i];
      buf = copy;
      start = 0;
      end = n;
    }
    const [subject, reply, headers] = this.#heads.pub(buf, start, end) ?? decodePubHead(buf, start, end);
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
      if (headersSize(headers) > limits.maxHeaderBytes) {
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
    // The MSG head is spliced from the validated PUB head bytes (no re-encoding per delivery).
    const pubTail = buf[start] === PUB_HEAD_MARK ? buf.subarray(start + 1, end) : undefined;
    this.#ctx.publishing = this;
    let delivered: number;
    try {
      delivered = this.#ctx.router.publish(subject, reply, headers, frame.payload, volatile, pubTail);
    } finally {
      this.#ctx.publishing = undefined;
    }
    if (delivered === 0 && reply !== null && this.#features.has(Feature.NoResponders)) {
      this.#ctx.router.publish(reply, null, NO_RESPONDERS_HEADERS, EMPTY);
    }
  }

  #onSub(frame: Frame) {
    const [sid, subject, queue, slow] = decodeSubHead(frame.head);
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
    const entry: RouteEntry = { sid, subject, queue, max: 0, delivered: 0, target: this, block: slow === "block" };
    if (entry.block) this.#blockSubs++;
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
    if (entry.block) this.#blockSubs--;
    if (this.#ctx.router.remove(entry)) this.#opts.stats.subscriptions--;
  }

  #dropSubscriptions() {
    for (const entry of this.#subs.values()) {
      if (this.#ctx.router.remove(entry)) this.#opts.stats.subscriptions--;
    }
    this.#subs.clear();
    this.#blockSubs = 0;
    this.#releasePublishers();
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
    if (now - this.#floodReportedAt < 1000) {
      this.#reportLater();
    } else {
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

  /**
   * Drops within a report's one-second window are reported when it ends, so the last ones of
   * a burst reach the client too, not only the stats.
   */
  #reportLater() {
    if (this.#reportTimer) return;
    this.#reportTimer = setTimeout(() => {
      this.#reportTimer = undefined;
      if (this.#state !== "open") return;
      if (this.#slowDropped > 0) this.#reportSlow();
      if (this.#floodDropped > 0) {
        const n = this.#floodDropped;
        this.#floodDropped = 0;
        this.#floodReportedAt = Date.now();
        this.sendError(ErrorCode.Flood, `publishing faster than ${this.#ctx.limits.maxMsgsPerSecond} msgs/s: ${n} message(s) rejected`);
      }
    }, 1000);
    (this.#reportTimer as { unref?: () => void }).unref?.();
  }

  #reportSlow() {
    const now = Date.now();
    if (now - this.#slowReportedAt < 1000) {
      this.#reportLater();
      return;
    }
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
      if (this.#holders.size > 0) {
        this.#pingsOut = 0; // held on purpose ("block" policy): its PONGs wait unread
        return;
      }
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

function msgHead(sid: number, pubTail: Uint8Array): Uint8Array {
  const out = new Uint8Array(msgHeadMaxLength(pubTail));
  return out.subarray(0, writeMsgHead(out, 0, sid, pubTail));
}

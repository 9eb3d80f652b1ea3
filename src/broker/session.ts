/**
 * One peer's session inside the broker: a VM arriving on its port, or a host-local client. It
 * decodes frames from an untrusted stream (and, on the fast path, from the peer's ring),
 * enforces limits and permissions, and hands PUBs to its data plane (`publish_path.ts`, which
 * checks them and calls the router); what goes back to the peer goes through its {@link Outbox}. A misbehaving session gets ERR frames and, for faults that
 * break the stream or persist, is closed; other sessions never notice.
 *
 * What one peer may cost the broker is bounded here:
 * - **work per turn**: at most {@link WORK_PER_TURN} units (a frame, a delivery, a stretch of
 *   subscription index walked) from one session before the others get the event loop;
 * - **output**: a session whose port output backs up beyond {@link OUTPUT_HOLD_BYTES} (it does
 *   not read what the broker sends: PONGs, WELCOMEs, ERRs) is not read until it drains;
 * - **order without stalls**: a port frame waits until the ring records written before it are
 *   consumed (by the ring loop, in bounded batches), never by draining the ring at once;
 * - **errors are attributed**: only what the session itself sent counts against `maxErrors`,
 *   and a new HELLO does not reset the count;
 * - **what the broker says on a session's behalf** (a no-responders status) goes to that
 *   session only.
 *
 * @example
 * ```ts
 * // Sessions are made by the Broker for every connection; see broker.ts.
 * ```
 * @module
 */
import { randomBytes } from "node:crypto";
import { setImmediate } from "node:timers";
import type { Port } from "../port/port.ts";
import { type Frame, FrameDecoder } from "../protocol/frame.ts";
import { FrameWriter } from "../protocol/frame_writer.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import {
  decodeDoorbellHead,
  decodeHelloHead,
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
  type WelcomeHead,
} from "../protocol/ops.ts";
import type { Limits } from "../protocol/limits.ts";
import type { DeliveryTarget, RouteEntry, Router } from "./router.ts";
import { PermissionGuard } from "./permissions.ts";
import type { Permissions } from "./config.ts";
import type { EndpointStats } from "./stats.ts";
import type { Logger } from "../util/log.ts";
import { initRegion } from "../ring/region.ts";
import { RingChannel } from "../shm/ring_channel.ts";
import { hasGuestNonce, type ShmAnswer, type ShmOffer } from "../shm/negotiation.ts";
import { type Holdable, Outbox } from "./outbox.ts";
import { FLOOD_CLOSE_SECONDS, FloodGuard } from "./flood_guard.ts";
import { busiestSubjects, CLIENT_NAME_MAX, type SessionStats } from "./session_stats.ts";
import { ringFill } from "../ring/fill.ts";
import { PublishPath, SYSTEM_PREFIX } from "./publish_path.ts";
import { SessionSubscriptions } from "./session_subscriptions.ts";

export { FLOOD_CLOSE_SECONDS, SYSTEM_PREFIX };
/** Features this broker offers; a session uses those its client also announced. */
export const BROKER_FEATURES: readonly string[] = [
  Feature.Headers,
  Feature.NoResponders,
  Feature.NoEcho,
];
/** Unanswered broker PINGs after which a session is considered dead. */
export const MAX_PINGS_OUT = 3;
/** Window over which `maxErrors` protocol errors close a session. */
export const ERROR_WINDOW_MS = 60_000;
/**
 * Work units one session may use per turn of the event loop (a frame is 1, each delivery 1,
 * each 8 subscription-index nodes walked 1) before other sessions run.
 */
export const WORK_PER_TURN = 4096;
/** Port output (bytes) beyond which the broker stops reading a session until it drains. */
export const OUTPUT_HOLD_BYTES = 1024 * 1024;
/** Largest frame a host connection may send before its HELLO (a HELLO is far smaller). */
export const PRE_HELLO_MAX_FRAME_BYTES = 64 * 1024;
/** HELLOs one connection may send per second; more are refused (each is a session restart). */
export const MAX_HELLOS_PER_SECOND = 20;
/** Work a HELLO counts for (a session restart: subscriptions dropped, a region re-initialised). */
const HELLO_WORK = WORK_PER_TURN / 16;
/**
 * Open sessions per endpoint's counters: the processes of one VM behind its agent share the
 * VM's stats, so `connected` is true while any of them is open, not just the last to HELLO.
 */
const openSessions = new WeakMap<EndpointStats, number>();

const EMPTY_ARRAY_HEAD = encodeValue([]);
/** DOORBELL heads by ring and kind, encoded once (a busy stream rings many times a second). */
const DOORBELL_HEADS = new Map<number, Uint8Array>();

function doorbellHead(ring: number, kind: number): Uint8Array {
  const key = ring * 256 + kind; // both are small: RingId, DoorbellKind
  let head = DOORBELL_HEADS.get(key);
  if (head === undefined) DOORBELL_HEADS.set(key, head = encodeValue([ring, kind]));
  return head;
}
/** Input holds that are not another session (see #holdInput). */
const TURN_HOLD = { reason: "work per turn, or a port frame waiting for the ring" };
const OUTPUT_HOLD = { reason: "output backed up" };
const DRAIN_HOLD = { reason: "the broker is draining: nothing more is read" };

/** What a session needs from the broker that owns it. */
export interface SessionContext {
  router: Router;
  limits: Limits;
  log: Logger;
  pingIntervalMs: number;
  /** The session whose PUB is being routed right now (for the "block" policy). */
  publishing?: Session;
  /**
   * The broker is stopping: ring records retained for backlogs stay unreleased, so that the
   * clients send them again to the next broker (`retained_records.ts`).
   */
  stopping?: boolean;
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
   * Shared memory for the fast path: a VM's mapped `shm` file (`perSession` false), memory
   * made for this host client (`perSession` true), or why there is none. A function is called
   * once, at the first HELLO that offers shared memory, so idle connections cost nothing.
   */
  shm?: SessionShm | (() => SessionShm);
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

/** A port frame that waits until the ring records written before it are consumed. */
interface WaitingFrame {
  frame: Frame;
  ring: RingChannel;
  target: number;
}

/** A broker-side session. */
export class Session implements DeliveryTarget, Holdable {
  readonly identity: string;
  id = "";
  #ctx: SessionContext;
  #opts: SessionOptions;
  #port: Port;
  #writer: FrameWriter;
  #decoder: FrameDecoder;
  #outbox: Outbox;
  #state: "hello" | "open" | "closed" = "hello";
  #subs: SessionSubscriptions;
  #guard?: PermissionGuard;
  #floodLimit: number;
  #features = new Set<string>();
  #errors = 0;
  #errorsSince = 0;
  #framesBeforeHello = 0;
  #hellos = 0; // HELLOs in the current second (a restart costs the broker real work)
  #hellosSince = 0;
  #helloTimer?: ReturnType<typeof setTimeout>;
  #pingsOut = 0;
  #pingTimer?: ReturnType<typeof setInterval>;
  #flood: FloodGuard;
  #shm?: SessionShm;
  #ring?: RingChannel;
  // Input gate: the port (and ring) are read only while nothing holds them.
  #portHolds = new Set<object>();
  #ringHolds = new Set<object>();
  #blockHolders = new Set<object>(); // subscribers' outboxes holding this session ("block")
  #outputHeld = false;
  // Port input stopped for this turn (work budget) or for a frame waiting for the ring.
  #inputStopped = false;
  #stalledChunks: Uint8Array[] = [];
  #waitingFrame?: WaitingFrame;
  #portWork = 0;
  #ringWork = 0;
  #unretainedSeen = 0; // the ring's count of records it stopped retaining, as counted
  // The data plane: PUBs checked (once per distinct head) and handed to the router.
  #pub: PublishPath;
  // For stats only: when the broker got the connection, and the client's HELLO description.
  #connectedAt = Date.now();
  #client = "";

  constructor(port: Port, ctx: SessionContext, opts: SessionOptions) {
    this.#port = port;
    this.#ctx = ctx;
    this.#opts = opts;
    this.identity = opts.identity;
    this.#writer = new FrameWriter(port);
    // A VM's port is its own (and stale frames of a guest may be large); a host connection
    // proves itself with a small HELLO first.
    this.#decoder = new FrameDecoder(
      opts.host ? PRE_HELLO_MAX_FRAME_BYTES : ctx.limits.maxFrameBytes,
    );
    this.#floodLimit = ctx.limits.maxMsgsPerSecond;
    this.#flood = new FloodGuard(this.#floodLimit, (n, fatal) => this.#floodReport(n, fatal));
    this.#subs = new SessionSubscriptions({
      target: this,
      limits: ctx.limits,
      router: ctx.router,
      stats: opts.stats,
    });
    this.#pub = new PublishPath({
      self: this,
      limits: ctx.limits,
      stats: opts.stats,
      router: ctx.router,
      host: opts.host,
      setPublishing: (on) => (ctx.publishing = on ? this : undefined),
    });
    this.#pub.flood = this.#flood;
    this.#outbox = new Outbox({
      owner: this,
      port,
      writer: this.#writer,
      limits: ctx.limits,
      stats: opts.stats,
      log: ctx.log,
      publisher: () => ctx.publishing,
      replyGrant: () => this.#guard && !this.#guard.publishUnrestricted ? this.#grant : undefined,
      id: () => this.id || this.identity,
      onFault: (err) => this.fail(err),
    });
  }

  /** The port this session runs on. */
  get port(): Port {
    return this.#port;
  }

  /** Is the handshake done and the session not closed? */
  get open(): boolean {
    return this.#state === "open";
  }

  /** What stats tell about this session (see session_stats.ts). Reads only. */
  snapshot(): SessionStats {
    const open = this.#state === "open";
    const ring = this.#ring;
    const stats = this.#opts.stats;
    const out: SessionStats = {
      id: this.id,
      endpoint: this.identity,
      state: open ? "open" : "hello",
      client: this.#client,
      connectedAt: new Date(this.#connectedAt).toISOString(),
      path: !open ? "none" : ring ? "ring" : "stream",
      subscriptions: this.#subs.size,
      subjects: busiestSubjects(this.#subs.entries()),
      backlogMsgs: this.#outbox.backlogLength,
      backlogBytes: this.#outbox.backlogBytes,
      portPendingBytes: this.#port.pending,
    };
    if (open && ring && !ring.stopped) {
      if (stats.wake) out.wake = stats.wake;
      const { bytes, inbound, outbound } = ring.region;
      out.rings = { inbound: ringFill(bytes, inbound), outbound: ringFill(bytes, outbound) };
    }
    // A host client counts into counters of its own (broker.ts); a VM's are the VM's.
    if (this.#opts.host) out.stats = structuredClone(stats);
    return out;
  }

  /**
   * Bytes on their way to the peer: the outbox's ring backlog (its memory, while it holds
   * messages) and port output not yet handed to the kernel.
   */
  get pendingOutputBytes(): number {
    const backlog = this.#outbox.backlogLength > 0 ? this.#outbox.backlogBytes : 0;
    return backlog + this.#port.pending + this.#writer.batched;
  }

  /**
   * The broker is draining: read nothing more from the peer (port and ring), so that what is
   * queued for it only shrinks. What the peer has not had read stays with its client, which
   * re-sends ring records to the next broker or counts them as maybe lost.
   */
  stopInput(): void {
    if (this.#state !== "closed") this.#holdInput(DRAIN_HOLD, true);
  }

  /**
   * A config reload changed this session's permissions: they apply from its next frame. The
   * guard is rebuilt on the same inbox (its replies keep arriving); one-time reply grants it
   * held are forgotten. Live subscriptions the new permissions do not allow are removed and
   * the peer is told (an ERR that does not count against it); "block" subscriptions of a
   * session no longer allowed to block become "drop" ones.
   */
  updatePermissions(permissions: Permissions | undefined): void {
    this.#opts.permissions = permissions;
    if (!this.#guard) return; // before HELLO: the guard is made from #opts.permissions
    const next = this.#guard;
    next.update(permissions);
    this.#pub.open(next, permissions?.publish, this.#features);
    for (const entry of this.#subs.recheck(next, this.#mayBlock())) {
      this.notice(
        ErrorCode.PermissionDenied,
        `subscription to "${entry.subject}" removed: the broker's configuration no longer permits it`,
        entry.subject,
      );
    }
  }

  /**
   * A config reload changed the shared limits object. Everything reads it at the time of use
   * except the flood guard's rate (renewed here) and the frame decoder's bound, which is the
   * stream's framing and changes at the session's next HELLO, like the limits its WELCOME
   * announced.
   */
  limitsChanged(): void {
    this.#pub.invalidate(); // subject limits decide what a cached PUB head was checked against
    const limit = this.#ctx.limits.maxMsgsPerSecond;
    if (limit === this.#floodLimit || this.#state === "closed") return;
    this.#floodLimit = limit;
    this.#flood.stop();
    this.#flood = new FloodGuard(limit, (n, fatal) => this.#floodReport(n, fatal));
    this.#pub.flood = this.#flood;
  }

  /** Start reading the port. */
  start(): void {
    this.#port.start(
      (chunk) => this.#onData(chunk),
      (err) => this.close(err ? `port error: ${err.message}` : "port closed"),
    );
    if (this.#opts.host) {
      // A VM's port is connected long before its guest says HELLO; a host connection is not.
      const ms = this.#ctx.limits.helloTimeoutMs;
      this.#helloTimer = setTimeout(() => {
        if (this.#state !== "hello") return;
        const stats = this.#opts.stats;
        stats.closed["HELLO_TIMEOUT"] = (stats.closed["HELLO_TIMEOUT"] ?? 0) + 1;
        this.#writer.frame(
          Op.Err,
          encodeValue({
            code: ErrorCode.SessionClosed,
            message: `no HELLO within ${ms} ms`,
            fatal: true,
          }),
        );
        this.close(`no HELLO within ${ms} ms`);
      }, ms);
      (this.#helloTimer as { unref?: () => void }).unref?.();
    }
  }

  /** End the session: drop its subscriptions and close the port. Idempotent. */
  close(reason: string): void {
    if (this.#state === "closed") return;
    const wasOpen = this.#state === "open";
    this.#state = "closed";
    this.#subs.clear();
    this.#stopRing();
    this.#outbox.close(!this.#ctx.stopping);
    this.#flood.stop();
    if (this.#helloTimer) clearTimeout(this.#helloTimer);
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#waitingFrame = undefined;
    this.#stalledChunks = [];
    this.#writer.flush();
    this.#port.close();
    if (wasOpen) {
      const stats = this.#opts.stats;
      const left = (openSessions.get(stats) ?? 1) - 1;
      openSessions.set(stats, left);
      if (left <= 0) stats.connected = false;
    }
    this.#opts.onClose(this, reason);
  }

  /**
   * Send an ERR caused by what this session sent: it counts against `maxErrors` (per minute);
   * `fatal` closes the session after it.
   */
  sendError(code: string, message: string, subject?: string, fatal = false, op?: string): void {
    this.#sendErr(code, message, subject, fatal, op);
    if (fatal || this.#state === "closed") return;
    if (this.#countError() > this.#ctx.limits.maxErrors) {
      const stats = this.#opts.stats;
      stats.closed["TOO_MANY_ERRORS"] = (stats.closed["TOO_MANY_ERRORS"] ?? 0) + 1;
      this.#writer.frame(
        Op.Err,
        encodeValue({ code: ErrorCode.SessionClosed, message: "too many errors", fatal: true }),
      );
      this.close("too many errors");
    }
  }

  /** Send an ERR that is not this session's fault (it never counts against `maxErrors`). */
  notice(code: string, message: string, subject?: string): void {
    this.#sendErr(code, message, subject, false);
  }

  #sendErr(
    code: string,
    message: string,
    subject: string | undefined,
    fatal: boolean,
    op?: string,
  ) {
    if (this.#state === "closed") return;
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

  /** Router callback: hand one MSG to this session's outbox. */
  deliver(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile = false,
    pubTail?: Uint8Array,
  ): boolean {
    if (!this.#mayDeliver(entry, subject)) return false;
    return this.#outbox.deliver(entry, subject, reply, headers, payload, volatile, pubTail);
  }

  /** Router callback: {@link deliver} with the payload as a range of the publisher's frame. */
  deliverRange(
    entry: RouteEntry,
    subject: string,
    reply: string | null,
    pubTail: Uint8Array,
    source: Uint8Array,
    start: number,
    length: number,
    volatile: boolean,
  ): boolean {
    if (!this.#mayDeliver(entry, subject)) return false;
    return this.#outbox.deliverRange(
      entry,
      subject,
      reply,
      pubTail,
      source,
      start,
      length,
      volatile,
    );
  }

  /** Count a delivery against the subscription's max; may this session take the message? */
  #mayDeliver(entry: RouteEntry, subject: string): boolean {
    this.#subs.delivering(entry);
    if (this.#state !== "open") return false;
    // The broker's own subjects (e.g. $VBUS.STATS requests) never reach a VM, even via `>`.
    return this.#opts.host || !subject.startsWith(SYSTEM_PREFIX);
  }

  /** A delivery to this session failed unexpectedly: close it (never the publisher). */
  fail(err: unknown): void {
    const stats = this.#opts.stats;
    stats.closed["INTERNAL"] = (stats.closed["INTERNAL"] ?? 0) + 1;
    this.#ctx.log.error("delivery failed, closing the session", {
      session: this.id || this.identity,
      error: (err as Error)?.message ?? String(err),
    });
    this.close(`internal error: ${(err as Error)?.message ?? err}`);
  }

  #grant = (reply: string) => this.#guard?.grantReply(reply);

  /** Keep the ring record this session is publishing now in its ring (see Outbox); -1: none. */
  retainRecord(allowed: boolean): number {
    const ring = this.#ring;
    if (!ring) return -1;
    if (allowed) return ring.retain();
    if (ring.inFrame) this.#opts.stats.ringUnretained++;
    return -1;
  }

  /** A backlog wrote or dropped its copy of a record {@link retainRecord} kept. */
  releaseRecord(sequence: number): void {
    this.#ring?.release(sequence);
  }

  /** "block" policy: stop reading this session's input while `holder` is behind. */
  holdFor(holder: object): void {
    if (this.#blockHolders.size === 0) this.#opts.stats.blocked++;
    this.#blockHolders.add(holder);
    this.#holdInput(holder, true);
  }

  /** `holder` caught up (or gave up holding): read this session again once nobody holds it. */
  releaseFor(holder: object): void {
    this.#blockHolders.delete(holder);
    this.#releaseInput(holder);
  }

  /** Stop reading the port (and, with `ring`, the ring) until every reason is released. */
  #holdInput(reason: object, ring: boolean) {
    if (this.#portHolds.size === 0) this.#port.pause();
    this.#portHolds.add(reason);
    if (ring) {
      if (this.#ringHolds.size === 0) this.#ring?.pause();
      this.#ringHolds.add(reason);
    }
  }

  #releaseInput(reason: object) {
    if (this.#portHolds.delete(reason) && this.#state !== "closed") {
      if (this.#portHolds.size === 0) this.#port.resume();
      // Frames left in the decoder when the hold came go on now.
      else if (this.#inputStopped && this.#portHolds.size === 1) {
        setImmediate(() => this.#continueInput());
      }
    }
    if (this.#ringHolds.delete(reason) && this.#ringHolds.size === 0) this.#ring?.resume();
  }

  /** Is the port held for another reason than this session's own turn? */
  #portHeld(): boolean {
    return this.#portHolds.size > (this.#inputStopped ? 1 : 0);
  }

  /** Stop reading a session that does not read what it is sent, until its output drains. */
  #checkOutput() {
    if (this.#outputHeld || this.#state === "closed") return;
    if (this.#port.pending + this.#writer.batched <= OUTPUT_HOLD_BYTES) return;
    this.#outputHeld = true;
    this.#holdInput(OUTPUT_HOLD, true);
    this.#writer.flush();
    const wait = () => {
      this.#port.drained().then(() => {
        if (this.#state === "closed") return;
        if (this.#port.pending > OUTPUT_HOLD_BYTES / 2) {
          setTimeout(wait, 10);
          return;
        }
        this.#outputHeld = false;
        this.#releaseInput(OUTPUT_HOLD);
      });
    };
    wait();
  }

  #onData(chunk: Uint8Array) {
    if (this.#state === "closed") return;
    if (this.#inputStopped) {
      this.#stalledChunks.push(chunk); // the port is paused; at most what was in flight
      return;
    }
    this.#portWork = 0;
    this.#decode(() => this.#decoder.push(chunk, this.#portFrame));
  }

  /** Run a decoder step; if it stopped early, stop the port until the input can go on. */
  #decode(step: () => boolean) {
    let done: boolean;
    try {
      done = step();
    } catch (err) {
      if (this.#ended()) return;
      const e = err instanceof VbusError ? err : new VbusError(ErrorCode.BadFrame, String(err));
      // A framing error means the stream position is lost: nothing after it can be trusted.
      this.sendError(e.code, e.message, undefined, true);
      return;
    }
    if (this.#ended()) return;
    this.#checkOutput();
    if (done) {
      if (this.#inputStopped) {
        this.#inputStopped = false;
        this.#releaseInput(TURN_HOLD);
      }
      return;
    }
    if (!this.#inputStopped) {
      this.#inputStopped = true;
      this.#holdInput(TURN_HOLD, false);
    }
    if (!this.#waitingFrame && !this.#portHeld()) setImmediate(() => this.#continueInput());
  }

  /** Go on with port input stopped by the work budget or by a frame waiting for the ring. */
  #continueInput() {
    if (this.#state === "closed" || !this.#inputStopped || this.#portHeld()) return;
    this.#portWork = 0;
    const waiting = this.#waitingFrame;
    if (waiting) {
      if (waiting.ring === this.#ring && !waiting.ring.hasConsumed(waiting.target)) return;
      this.#waitingFrame = undefined;
      this.#portWork += this.#handle(waiting.frame, false);
      if (this.#ended()) return;
    }
    this.#decode(() => {
      let more = this.#decoder.pump(this.#portFrame);
      while (more && this.#stalledChunks.length > 0) {
        more = this.#decoder.push(this.#stalledChunks.shift()!, this.#portFrame);
      }
      return more;
    });
  }

  /** One frame from the port. Returns false to stop decoding for now (see #decode). */
  #portFrame = (frame: Frame): boolean => {
    if (this.#state === "closed") return false;
    const ring = this.#ring;
    if (ring) {
      // Whatever the client put in its ring before sending this frame is handled first.
      const target = ring.peerPosition();
      if (!ring.hasConsumed(target)) {
        this.#waitingFrame = { frame, ring, target };
        ring.kick();
        return false;
      }
    }
    this.#portWork += this.#handle(frame, false);
    // Held by a "block" subscriber (or its own output) while handling it: stop right here.
    return !this.#ended() && this.#portWork < WORK_PER_TURN && !this.#portHeld();
  };

  /** Closed (a handler may have closed the session: TypeScript cannot see that). */
  #ended(): boolean {
    return this.#state === "closed";
  }

  /**
   * Act on one frame from the port or (`inRing`) from the client's ring; returns the work it
   * cost (see {@link WORK_PER_TURN}). Recoverable errors become ERR frames; from the ring, a
   * malformed frame is a ring violation (rethrown).
   */
  #handle(frame: Frame, inRing: boolean): number {
    try {
      switch (frame.op) {
        case Op.Hello:
          this.#onHello(frame);
          return HELLO_WORK;
        case Op.Pong:
          this.#pingsOut = 0;
          return 1;
      }
      if (this.#state !== "open") {
        // A guest write left blocked in virtio-serial while no host was connected is delivered
        // to the next host connection, before the guest's new HELLO (measured on real guests: a
        // whole batch of PUBs after a broker restart). Report the first such frame, drop the rest
        // silently, so stale bytes never add up to "too many errors" and close the session.
        if (this.#framesBeforeHello++ > 0) return 1;
        throw new VbusError(ErrorCode.BadState, `${opName(frame.op)} before HELLO`);
      }
      switch (frame.op) {
        case Op.Pub: {
          const work = this.#pub.publish(frame, inRing);
          if (inRing) this.#opts.stats.ringMsgsIn++;
          return work;
        }
        case Op.Sub:
          this.#subs.subscribe(decodeSubHead(frame.head), this.#guard!, this.#mayBlock());
          return 1;
        case Op.Unsub: {
          const [sid, max] = decodeUnsubHead(frame.head);
          this.#subs.unsubscribe(sid, max);
          return 1;
        }
        case Op.Ping:
          this.#writer.frame(Op.Pong, EMPTY_ARRAY_HEAD);
          return 1;
        case Op.Err:
          this.#ctx.log.warn("client reported an error", { session: this.id });
          return 1;
        case Op.Doorbell: {
          const [ring, kind] = decodeDoorbellHead(frame.head);
          this.#ring?.onDoorbell(ring, kind);
          return 1;
        }
        default:
          throw new VbusError(ErrorCode.BadState, `${opName(frame.op)} is not sent by clients`);
      }
    } catch (err) {
      if (!(err instanceof VbusError)) throw err;
      if (inRing && err.code === ErrorCode.BadFrame) throw err;
      this.sendError(
        err.code,
        err.message,
        err.subject,
        err.code === ErrorCode.BadVersion,
        opName(frame.op),
      );
      return 1;
    }
  }

  #onHello(frame: Frame) {
    const now = Date.now();
    if (now - this.#hellosSince >= 1000) {
      this.#hellosSince = now;
      this.#hellos = 0;
    }
    if (++this.#hellos > MAX_HELLOS_PER_SECOND) {
      throw new VbusError(
        ErrorCode.BadState,
        `more than ${MAX_HELLOS_PER_SECOND} HELLOs in one second; this one is ignored`,
      );
    }
    const hello = decodeHelloHead(frame.head);
    if (hello.v !== PROTOCOL_VERSION) {
      throw new VbusError(
        ErrorCode.BadVersion,
        `protocol version ${hello.v} is not supported (this broker speaks ${PROTOCOL_VERSION})`,
      );
    }
    if (this.#state === "open") {
      // A second HELLO: the guest process restarted on the same port. Start afresh (but the
      // error count stays: errors are the connection's, not undone by saying HELLO again).
      this.#subs.clear();
      this.#stopRing();
      this.#ctx.log.info("session restarted by a new HELLO", { session: this.id });
    }
    if (this.#helloTimer) clearTimeout(this.#helloTimer);
    this.#decoder.setMaxFrameBytes(this.#ctx.limits.maxFrameBytes);
    const { identity } = this;
    this.id = `${identity}#${this.#ctx.nextSessionNumber()}`;
    this.#client = (hello.client ?? "").slice(0, CLIENT_NAME_MAX);
    const inbox = `_INBOX.${identity}.${randomBytes(8).toString("hex")}`;
    this.#guard = new PermissionGuard(this.#opts.permissions, inbox);
    this.#features = new Set(hello.features.filter((f) => BROKER_FEATURES.includes(f)));
    this.#pub.open(this.#guard, this.#opts.permissions?.publish, this.#features);
    const stats = this.#opts.stats;
    if (this.#state !== "open") openSessions.set(stats, (openSessions.get(stats) ?? 0) + 1);
    this.#state = "open";
    stats.connected = true;
    stats.sessions++;
    const offer = hello.shm as ShmOffer | undefined;
    const shm = this.#negotiateShm(offer);
    this.#ctx.log.debug("shared-memory negotiation", {
      session: this.id,
      offer: offer === undefined ? "none" : JSON.stringify(offer),
      ok: shm?.ok ?? false,
      ...(shm?.ok ? { epoch: shm.epoch, futex: shm.futex === true } : { why: shm?.reason ?? "" }),
    });
    stats.path = shm?.ok ? "ring" : "stream";
    if (!shm?.ok) stats.wake = undefined;
    stats.pathReason = shm?.ok
      ? undefined
      : shm?.reason ?? "the client did not offer shared memory";
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

  /** The shared memory offered to this session, made on first use (see SessionOptions.shm). */
  #sessionShm(): SessionShm | undefined {
    const shm = this.#opts.shm;
    if (typeof shm !== "function") return shm;
    return this.#shm ??= shm();
  }

  /** Decide the data path for a new session; on success the ring channel is ready to start. */
  #negotiateShm(offer: ShmOffer | undefined): ShmAnswer | undefined {
    if (!offer) return undefined;
    const shm = this.#sessionShm();
    if (!shm) return { ok: false, reason: "no shared memory is configured for this endpoint" };
    if ("reason" in shm) return { ok: false, reason: shm.reason };
    if (shm.perSession) {
      if (offer.want !== true) return { ok: false, reason: "malformed shared-memory offer" };
    } else {
      if (offer.size !== shm.bytes.length) {
        return {
          ok: false,
          reason:
            `the guest mapped ${offer.size} bytes, the broker's ${shm.path} has ${shm.bytes.length}`,
        };
      }
      if (typeof offer.nonce !== "number" || !hasGuestNonce(shm.bytes, offer.nonce)) {
        return {
          ok: false,
          reason: `the guest's region is not the broker's ${shm.path} (nonce mismatch)`,
        };
      }
    }
    try {
      // A new epoch with empty rings: nothing from an earlier session can be read.
      const region = initRegion(shm.bytes, { pid: 0 });
      // Futexes only work when both sides map the same file on this host: never for a VM.
      const futexWake = shm.perSession && offer.futex === true ? shm.futexWake : undefined;
      const stats = this.#opts.stats;
      stats.wake = futexWake ? "futex" : "doorbell";
      const ring = new RingChannel(region, {
        maxFrameBytes: this.#ctx.limits.maxFrameBytes,
        ringDoorbell: (ring, kind) => {
          // A peer that does not read its port gets no more doorbells than the bound allows;
          // its parked reader still wakes on its own time slice.
          if (this.#port.pending > OUTPUT_HOLD_BYTES) return;
          this.#writer.urgent(Op.Doorbell, doorbellHead(ring, kind));
        },
        futex: futexWake
          ? {
            peerSleeps: true,
            wake: (word, index) => {
              stats.futexWakes++;
              futexWake(word, index);
            },
          }
          : undefined,
        // Handled before the call returns (only port frames ever wait): one frame object will do.
        reuseFrames: true,
        onFrame: (frame) => this.#onRingFrame(frame),
        onBatch: () => this.#onRingBatch(),
        onCorrupt: (err) => this.#ringViolation(err),
      });
      this.#ring = ring;
      this.#unretainedSeen = 0;
      if (this.#ringHolds.size > 0) ring.pause();
      this.#outbox.attach(ring);
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
  #onRingFrame(frame: Frame): boolean {
    if (this.#state !== "open") return false;
    const op = frame.op;
    if (op !== Op.Pub && op !== Op.Sub && op !== Op.Unsub && op !== Op.Ping) {
      throw new VbusError(
        ErrorCode.BadFrame,
        `${opName(op)} does not belong in the shared-memory ring`,
      );
    }
    this.#ringWork += this.#handle(frame, true);
    return this.#ringWork < WORK_PER_TURN && this.#ringHolds.size === 0;
  }

  /** The ring loop finished a batch: a new turn, and maybe a port frame may go on now. */
  #onRingBatch() {
    this.#ringWork = 0;
    const unretained = this.#ring?.unretained ?? this.#unretainedSeen;
    if (unretained !== this.#unretainedSeen) {
      this.#opts.stats.ringUnretained += unretained - this.#unretainedSeen;
      this.#unretainedSeen = unretained;
    }
    this.#checkOutput();
    if (this.#waitingFrame) this.#continueInput();
  }

  /** The guest broke its ring: log, count, and reset the session; other VMs are unaffected. */
  #ringViolation(err: Error) {
    const stats = this.#opts.stats;
    stats.closed["RING_CORRUPT"] = (stats.closed["RING_CORRUPT"] ?? 0) + 1;
    this.#ctx.log.warn("shared-memory ring violation, resetting the session", {
      session: this.id,
      error: err.message,
    });
    this.sendError(
      ErrorCode.BadFrame,
      `shared-memory ring violation: ${err.message}`,
      undefined,
      true,
    );
  }

  #stopRing() {
    const ring = this.#ring;
    if (!ring) return;
    this.#ring = undefined;
    this.#outbox.detach(!this.#ctx.stopping);
    // The broker goes on with what it read (its backlog copies): the client must not send it
    // again. A stopping broker leaves retained records unread, for the next one.
    if (!this.#ctx.stopping) ring.releaseAll();
    ring.region.detach();
    this.ringStopped = ring.stop();
    // A port frame that waited for this ring no longer has to.
    if (this.#waitingFrame && this.#state !== "closed") setImmediate(() => this.#continueInput());
  }

  /** Resolves when the session's ring channel no longer touches shared memory. */
  ringStopped: Promise<void> = Promise.resolve();

  /** May this session subscribe with the "block" policy (it holds publishers)? */
  #mayBlock(): boolean {
    return this.#opts.permissions?.block ?? this.#opts.host;
  }

  #floodReport(n: number, fatal: boolean) {
    if (this.#state !== "open") return;
    const limit = this.#ctx.limits.maxMsgsPerSecond;
    this.sendError(
      ErrorCode.Flood,
      `publishing faster than ${limit} msgs/s: ${n} message(s) rejected` +
        (fatal ? `; flooding for ${FLOOD_CLOSE_SECONDS} s, closing` : ""),
      undefined,
      fatal,
    );
  }

  #startPings() {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingsOut = 0;
    this.#pingTimer = setInterval(() => {
      if (this.#state !== "open") return;
      if (this.#blockHolders.size > 0) {
        // Held on purpose ("block" policy, bounded by maxBlockMs): its PONGs wait unread.
        this.#pingsOut = 0;
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

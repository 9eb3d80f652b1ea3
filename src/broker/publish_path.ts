/**
 * The broker's data plane for one session: a PUB frame (from the port or read in place from
 * the peer's ring) checked and handed to the router. Everything else a session does
 * (handshake, SUB/UNSUB, holds, pings) is in session.ts.
 *
 * **Route once per subject.** Decoding the head, validating its subjects and checking the
 * publish permission give the same answer for the same head bytes until the session's
 * permissions or the limits change, so the answer is cached per session, keyed by the head's
 * bytes: a steady stream then costs one pass over its head bytes (copy, hash, compare) instead
 * of a decode, two validations and a permission walk per message. The subscription match is
 * cached too: a cached head keeps the router's list of its subscribers while the router's
 * generation (bumped by every SUB and UNSUB) is unchanged, and its messages go straight to
 * them (no match, filter or queue-group pass), unless one of them is in a queue group or has
 * a max (then the router routes each message, from its own match cache).
 *
 * What the cache may not change:
 * - **Hostile memory**: a ring head is copied out of shared memory once, byte by byte, and the
 *   copy is what is hashed, compared with the cached head (our own copy, never shared memory)
 *   and forwarded. A guest rewriting its ring mid-read can only change which of two valid
 *   heads we read, never make us act on bytes we did not check.
 * - **Invalidation**: {@link PublishPath.invalidate} empties it, and the session calls it at
 *   every HELLO, permission change and limits change (config reload), before its next frame.
 * - **One-time reply grants** are never cached: a publish allowed only by a grant goes the
 *   full way every time (the grant is consumed).
 * - Per-message checks stay per message: the flood guard, the frame-size limits (they depend
 *   on the payload), and what depends on the match (no-responders).
 *
 * @example
 * ```ts
 * // Made by each Session (see session.ts); per PUB frame:
 * // const work = publishPath.publish(frame, inRing);
 * ```
 * @module
 */
import { type Frame, FrameHeader, MAX_HEAD_BYTES } from "../protocol/frame.ts";
import { HeadReader } from "../protocol/fast_heads.ts";
import { msgHeadMaxLength, PUB_HEAD_MARK } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { decodePubHead, headersSize } from "../protocol/heads.ts";
import { Feature, type Headers, STATUS_HEADER, STATUS_NO_RESPONDERS } from "../protocol/ops.ts";
import type { Limits } from "../protocol/limits.ts";
import { matches, validateSubject } from "../subject/subject.ts";
import { INBOX_PREFIX, type PermissionGuard } from "./permissions.ts";
import type { DeliveryTarget, RouteEntry, Router } from "./router.ts";
import { countDrop, DropReason, type EndpointStats } from "./stats.ts";
import type { FloodGuard } from "./flood_guard.ts";

/** Subjects under this prefix belong to the broker itself. */
export const SYSTEM_PREFIX = "$VBUS.";
/** Distinct PUB heads whose routing decision one session caches (then it starts afresh). */
export const ROUTE_CACHE_SIZE = 256;
/** Longest PUB head that is cached (longer ones are decoded every time). */
export const ROUTE_CACHE_HEAD_MAX = 512;
/** Bytes a MSG head may add to the PUB head it is spliced from (array marker and sid). */
const MSG_HEAD_EXTRA = msgHeadMaxLength(new Uint8Array(0));
const NO_RESPONDERS_HEADERS: Headers = { [STATUS_HEADER]: STATUS_NO_RESPONDERS };
const EMPTY = new Uint8Array(0);

/** A PUB head that passed every check, as this session's cache keeps it. */
interface Route {
  /** Our copy of the head's bytes (the key). */
  head: Uint8Array;
  subject: string;
  reply: string | null;
  /** `head` after its array marker: what the MSG head is spliced from. */
  pubTail: Uint8Array;
  /**
   * Where it goes, taken from the router while its generation is {@link generation}; null
   * when the router must route each message itself (queue groups, a max, many subscribers).
   */
  targets: RouteEntry[] | null;
  generation: number;
}

/** What a {@link PublishPath} needs from its session. */
export interface PublishPathOptions {
  /** The session: what the router excludes (no echo) and delivers no-responders to. */
  self: DeliveryTarget;
  /** The broker's limits object (a reload changes it in place; see invalidate). */
  limits: Limits;
  stats: EndpointStats;
  router: Router;
  /** A host connection may publish to `$VBUS.` subjects. */
  host: boolean;
  /** Mark the session as the one publishing while the router runs (the "block" policy). */
  setPublishing(publishing: boolean): void;
}

/** A session's PUB path; see the module doc. */
export class PublishPath {
  #o: PublishPathOptions;
  #guard?: PermissionGuard;
  /** Publish patterns the guard checks (undefined: unrestricted). */
  #publish?: readonly string[];
  #features: ReadonlySet<string> = new Set();
  #flood?: FloodGuard;
  #routes = new Map<number, Route>();
  #heads = new HeadReader();
  // Private copy of a PUB head read from a guest's ring (heads are at most 64 KiB).
  #headCopy = new Uint8Array(MAX_HEAD_BYTES);

  constructor(opts: PublishPathOptions) {
    this.#o = opts;
  }

  /**
   * A new session state (HELLO) or new permissions: what it may do from the next frame on.
   * Empties the cache.
   */
  open(
    guard: PermissionGuard,
    publish: readonly string[] | undefined,
    features: ReadonlySet<string>,
  ): void {
    this.#guard = guard;
    this.#publish = publish;
    this.#features = features;
    this.invalidate();
  }

  /** The flood guard to take a token from per message (renewed when its rate changes). */
  set flood(flood: FloodGuard) {
    this.#flood = flood;
  }

  /** Forget every cached decision (permissions or limits changed). */
  invalidate(): void {
    this.#routes.clear();
  }

  /** Cached routing decisions (for tests and stats). */
  get cachedRoutes(): number {
    return this.#routes.size;
  }

  /**
   * Handle one PUB; returns the work it cost (1, each delivery, the index walked). `volatile`:
   * the frame is in the peer's ring (shared memory it may rewrite at any moment). Throws a
   * VbusError for what the session did wrong.
   */
  publish(frame: Frame, volatile: boolean): number {
    let buf = frame.buf, start = frame.headStart, end = frame.headEnd;
    const n = end - start;
    const limits = this.#o.limits;
    const payloadLength = frame.payloadEnd - frame.payloadStart;
    // Limits apply to the bytes that will be forwarded, not to what they decode to (a headers
    // map repeating one key decodes to a few bytes and may still be 64 KiB on the wire).
    if (
      n > limits.maxHeaderBytes + 2 * limits.maxSubjectBytes + 16 ||
      n + MSG_HEAD_EXTRA > MAX_HEAD_BYTES
    ) {
      throw new VbusError(
        ErrorCode.BadHeaders,
        `a PUB head of ${n} bytes exceeds what subjects and headers may take (limits.maxHeaderBytes ${limits.maxHeaderBytes})`,
      );
    }
    if (FrameHeader.LENGTH + n + MSG_HEAD_EXTRA + payloadLength > limits.maxFrameBytes) {
      throw new VbusError(
        ErrorCode.FrameTooLarge,
        `the message would be forwarded as a frame larger than limits.maxFrameBytes (${limits.maxFrameBytes})`,
      );
    }
    // One pass over the head: copy it out of the peer's memory (each byte read once) and hash
    // the copy. Everything after this reads our copy only.
    let hash = n;
    if (volatile) {
      const copy = this.#headCopy;
      for (let i = 0; i < n; i++) {
        const c = buf[start + i];
        copy[i] = c;
        hash = (Math.imul(hash, 31) + c) | 0;
      }
      buf = copy;
      start = 0;
      end = n;
    } else if (n <= ROUTE_CACHE_HEAD_MAX) {
      for (let i = 0; i < n; i++) hash = (Math.imul(hash, 31) + buf[start + i]) | 0;
    }
    const route = n <= ROUTE_CACHE_HEAD_MAX ? this.#routes.get(hash) : undefined;
    if (route !== undefined && sameBytes(route.head, buf, start, n)) {
      if (!this.#flood!.take()) {
        countDrop(this.#o.stats, DropReason.Flood);
        return 1;
      }
      const router = this.#o.router;
      if (route.generation !== router.generation) {
        const exclude = this.#features.has(Feature.NoEcho) ? this.#o.self : undefined;
        route.targets = router.forwardTargets(route.subject, route, exclude);
        route.generation = router.generation;
      }
      if (route.targets !== null) return this.#forward(route, route.targets, frame, volatile);
      return this.#route(route.subject, route.reply, null, frame.payload, volatile, route.pubTail);
    }
    return this.#slowPublish(buf, start, end, hash, frame.payload, volatile);
  }

  /** Decode and check a head not in the cache; cache it when its decision may be reused. */
  #slowPublish(
    buf: Uint8Array,
    start: number,
    end: number,
    hash: number,
    payload: Uint8Array,
    volatile: boolean,
  ): number {
    const limits = this.#o.limits;
    const stats = this.#o.stats;
    const [subject, reply, headers] = this.#heads.pub(buf, start, end) ??
      decodePubHead(buf, start, end);
    if (!this.#flood!.take()) {
      countDrop(stats, DropReason.Flood);
      return 1;
    }
    const problem = validateSubject(subject, limits.maxSubjectBytes, limits.maxSubjectTokens);
    if (problem) throw new VbusError(ErrorCode.BadSubject, `invalid subject: ${problem}`, subject);
    if (reply !== null) {
      const replyProblem = validateSubject(reply, limits.maxSubjectBytes, limits.maxSubjectTokens);
      if (replyProblem) {
        throw new VbusError(ErrorCode.BadSubject, `invalid reply subject: ${replyProblem}`, reply);
      }
    }
    if (headers !== null) {
      if (!this.#features.has(Feature.Headers)) {
        throw new VbusError(ErrorCode.BadHeaders, "headers were not negotiated", subject);
      }
      if (headersSize(headers) > limits.maxHeaderBytes) {
        throw new VbusError(
          ErrorCode.BadHeaders,
          `headers exceed ${limits.maxHeaderBytes} bytes`,
          subject,
        );
      }
    }
    if (subject.startsWith(SYSTEM_PREFIX) && !this.#o.host) this.#deny(subject);
    // Allowed by a publish pattern: the same answer until the permissions change. Allowed only
    // by a one-time reply grant (canPublish consumes it): never cached.
    const byPattern = this.#allowedByPattern(subject);
    if (!byPattern && !this.#guard!.canPublish(subject)) this.#deny(subject);
    // The MSG head is spliced from the validated PUB head bytes (no re-encoding per delivery).
    let pubTail = buf[start] === PUB_HEAD_MARK ? buf.subarray(start + 1, end) : undefined;
    const n = end - start;
    if (
      byPattern && pubTail !== undefined && headers === null && n <= ROUTE_CACHE_HEAD_MAX &&
      (reply === null || !reply.startsWith(INBOX_PREFIX)) // inbox replies are one-offs
    ) {
      if (this.#routes.size >= ROUTE_CACHE_SIZE) this.#routes.clear();
      const head = buf.slice(start, end);
      pubTail = head.subarray(1);
      this.#routes.set(hash, { head, subject, reply, pubTail, targets: null, generation: -1 });
    }
    return this.#route(subject, reply, headers, payload, volatile, pubTail);
  }

  #allowedByPattern(subject: string): boolean {
    const publish = this.#publish;
    if (publish === undefined) return true;
    for (const p of publish) if (matches(p, subject)) return true;
    return false;
  }

  #deny(subject: string): never {
    this.#o.stats.denied++;
    throw new VbusError(
      ErrorCode.PermissionDenied,
      `publish to "${subject}" is not permitted`,
      subject,
    );
  }

  /**
   * A cached route's message straight to the targets the router gave for it (what
   * Router.publish would do for them, without matching again); returns the work it cost. The
   * payload is passed as its range of the frame's buffer to targets that take one (no view).
   */
  #forward(route: Route, targets: RouteEntry[], frame: Frame, volatile: boolean): number {
    const o = this.#o;
    const stats = o.stats;
    const source = frame.buf, payloadStart = frame.payloadStart;
    const payloadLength = frame.payloadEnd - payloadStart;
    stats.msgsIn++;
    stats.bytesIn += payloadLength;
    let payload: Uint8Array | undefined;
    const n = targets.length;
    const { subject, reply, pubTail } = route;
    o.setPublishing(true);
    try {
      for (let i = 0; i < n; i++) {
        const entry = targets[i];
        entry.delivered++;
        const target = entry.target;
        try {
          if (target.deliverRange) {
            target.deliverRange(
              entry,
              subject,
              reply,
              pubTail,
              source,
              payloadStart,
              payloadLength,
              volatile,
            );
          } else {
            payload ??= frame.payload;
            target.deliver(entry, subject, reply, null, payload, volatile, pubTail);
          }
        } catch (err) {
          if (!target.fail) throw err;
          target.fail(err);
        }
      }
    } finally {
      o.setPublishing(false);
    }
    if (n === 0 && reply !== null && this.#features.has(Feature.NoResponders)) {
      o.router.deliverTo(o.self, reply, NO_RESPONDERS_HEADERS, EMPTY);
    }
    // As Router.publish counts it: the matched list walked about twice, from its cache.
    return 1 + n + ((2 * n) >> 3);
  }

  /** Hand a checked message to the router; returns the work it cost. */
  #route(
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile: boolean,
    pubTail: Uint8Array | undefined,
  ): number {
    const o = this.#o;
    const stats = o.stats;
    stats.msgsIn++;
    stats.bytesIn += payload.length;
    const router = o.router;
    const features = this.#features;
    o.setPublishing(true);
    let delivered: number;
    try {
      const exclude = features.has(Feature.NoEcho) ? o.self : undefined;
      delivered = router.publish(subject, reply, headers, payload, volatile, pubTail, exclude);
    } finally {
      o.setPublishing(false);
    }
    const work = 1 + delivered + (router.lastMatchCost >> 3);
    if (delivered === 0 && reply !== null && features.has(Feature.NoResponders)) {
      // Said on this session's behalf: only to this session, whatever subject it named.
      router.deliverTo(o.self, reply, NO_RESPONDERS_HEADERS, EMPTY);
    }
    return work;
  }
}

/** Is `b[start, start + n)` the same bytes as `a` (both our own memory)? */
function sameBytes(a: Uint8Array, b: Uint8Array, start: number, n: number): boolean {
  if (a.length !== n) return false;
  for (let i = 0; i < n; i++) if (a[i] !== b[start + i]) return false;
  return true;
}

/**
 * The chaos soak's accounting: every published message of every stream, every copy a subscriber
 * should get, and why each missing copy is missing. One clock (`performance.now()` of the soak
 * process, where every client lives) orders publishes, session starts, subscription
 * confirmations, broker kills and reports, so "was this subscriber subscribed when that message
 * was sent" is decided from facts, not guessed.
 *
 * Terms (the report prints them too):
 * - A *span* is one session of one client: from its `connected`/`reconnected` event to its
 *   `disconnected` event (or the broker kill / port drop the soak caused, if earlier). A span
 *   is *confirmed* when a `flush()` sent after the (re)subscribe resolved: the broker had
 *   processed the SUBs by then.
 * - A message's *hand-off* is where it entered the bus: (broker generation, time). Published on
 *   a live session: that session's generation, at the `publish()` call. Buffered while
 *   disconnected (or moved to the reconnect buffer by a session end): the publisher's next
 *   session, at its `reconnected` event (the client writes the buffer just before emitting it).
 *   A message published on a session that then ended may also have been *re-sent* in the next
 *   session (the client re-sends what the broker had not read of its outbound ring); that is
 *   its second hand-off, at the next session's start.
 * - A copy (message x subscriber) is *required* when the subscriber had a confirmed span in the
 *   hand-off's generation, confirmed before the hand-off and not yet ended at it. The broker
 *   processed the SUB before the PONG, the PONG came before the hand-off, the hand-off before the
 *   broker read the message: the subscription was live. Copies that are not required are
 *   "published while not subscribed" (pub/sub is at-most-once for absent subscribers).
 * - A required copy that did not arrive is *dropped-and-reported* when a report covers it:
 *   the subscriber's session ended within {@link IN_FLIGHT_WINDOW_MS} after the hand-off and
 *   another subscriber got the message (it was in flight to this one: its `disconnected`
 *   event), a SLOW_CONSUMER count told to the subscriber, another ERR told to the subscriber
 *   (e.g. FRAME_TOO_LARGE), a FLOOD count told to the publisher, or the publisher's client
 *   reported it as possibly lost in flight across a session end (`maybeLost`; it covers
 *   publishes made within {@link UNCONFIRMED_WINDOW_MS} before that end). Each report covers as
 *   many messages as it counts, no more. Everything else is *lost-unreported*.
 * - *unverifiable*: nobody received the message, its publisher's session ended right after
 *   it, and no subscriber was confirmed when the publisher reconnected: a re-send could not
 *   have reached anyone, so lost and re-sent-to-nobody look the same. Counted apart.
 *
 * @example
 * ```ts
 * import { Generations, Ledger } from "./soak_ledger.ts";
 * const gens = new Generations();
 * gens.started();
 * const ledger = new Ledger(gens);
 * const pub = ledger.client("vm1"), sub = ledger.client("h1");
 * const stream = ledger.stream("vm1", pub);
 * ledger.subscribe(stream, sub);
 * ```
 * @module
 */

/** Messages kept per stream for classification (a ring; older ones must be classified). */
export const HISTORY = 1 << 16;
/** A copy missing within this long before its subscriber's session ended was in flight to it. */
export const IN_FLIGHT_WINDOW_MS = 5000;
/**
 * A publisher's "possibly lost in flight" count covers its publishes of the session that ended
 * made at most this long before the end (the client counts those after its last answered PING;
 * it pings every 10 s).
 */
export const UNCONFIRMED_WINDOW_MS = 25_000;
/** Reports (SLOW_CONSUMER, FLOOD, ERR) cover messages handed off at most this long before. */
export const REPORT_WINDOW_MS = 20_000;
/** Ranges of lost copies kept with full detail in the report. */
const MAX_LOST_RANGES = 200;

/** Broker generations: each (re)start of the broker process is one; kills end them. */
export class Generations {
  /** Generation of the running broker (1 = the first). */
  current = 0;
  #runIds = new Map<string, number>();
  #ends: number[] = [];
  #starts: number[] = [];

  /** A broker process was started: a new generation. */
  started(t = performance.now()): number {
    this.current++;
    this.#starts[this.current] = t;
    return this.current;
  }

  /** The running broker was killed at `t`: its sessions ended then, whatever clients noticed. */
  killed(t: number): void {
    this.#ends[this.current] = t;
  }

  /** When generation `g` ended (Infinity while it runs). */
  endOf(g: number): number {
    return this.#ends[g] ?? Infinity;
  }

  /** When generation `g` started. */
  startOf(g: number): number {
    return this.#starts[g] ?? 0;
  }

  /**
   * The generation a session id belongs to. Ids are `identity#RUNID.N`; a broker process has
   * one RUNID, first seen after that broker started (clients cannot reach a dead one).
   */
  genOf(session: string): number {
    const hash = session.indexOf("#");
    const dot = session.lastIndexOf(".");
    const runId = hash >= 0 && dot > hash ? session.slice(hash + 1, dot) : session;
    let g = this.#runIds.get(runId);
    if (g === undefined) this.#runIds.set(runId, g = this.current);
    return g;
  }
}

/** One session of one client. */
export interface Span {
  index: number;
  gen: number;
  session: string;
  start: number;
  /** Infinity while it lasts. */
  end: number;
  /** When a flush after the (re)subscribe resolved; Infinity until then. */
  confirmedAt: number;
  endReason?: string;
}

/** Sessions of one client, and the reports it received. */
export class ClientTimeline {
  readonly spans: Span[] = [];
  /** SLOW_CONSUMER counts told to this client (as subscriber). */
  readonly slow = new Budget();
  /** Other ERRs that mean "a message for you was not delivered", by code. */
  readonly errs = new Map<string, Budget>();
  /** FLOOD counts told to this client (as publisher). */
  readonly flood = new Budget();
  /** Possibly-lost-in-flight counts reported by this client's bus, keyed by span index. */
  readonly inFlight = new Budget();

  constructor(readonly name: string, readonly gens: Generations) {}

  /** The open span, if connected. */
  get current(): Span | undefined {
    const s = this.spans.at(-1);
    return s && s.end === Infinity ? s : undefined;
  }

  /** Generation of the current (or last) span. */
  get gen(): number {
    return this.spans.at(-1)?.gen ?? 0;
  }

  /** A session started (connected / reconnected event). */
  opened(session: string, t: number): Span {
    const cur = this.current;
    if (cur) cur.end = t;
    const span: Span = {
      index: this.spans.length,
      gen: this.gens.genOf(session),
      session,
      start: t,
      end: Infinity,
      confirmedAt: Infinity,
    };
    this.spans.push(span);
    return span;
  }

  /** The session ended at `t` (the earliest of the event and what the soak did). */
  closed(t: number, reason: string): void {
    const cur = this.spans.at(-1);
    if (!cur) return;
    if (t < cur.end) {
      cur.end = t;
      cur.endReason = reason;
    }
  }

  /** A flush after (re)subscribing resolved at `t`. */
  confirmed(span: Span, t: number): void {
    if (span.end === Infinity && span.confirmedAt === Infinity) span.confirmedAt = t;
  }

  /** When `span` really ended: its end, or its broker's death if that came first. */
  endOf(span: Span): number {
    return Math.min(span.end, this.gens.endOf(span.gen));
  }

  /** The confirmed span of generation `gen` live at `t`, if any. */
  subscribedAt(gen: number, t: number): Span | undefined {
    for (let i = this.spans.length - 1; i >= 0; i--) {
      const s = this.spans[i];
      if (s.gen === gen && s.confirmedAt < t && t < this.endOf(s)) return s;
      if (s.gen < gen) break; // spans are in order: earlier ones are older generations
    }
    return undefined;
  }

  /** Budget for ERR `code` told to this client. */
  errBudget(code: string): Budget {
    let b = this.errs.get(code);
    if (!b) this.errs.set(code, b = new Budget());
    return b;
  }
}

/** Counts reported at a time (or for a key), consumed by the copies they explain. */
export class Budget {
  readonly entries: { t: number; key: number; n: number; left: number }[] = [];
  total = 0;
  used = 0;

  add(t: number, n: number, key = -1): void {
    if (!(n > 0)) return;
    this.entries.push({ t, key, n, left: n });
    this.total += n;
  }

  /** Take one from the oldest report made within [from, to] (and with `key`, if given). */
  take(from: number, to: number, key?: number): boolean {
    for (const e of this.entries) {
      if (e.left === 0 || e.t < from || e.t > to) continue;
      if (key !== undefined && e.key !== key) continue;
      e.left--;
      this.used++;
      return true;
    }
    return false;
  }

  /** Take one reported for `key` (time ignored). */
  takeKey(key: number): boolean {
    return this.take(-Infinity, Infinity, key);
  }
}

/** Why a required copy is missing, when a report covers it. */
export type ReportedReason =
  | "subscriber_session_ended"
  | "slow_consumer"
  | "flood"
  | "publisher_reported_in_flight"
  | `err_${string}`;

/** Why a required copy is missing, when nothing covers it. */
export type LostKind = "not_delivered_to_this_subscriber" | "received_by_no_subscriber";

/** Consecutive lost copies of one stream at one subscriber, with what surrounded them. */
export interface LostRange {
  stream: string;
  subscriber: string;
  kind: LostKind;
  fromSeq: number;
  toSeq: number;
  count: number;
  /** performance.now() of the first and last publish call of the range. */
  tFirst: number;
  tLast: number;
  /** The publisher's session at the hand-off of the first one. */
  publisherSpan?: { index: number; gen: number; start: number; end: number; endReason?: string };
  /** The subscriber's confirmed span live at the hand-off of the first one. */
  subscriberSpan?: { index: number; gen: number; start: number; end: number; endReason?: string };
  /** Other subscribers that got the first one. */
  receivedBy: string[];
  /** How the first one was published: "session" | "buffered" | "rebuffered". */
  mode: string;
}

/** One subscriber of one stream. */
export class Pair {
  readonly recv = new Uint8Array(HISTORY);
  highest = -1;
  received = 0;
  duplicates = 0;
  reordered = 0;
  lateAfterClassified = 0;
  // classification
  required = 0;
  delivered = 0;
  extra = 0;
  notSubscribed = 0;
  unverifiable = 0;
  readonly reported = new Map<string, number>();
  readonly lost = new Map<LostKind, number>();
  lastLost?: LostRange;

  constructor(readonly stream: Stream, readonly sub: ClientTimeline) {}
}

const STATE_PENDING = 0;
const STATE_SENT_IN_SESSION = 1;
const STATE_REJECTED = 2;
const STATE_SENT_REBUFFERED = 3;

/** One publisher's numbered stream. */
export class Stream {
  next = 0;
  /** Every seq below this one is classified. */
  classified = 0;
  readonly tCall = new Float64Array(HISTORY);
  readonly span = new Int32Array(HISTORY);
  readonly state = new Uint8Array(HISTORY);
  /** Generation (+1) of the first and last receipt by any subscriber; 0 = none. */
  readonly recvGenMin = new Uint16Array(HISTORY);
  readonly recvGenMax = new Uint16Array(HISTORY);
  readonly pairs: Pair[] = [];
  attempted = 0;
  sent = 0;
  pending = 0;
  readonly rejected = new Map<string, number>();
  receivedRejected = 0;
  forcedClassify = 0;
  neverHandedOff = 0;

  constructor(readonly id: number, readonly name: string, readonly pub: ClientTimeline) {}
}

/** Totals over all streams (copies unless said otherwise). */
export interface LedgerTotals {
  attempted: number;
  rejected: Record<string, number>;
  sent: number;
  pending: number;
  neverHandedOff: number;
  potentialCopies: number;
  notSubscribed: number;
  required: number;
  delivered: number;
  extra: number;
  reported: Record<string, number>;
  reportedTotal: number;
  unverifiable: number;
  lost: Record<string, number>;
  lostTotal: number;
  received: number;
  duplicates: number;
  reordered: number;
  lateAfterClassified: number;
  receivedRejected: number;
  forcedClassify: number;
  corrupt: number;
}

/** All streams and subscribers of a soak run. */
export class Ledger {
  readonly streams: Stream[] = [];
  readonly clients = new Map<string, ClientTimeline>();
  readonly lostRanges: LostRange[] = [];
  lostRangesDropped = 0;
  /** The first duplicates and reordered arrivals: stream, subscriber, seq, when, generation. */
  readonly orderSamples: {
    what: "duplicate" | "reordered";
    stream: string;
    subscriber: string;
    seq: number;
    t: number;
    gen: number;
  }[] = [];
  /** Payloads that failed their checks, and messages naming an unknown stream or future seq. */
  corrupt = 0;
  readonly corruptSamples: string[] = [];

  constructor(readonly gens: Generations) {}

  /** The timeline of client `name` (created on first use). */
  client(name: string): ClientTimeline {
    let c = this.clients.get(name);
    if (!c) this.clients.set(name, c = new ClientTimeline(name, this.gens));
    return c;
  }

  /** A new stream published by `pub`. */
  stream(name: string, pub: ClientTimeline): Stream {
    const s = new Stream(this.streams.length, name, pub);
    this.streams.push(s);
    return s;
  }

  /** `sub` receives every message of `stream`. */
  subscribe(stream: Stream, sub: ClientTimeline): Pair {
    const p = new Pair(stream, sub);
    stream.pairs.push(p);
    return p;
  }

  /** The pair of `stream` and subscriber `sub`. */
  pair(stream: Stream, sub: ClientTimeline): Pair | undefined {
    for (const p of stream.pairs) if (p.sub === sub) return p;
    return undefined;
  }

  /**
   * A publish is about to be made: returns its seq. `connectedSpan` is the publisher's live
   * span if its bus is connected now, else undefined (the publish goes to the reconnect buffer).
   */
  published(stream: Stream, t: number, connectedSpan: Span | undefined): number {
    if (stream.next - stream.classified >= HISTORY - 1) {
      // Classification fell behind by a whole history: classify the oldest now.
      stream.forcedClassify++;
      this.classify(stream, stream.classified + 1024, true);
    }
    const seq = stream.next++;
    const i = seq & (HISTORY - 1);
    stream.tCall[i] = t;
    stream.span[i] = connectedSpan ? connectedSpan.index : -1;
    stream.state[i] = STATE_PENDING;
    stream.recvGenMin[i] = 0;
    stream.recvGenMax[i] = 0;
    for (const p of stream.pairs) p.recv[i] = 0;
    stream.attempted++;
    stream.pending++;
    return seq;
  }

  /** The publish of `seq` resolved (handed to the ring / port, or buffered). */
  resolved(stream: Stream, seq: number): void {
    if (seq < stream.classified) {
      // Classified (as never handed off) before it resolved: count it sent, nothing more.
      stream.pending--;
      stream.sent++;
      return;
    }
    const i = seq & (HISTORY - 1);
    const k = stream.span[i];
    const span = k >= 0 ? stream.pub.spans[k] : undefined;
    stream.state[i] = span && span.end === Infinity ? STATE_SENT_IN_SESSION : STATE_SENT_REBUFFERED;
    stream.pending--;
    stream.sent++;
  }

  /** The publish of `seq` was rejected with `code`: never sent. */
  rejected(stream: Stream, seq: number, code: string): void {
    stream.rejected.set(code, (stream.rejected.get(code) ?? 0) + 1);
    stream.pending--;
    if (seq < stream.classified) return;
    stream.state[seq & (HISTORY - 1)] = STATE_REJECTED;
  }

  /** `pair`'s subscriber received `seq` while in generation `gen`. */
  received(pair: Pair, seq: number, gen: number): void {
    const s = pair.stream;
    pair.received++;
    if (!Number.isInteger(seq) || seq < 0 || seq >= s.next) {
      this.corrupt++;
      this.#corruptSample(`${s.name} -> ${pair.sub.name}: seq ${seq} never published`);
      return;
    }
    if (seq < s.classified) {
      pair.lateAfterClassified++;
      return;
    }
    const i = seq & (HISTORY - 1);
    if (pair.recv[i] > 0) {
      pair.duplicates++;
      if (pair.recv[i] < 255) pair.recv[i]++;
      this.#orderSample("duplicate", pair, seq, gen);
      return;
    }
    pair.recv[i] = 1;
    if (seq < pair.highest) {
      pair.reordered++;
      this.#orderSample("reordered", pair, seq, gen);
    } else pair.highest = seq;
    const g = gen + 1;
    if (s.recvGenMin[i] === 0 || g < s.recvGenMin[i]) s.recvGenMin[i] = g;
    if (g > s.recvGenMax[i]) s.recvGenMax[i] = g;
    if (s.state[i] === STATE_REJECTED) s.receivedRejected++;
  }

  #orderSample(what: "duplicate" | "reordered", pair: Pair, seq: number, gen: number) {
    if (this.orderSamples.length >= 50) return;
    const t = performance.now();
    this.orderSamples.push({
      what,
      stream: pair.stream.name,
      subscriber: pair.sub.name,
      seq,
      t,
      gen,
    });
  }

  /** A payload failed its checks. */
  corruptPayload(what: string): void {
    this.corrupt++;
    this.#corruptSample(what);
  }

  #corruptSample(what: string) {
    if (this.corruptSamples.length < 20) this.corruptSamples.push(what);
  }

  /**
   * Classify every message published before `before` (performance.now()) whose publish has
   * settled, in seq order, stopping at the first one that has not.
   */
  classifySettled(before: number): void {
    for (const s of this.streams) {
      let upTo = s.classified;
      while (upTo < s.next) {
        const i = upTo & (HISTORY - 1);
        if (s.tCall[i] >= before || s.state[i] === STATE_PENDING) break;
        if (this.#handoff(s, upTo) === undefined && s.state[i] !== STATE_REJECTED) break;
        upTo++;
      }
      this.classify(s, upTo, false);
    }
  }

  /** Classify everything (end of the run). */
  classifyAll(): void {
    for (const s of this.streams) this.classify(s, s.next, true);
  }

  /** Classify `stream`'s messages up to (not including) `upTo`. */
  classify(stream: Stream, upTo: number, final: boolean): void {
    upTo = Math.min(upTo, stream.next);
    while (stream.classified < upTo) {
      this.#classifyOne(stream, stream.classified, final);
      stream.classified++;
    }
  }

  /** Where `seq` entered the bus first: generation, time, publisher span. */
  #handoff(s: Stream, seq: number): { gen: number; t: number; span: Span } | undefined {
    const i = seq & (HISTORY - 1);
    const spans = s.pub.spans;
    const k = s.span[i];
    const st = s.state[i];
    if (st === STATE_SENT_IN_SESSION && k >= 0) {
      return { gen: spans[k].gen, t: s.tCall[i], span: spans[k] };
    }
    // Buffered: the next session's start. Rebuffered: the session after the one it was made in.
    let j: number;
    if (k >= 0) j = k + 1;
    else {
      const t = s.tCall[i];
      j = spans.length;
      while (j > 0 && spans[j - 1].start > t) j--;
    }
    const next = spans[j];
    return next ? { gen: next.gen, t: next.start, span: next } : undefined;
  }

  #classifyOne(s: Stream, seq: number, final: boolean) {
    const i = seq & (HISTORY - 1);
    const st = s.state[i];
    if (st === STATE_REJECTED) return;
    if (st === STATE_PENDING) {
      // Still unresolved at the end (or after a whole history): never sent.
      s.neverHandedOff++;
      return;
    }
    const primary = this.#handoff(s, seq);
    if (!primary) {
      if (final) s.neverHandedOff++;
      return;
    }
    const pubSpan = s.pub.spans[s.span[i]];
    // What a session's outbound ring still held when it ended is re-sent first in the next
    // one, however old: a message of an ended session may have a second hand-off there.
    let secondary: { gen: number; t: number; span: Span } | undefined;
    const next = pubSpan && st === STATE_SENT_IN_SESSION
      ? s.pub.spans[pubSpan.index + 1]
      : undefined;
    if (next) secondary = { gen: next.gen, t: next.start, span: next };
    const gMin = s.recvGenMin[i] - 1;
    const gMax = s.recvGenMax[i] - 1;
    const anyReceived = s.recvGenMin[i] !== 0;
    const receivedIn = (g: number) => anyReceived && gMin <= g && g <= gMax;
    const path = receivedIn(primary.gen)
      ? primary
      : secondary && receivedIn(secondary.gen)
      ? secondary
      : undefined;
    const pSide: { pair: Pair; reqP: boolean; reqS: boolean; at: { gen: number; t: number } }[] =
      [];
    for (const pair of s.pairs) {
      const q = pair.sub;
      const spanP = q.subscribedAt(primary.gen, primary.t);
      const spanS = secondary ? q.subscribedAt(secondary.gen, secondary.t) : undefined;
      const got = pair.recv[i] > 0;
      if (got) {
        if (spanP || spanS) {
          pair.required++;
          pair.delivered++;
        } else pair.extra++;
        continue;
      }
      if (!spanP && !spanS) {
        pair.notSubscribed++;
        continue;
      }
      if (path) {
        // The broker routed it (someone got it in that generation): missing at this subscriber.
        const qSpan = path === primary ? spanP : spanS;
        if (!qSpan) {
          pair.notSubscribed++;
          continue;
        }
        pair.required++;
        const qEnd = q.endOf(qSpan);
        if (qEnd - path.t <= IN_FLIGHT_WINDOW_MS) this.#report(pair, "subscriber_session_ended");
        else if (q.slow.take(path.t, path.t + REPORT_WINDOW_MS)) {
          this.#report(pair, "slow_consumer");
        } else if (!this.#takeErr(pair, path.t)) {
          this.#lost(pair, seq, "not_delivered_to_this_subscriber", path.span, qSpan, i);
        }
        continue;
      }
      pair.required++;
      pSide.push({
        pair,
        reqP: spanP !== undefined,
        reqS: spanS !== undefined,
        at: spanS ? secondary! : primary,
      });
    }
    if (pSide.length === 0) return;
    // Nobody got it: it never got past the broker's input. Only the publisher's side can report.
    const t = primary.t;
    let reason: ReportedReason | undefined;
    if (s.pub.flood.take(t, t + REPORT_WINDOW_MS)) reason = "flood";
    else if (
      pubSpan && s.pub.endOf(pubSpan) - s.tCall[i] <= UNCONFIRMED_WINDOW_MS &&
      s.pub.inFlight.takeKey(pubSpan.index)
    ) reason = "publisher_reported_in_flight";
    const strict = pSide.some((c) => c.reqS || (c.reqP && !secondary));
    for (const c of pSide) {
      if (reason) this.#report(c.pair, reason);
      else if (c.pair.sub.slow.take(c.at.t, c.at.t + REPORT_WINDOW_MS)) {
        this.#report(c.pair, "slow_consumer");
      } else if (!strict) c.pair.unverifiable++;
      else {
        const qSpan = c.pair.sub.subscribedAt(c.at.gen, c.at.t);
        this.#lost(c.pair, seq, "received_by_no_subscriber", primary.span, qSpan, i);
      }
    }
  }

  #takeErr(pair: Pair, t: number): boolean {
    for (const [code, b] of pair.sub.errs) {
      if (b.take(t, t + REPORT_WINDOW_MS)) {
        this.#report(pair, `err_${code}`);
        return true;
      }
    }
    return false;
  }

  #report(pair: Pair, reason: ReportedReason) {
    pair.reported.set(reason, (pair.reported.get(reason) ?? 0) + 1);
  }

  #lost(
    pair: Pair,
    seq: number,
    kind: LostKind,
    pubSpan: Span,
    subSpan: Span | undefined,
    i: number,
  ) {
    pair.lost.set(kind, (pair.lost.get(kind) ?? 0) + 1);
    const s = pair.stream;
    const t = s.tCall[i];
    const last = pair.lastLost;
    if (last && last.kind === kind && last.toSeq === seq - 1) {
      last.toSeq = seq;
      last.count++;
      last.tLast = t;
      return;
    }
    const st = s.state[i];
    const range: LostRange = {
      stream: s.name,
      subscriber: pair.sub.name,
      kind,
      fromSeq: seq,
      toSeq: seq,
      count: 1,
      tFirst: t,
      tLast: t,
      publisherSpan: spanInfo(s.pub, pubSpan),
      subscriberSpan: subSpan ? spanInfo(pair.sub, subSpan) : undefined,
      receivedBy: s.pairs.filter((p) => p.recv[i] > 0).map((p) => p.sub.name),
      mode: st === STATE_SENT_IN_SESSION ? "session" : s.span[i] >= 0 ? "rebuffered" : "buffered",
    };
    pair.lastLost = range;
    if (this.lostRanges.length < MAX_LOST_RANGES) this.lostRanges.push(range);
    else this.lostRangesDropped++;
  }

  /** Totals over every stream and pair. */
  totals(): LedgerTotals {
    const t: LedgerTotals = {
      attempted: 0,
      rejected: {},
      sent: 0,
      pending: 0,
      neverHandedOff: 0,
      potentialCopies: 0,
      notSubscribed: 0,
      required: 0,
      delivered: 0,
      extra: 0,
      reported: {},
      reportedTotal: 0,
      unverifiable: 0,
      lost: {},
      lostTotal: 0,
      received: 0,
      duplicates: 0,
      reordered: 0,
      lateAfterClassified: 0,
      receivedRejected: 0,
      forcedClassify: 0,
      corrupt: this.corrupt,
    };
    for (const s of this.streams) {
      t.attempted += s.attempted;
      t.sent += s.sent;
      t.pending += s.pending;
      t.neverHandedOff += s.neverHandedOff;
      t.receivedRejected += s.receivedRejected;
      t.forcedClassify += s.forcedClassify;
      for (const [code, n] of s.rejected) t.rejected[code] = (t.rejected[code] ?? 0) + n;
      for (const p of s.pairs) {
        t.notSubscribed += p.notSubscribed;
        t.required += p.required;
        t.delivered += p.delivered;
        t.extra += p.extra;
        t.unverifiable += p.unverifiable;
        t.received += p.received;
        t.duplicates += p.duplicates;
        t.reordered += p.reordered;
        t.lateAfterClassified += p.lateAfterClassified;
        for (const [r, n] of p.reported) {
          t.reported[r] = (t.reported[r] ?? 0) + n;
          t.reportedTotal += n;
        }
        for (const [k, n] of p.lost) {
          t.lost[k] = (t.lost[k] ?? 0) + n;
          t.lostTotal += n;
        }
      }
    }
    t.potentialCopies = t.notSubscribed + t.required + t.extra;
    return t;
  }
}

function spanInfo(c: ClientTimeline, s: Span) {
  return { index: s.index, gen: s.gen, start: s.start, end: c.endOf(s), endReason: s.endReason };
}

/**
 * The NATS bridge: attaches a broker to a NATS system the way a leaf node does, with the
 * official client (`@nats-io/transport-node`). Chosen local subjects go out (`export`),
 * chosen NATS subjects come in (`import`), so guests on different hosts talk without knowing
 * NATS is there. It lives inside the broker, next to the router:
 *
 * - **exports** are plain router subscriptions (one per export rule) whose target publishes to
 *   NATS. What reaches them was published by a session that its permissions allowed to; the
 *   bridge never awaits NATS there (the broker's hot path): {@link NatsLink} hands a message to
 *   the client at once, or keeps it in a bounded buffer while NATS is away or behind;
 * - **imports** are NATS subscriptions whose messages the bridge publishes into the router:
 *   local subscribers get them through their own subscriptions, which their permissions
 *   allowed, and the broker's limits (subject, headers, frame size) are checked first;
 * - **at most once, no loops**: `noEcho` on the connection, an origin header on everything
 *   sent ({@link ORIGIN_HEADER}); a message that arrived over a bridge (or carries an origin)
 *   is never exported again; `$VBUS.` and `_INBOX.` subjects never cross as such;
 * - **request/reply** both ways: a local requester's reply subject becomes
 *   `<natsInbox>.<token>` on NATS and the answers go back to that requester only; a remote
 *   request's reply subject becomes `_INBOX.$bridge.<id>.<token>` locally (an inbox, so a
 *   responder restricted on publish is granted it like any reply), which the bridge
 *   subscribes to and maps back. Routes live `limits.replyTtlMs`;
 * - **queue groups**: a local member is preferred, otherwise one remote member gets the
 *   message. A local publish reaches one local member of each group the router has; the
 *   export names those groups ({@link QUEUES_HEADER}). Each (pattern, group) with a local
 *   member is also a NATS queue subscription, so NATS picks one host for a group, and that
 *   host's copy is dropped when the origin already served the group; plain copies reach plain
 *   subscribers only;
 * - **faults** (see {@link NatsLink}): NATS unreachable at start or later leaves local traffic
 *   alone; the client reconnects with backoff and resubscribes; exports wait in the buffer
 *   (bounded, the oldest dropped and counted); what was handed to a connection that died
 *   before the server confirmed it is counted as `maybeLost`. Stats in {@link BridgeStats}.
 *
 * @example
 * ```ts
 * // Made by the Broker when its config has `bridge.nats`:
 * // const bridge = new NatsBridge({ config, router, limits, log, publisher: () => ... });
 * // bridge.start(); ... bridge.stats().connected ... await bridge.stop();
 * ```
 * @module
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { createInbox, type Msg, type MsgHdrs, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "../util/log.ts";
import type { DeliveryTarget, RouteEntry } from "../broker/router.ts";
import type { Limits } from "../protocol/limits.ts";
import { type Headers, STATUS_HEADER, STATUS_NO_RESPONDERS } from "../protocol/ops.ts";
import { headersSize } from "../protocol/heads.ts";
import { validateSubject } from "../subject/subject.ts";
import type { Bridge } from "./bridge.ts";
import type { NatsBridgeConfig } from "./bridge_config.ts";
import { BridgeDrop, type BridgeStats, newBridgeStats } from "./bridge_stats.ts";
import {
  fromNatsHeaders,
  hasOrigin,
  HeaderEncoder,
  type IncomingHeaders,
  ORIGIN_HEADER,
  QUEUES_HEADER,
} from "./nats_headers.ts";
import { NatsLink, type Outgoing } from "./nats_link.ts";
import type { QueueAwareRouter, QueueInterest } from "./queue_router.ts";
import { ReplyTable } from "./reply_table.ts";
import { intersect, SubjectMapping } from "./subject_map.ts";

export { ORIGIN_HEADER, QUEUES_HEADER };

/** The broker's own subjects: they never cross. */
const SYSTEM_PREFIX = "$VBUS.";
/** Reply subjects: they cross only through the reply mapping. */
const INBOX_PREFIX = "_INBOX.";
/** Bytes counted per buffered message on top of its payload, subjects and headers. */
const MESSAGE_OVERHEAD = 64;
/** Frame bytes a MSG adds around subject, reply, headers and payload (a generous bound). */
const FRAME_OVERHEAD = 64;

const NO_RESPONDERS_HEADERS: Headers = { [STATUS_HEADER]: STATUS_NO_RESPONDERS };
const EMPTY = new Uint8Array(0);

/** What the bridge needs from the broker. */
export interface NatsBridgeOptions {
  config: NatsBridgeConfig;
  router: QueueAwareRouter;
  /** The broker's limits: what an imported message must respect like any other. */
  limits: Limits;
  log: Logger;
  /** The session whose publish is being routed now: the requester of an exported request. */
  publisher(): DeliveryTarget | undefined;
}

/** Where an answer from NATS goes: the requesting session's own subscriptions. */
interface LocalRoute {
  target: DeliveryTarget;
  subject: string;
}

/** A NATS queue subscription standing for local queue-group members. */
interface QueueSub {
  remote: string;
  queue: string;
  rule: SubjectMapping;
  refs: number;
  sub?: Subscription;
}

/** See the module doc. */
export class NatsBridge implements Bridge {
  /** Value of {@link ORIGIN_HEADER} on everything this bridge sends. */
  readonly origin: string;
  #o: NatsBridgeOptions;
  #stats: BridgeStats;
  #link: NatsLink;
  #started = false;
  #stopped = false;
  #exports: SubjectMapping[];
  #imports: SubjectMapping[];
  #entries: RouteEntry[] = [];
  /** Local reply subjects of remote requests: `_INBOX.$bridge.<id>`. */
  #localInbox: string;
  /** Reply subjects on NATS of local requests: `<inboxPrefix>.<nuid>`. */
  #natsInbox: string;
  #toNats: ReplyTable<string>;
  #toLocal: ReplyTable<LocalRoute>;
  #queueSubs = new Map<string, QueueSub>();
  #headers: HeaderEncoder;
  #stopInterest?: () => void;
  // Set while the bridge publishes into the router: those messages are not exported again.
  #importing = false;

  /** Reads credentials and TLS files now: throws (naming the key) when one cannot be read. */
  constructor(opts: NatsBridgeOptions) {
    this.#o = opts;
    const config = opts.config;
    const id = randomBytes(4).toString("hex");
    this.origin = `${config.name ?? `vbus-${hostname()}`}.${id}`;
    this.#stats = newBridgeStats("nats", config.servers, this.origin);
    this.#headers = new HeaderEncoder(this.origin);
    this.#exports = config.export.map((r) => new SubjectMapping(r));
    this.#imports = config.import.map((r) => new SubjectMapping(r));
    this.#localInbox = `${INBOX_PREFIX}$bridge.${id}`;
    this.#natsInbox = createInbox(config.inboxPrefix);
    const limits = config.limits;
    this.#toNats = new ReplyTable({ ttlMs: limits.replyTtlMs, max: limits.maxReplies });
    this.#toLocal = new ReplyTable({ ttlMs: limits.replyTtlMs, max: limits.maxReplies });
    this.#link = new NatsLink({
      config,
      log: opts.log,
      stats: this.#stats,
      onConnection: () => this.#subscribeAll(),
    });
  }

  /** Is it connected to a NATS server now? */
  get connected(): boolean {
    return this.#link.connected;
  }

  /** Start exporting (into the buffer until connected) and connecting; returns at once. */
  start(): void {
    if (this.#started) throw new Error("bridge already started");
    this.#started = true;
    const router = this.#o.router;
    this.#exports.forEach((rule, i) => {
      this.#addEntry(
        -(i + 1),
        rule.local,
        (subject, reply, headers, payload, volatile) =>
          this.#export(rule, subject, reply, headers, payload, volatile),
      );
    });
    this.#addEntry(
      -(this.#exports.length + 1),
      `${this.#localInbox}.>`,
      (s, r, h, p, v) => this.#localReply(s, r, h, p, v),
    );
    this.#stopInterest = router.onQueueInterest({
      added: (i) => this.#queueInterest(i, +1),
      removed: (i) => this.#queueInterest(i, -1),
    });
    for (const i of router.queueInterests) this.#queueInterest(i, +1);
    this.#link.start();
  }

  /** Stop: local subjects no longer go out, NATS is given a moment to confirm, then closed. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const e of this.#entries.splice(0)) this.#o.router.remove(e);
    this.#stopInterest?.();
    await this.#link.stop();
  }

  /**
   * Resolves once the NATS server has everything sent so far (subscriptions included): a
   * PING's PONG. Rejects when not connected.
   */
  flush(): Promise<void> {
    return this.#link.flush();
  }

  /** A snapshot of the bridge's counters. */
  stats(): BridgeStats {
    const s = this.#stats;
    const buffered = this.#link.buffered;
    s.buffered = buffered.messages;
    s.bufferedBytes = buffered.bytes;
    s.pendingReplies = this.#toNats.size + this.#toLocal.size;
    s.subscriptions = this.#link.subscriptions;
    return structuredClone(s);
  }

  /** A plain router subscription of the bridge's own. */
  #addEntry(
    sid: number,
    subject: string,
    on: (
      subject: string,
      reply: string | null,
      headers: Headers | null,
      payload: Uint8Array,
      volatile: boolean,
    ) => boolean,
  ) {
    const entry: RouteEntry = {
      sid,
      subject,
      queue: null,
      max: 0,
      delivered: 0,
      target: {
        deliver: (_e, subject, reply, headers, payload, volatile) =>
          on(subject, reply, headers, payload, volatile === true),
      },
    };
    this.#entries.push(entry);
    this.#o.router.add(entry);
  }

  /** A new NATS connection: imports, the reply inbox, and the queue groups with local members. */
  #subscribeAll() {
    for (const rule of this.#imports) {
      this.#link.subscribe(rule.remote, undefined, (msg) => this.#importPlain(rule, msg));
    }
    this.#link.subscribe(`${this.#natsInbox}.>`, undefined, (msg) => this.#replyFromNats(msg));
    for (const q of this.#queueSubs.values()) this.#subscribeQueue(q);
  }

  // ---- out: local -> NATS ------------------------------------------------------------------

  /** Router target of an export rule (the broker's hot path: never waits). */
  #export(
    rule: SubjectMapping,
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile: boolean,
  ): boolean {
    if (this.#importing || this.#stopped) return true;
    if (subject.startsWith(SYSTEM_PREFIX) || subject.startsWith(INBOX_PREFIX)) return true;
    if (headers !== null && hasOrigin(headers)) return true; // it crossed a bridge already
    return this.#out(
      rule.toRemote(subject),
      this.#natsReply(reply),
      headers,
      this.#o.router.queueGroupsFor(subject),
      payload,
      volatile,
    );
  }

  /** Router target of the bridge's local inbox: a local answer to a remote request. */
  #localReply(
    subject: string,
    reply: string | null,
    headers: Headers | null,
    payload: Uint8Array,
    volatile: boolean,
  ): boolean {
    if (this.#stopped) return true;
    const natsSubject = this.#toNats.get(subject.slice(this.#localInbox.length + 1));
    if (natsSubject === undefined) {
      this.#link.drop(BridgeDrop.ReplyUnknown);
      return false;
    }
    return this.#out(natsSubject, this.#natsReply(reply), headers, [], payload, volatile);
  }

  /**
   * The NATS reply subject standing for a local one: `<natsInbox>.<token>`, whose answers go
   * to the session publishing now (the requester), and only to it.
   */
  #natsReply(reply: string | null): string | undefined {
    if (reply === null) return undefined;
    const requester = this.#o.publisher();
    if (!requester) return undefined;
    return `${this.#natsInbox}.${this.#toLocal.add({ target: requester, subject: reply })}`;
  }

  /** Build a message for NATS and send it now, or buffer it. */
  #out(
    subject: string,
    reply: string | undefined,
    headers: Headers | null,
    queues: readonly string[],
    payload: Uint8Array,
    volatile: boolean,
  ): boolean {
    let h: MsgHdrs;
    try {
      h = this.#headers.encode(headers, queues);
    } catch {
      this.#link.drop(BridgeDrop.BadHeaders);
      return false;
    }
    const out: Outgoing = {
      subject,
      reply,
      headers: h,
      // A view into a guest's ring is valid only during this call; the client keeps the bytes.
      payload: volatile ? payload.slice() : payload,
      size: payload.length + subject.length + (reply?.length ?? 0) +
        (headers ? headersSize(headers) : 0) + MESSAGE_OVERHEAD,
    };
    this.#link.send(out);
    return true;
  }

  // ---- in: NATS -> local -------------------------------------------------------------------

  /** Checks an imported message must pass; its local form, or undefined when dropped. */
  #incoming(
    rule: SubjectMapping,
    msg: Msg,
    queue: string | undefined,
  ):
    | {
      subject: string;
      reply: string | null;
      /** The reply route's token (forgotten again when nobody got the request). */
      token: string | undefined;
      headers: Headers | null;
      payload: Uint8Array;
    }
    | undefined {
    // The client decodes subject and reply again on every access: read them once.
    const natsSubject = msg.subject;
    // Answers to our requests come through the inbox subscription; other inboxes are not ours.
    if (natsSubject.startsWith(INBOX_PREFIX) || natsSubject.startsWith(this.#natsInbox)) return;
    let incoming: IncomingHeaders;
    try {
      incoming = fromNatsHeaders(msg.headers);
    } catch {
      this.#link.drop(BridgeDrop.BadHeaders);
      return;
    }
    if (incoming.origin === this.origin) return; // our own (noEcho already prevents it)
    if (queue !== undefined && incoming.queues.includes(queue)) return; // served at its origin
    // Taken in from here on (dropped or delivered); the copies ignored above are not counted.
    const payload = msg.data;
    const s = this.#stats;
    s.msgsIn++;
    s.bytesIn += payload.length;
    const subject = rule.toLocal(natsSubject);
    if (subject.startsWith(SYSTEM_PREFIX) || subject.startsWith(INBOX_PREFIX)) return;
    const limits = this.#o.limits;
    if (validateSubject(subject, limits.maxSubjectBytes, limits.maxSubjectTokens)) {
      this.#link.drop(BridgeDrop.BadSubject);
      return;
    }
    const headers = incoming.headers;
    const hBytes = headers ? headersSize(headers) : 0;
    if (hBytes > limits.maxHeaderBytes) {
      this.#link.drop(BridgeDrop.BadHeaders);
      return;
    }
    const natsReply = msg.reply;
    const replyBytes = natsReply ? this.#localInbox.length + 16 : 0;
    if (
      FRAME_OVERHEAD + subject.length + replyBytes + hBytes + payload.length > limits.maxFrameBytes
    ) {
      this.#link.drop(BridgeDrop.TooLarge);
      return;
    }
    const token = natsReply ? this.#toNats.add(natsReply) : undefined;
    const reply = token !== undefined ? `${this.#localInbox}.${token}` : null;
    return { subject, reply, token, headers, payload };
  }

  /** A message on an import subscription: every plain local subscriber gets it. */
  #importPlain(rule: SubjectMapping, msg: Msg) {
    const m = this.#incoming(rule, msg, undefined);
    if (!m) return;
    this.#importing = true;
    let delivered = 0;
    try {
      delivered = this.#o.router.publishPlain(m.subject, m.reply, m.headers, m.payload);
    } finally {
      this.#importing = false;
    }
    if (delivered === 0 && m.token !== undefined) this.#toNats.delete(m.token);
  }

  /** A message NATS gave this host for a queue group: one local member gets it. */
  #importQueue(rule: SubjectMapping, queue: string, msg: Msg) {
    const m = this.#incoming(rule, msg, queue);
    if (!m) return;
    this.#importing = true;
    let delivered = 0;
    try {
      delivered = this.#o.router.publishToGroup(queue, m.subject, m.reply, m.headers, m.payload);
    } finally {
      this.#importing = false;
    }
    if (delivered === 0 && m.token !== undefined) this.#toNats.delete(m.token);
  }

  /** An answer on the bridge's NATS inbox: to the local requester that asked. */
  #replyFromNats(msg: Msg) {
    const s = this.#stats;
    const payload = msg.data;
    s.msgsIn++;
    s.bytesIn += payload.length;
    const token = msg.subject.slice(this.#natsInbox.length + 1);
    const route = this.#toLocal.get(token);
    if (!route) {
      this.#link.drop(BridgeDrop.ReplyUnknown);
      return;
    }
    let incoming: IncomingHeaders;
    try {
      incoming = fromNatsHeaders(msg.headers);
    } catch {
      this.#link.drop(BridgeDrop.BadHeaders);
      return;
    }
    if (incoming.status === 503) {
      // NATS knew no subscriber at all: the requester learns it at once, as it would locally.
      this.#toLocal.delete(token);
      this.#o.router.deliverTo(route.target, route.subject, NO_RESPONDERS_HEADERS, EMPTY);
      return;
    }
    const headers = incoming.headers;
    if (headers && headersSize(headers) > this.#o.limits.maxHeaderBytes) {
      this.#link.drop(BridgeDrop.BadHeaders);
      return;
    }
    if (FRAME_OVERHEAD + route.subject.length + payload.length > this.#o.limits.maxFrameBytes) {
      this.#link.drop(BridgeDrop.TooLarge);
      return;
    }
    this.#o.router.deliverTo(route.target, route.subject, headers, payload);
  }

  // ---- queue groups --------------------------------------------------------------------------

  /** A (pattern, group) pair got its first local member (+1) or lost its last (-1). */
  #queueInterest(interest: QueueInterest, change: 1 | -1) {
    for (const rule of this.#imports) {
      const local = intersect(interest.pattern, rule.local);
      if (local === null) continue;
      const first = local.split(".")[0];
      if (first === "$VBUS" || first === "_INBOX") continue;
      const remote = rule.toRemote(local);
      const key = `${interest.queue}\u0000${remote}`;
      let q = this.#queueSubs.get(key);
      if (change > 0) {
        if (q) {
          q.refs++;
          continue;
        }
        q = { remote, queue: interest.queue, rule, refs: 1 };
        this.#queueSubs.set(key, q);
        if (!this.#stopped) this.#subscribeQueue(q);
      } else if (q && --q.refs === 0) {
        this.#queueSubs.delete(key);
        if (q.sub) this.#link.unsubscribe(q.sub);
      }
    }
  }

  #subscribeQueue(q: QueueSub) {
    q.sub = this.#link.subscribe(
      q.remote,
      q.queue,
      (msg) => this.#importQueue(q.rule, q.queue, msg),
    );
  }
}

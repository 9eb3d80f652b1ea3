/**
 * The bridge's connection to NATS, built so that its caller never waits: {@link NatsLink.send}
 * hands a message to the official client at once, or keeps it in a bounded
 * {@link ExportBuffer} while NATS is away or behind, and returns.
 *
 * - **connecting**: at start it tries the configured servers again and again (backoff from
 *   `reconnect.initialMs` to `reconnect.maxMs`), saying why in the log and in `lastError`;
 *   once connected, the client itself reconnects and fails over (servers gossiped by the
 *   cluster included) with the same backoff, and re-sends the subscriptions;
 * - **in flight**: one PING is kept in flight while anything is unconfirmed; its PONG confirms
 *   everything sent before it. More than `limits.inFlightBytes` unconfirmed (a server that
 *   does not read) sends further messages to the buffer instead, so a slow NATS fills the
 *   bounded buffer, never the broker's memory;
 * - **a lost connection**: what was handed to it and not confirmed may or may not have
 *   reached NATS: counted as `maybeLost`. The client drops what it had not written yet, so
 *   nothing is handed to it while disconnected: the buffer keeps it (the oldest dropped and
 *   counted beyond the bound) until the client has reconnected.
 *
 * @example
 * ```ts
 * // const link = new NatsLink({ config, log, stats, onConnection: (nc) => subscribe(nc) });
 * // link.start();
 * // link.send({ subject: "a.b", reply: undefined, headers, payload, size: 64 });
 * // await link.stop();
 * ```
 * @module
 */
import { accessSync, constants as fsConstants, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { setImmediate } from "node:timers";
import {
  connect,
  credsAuthenticator,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  nkeyAuthenticator,
  type NodeConnectionOptions,
  type Subscription,
} from "@nats-io/transport-node";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import type { Logger } from "../util/log.ts";
import type { NatsBridgeConfig } from "./bridge_config.ts";
import { BridgeDrop, type BridgeStats } from "./bridge_stats.ts";
import { ExportBuffer } from "./export_buffer.ts";

/** Messages handed to the client per turn while the buffer drains. */
const DRAIN_BATCH = 1024;
/** How long a connection attempt may take. */
const CONNECT_TIMEOUT_MS = 5000;
/** How often the client PINGs the server when nothing else proves it alive. */
const PING_INTERVAL_MS = 10_000;
/** Longest wait before a PING confirms what was sent (unless much is in flight: at once). */
const CONFIRM_DELAY_MS = 10;
/** How long stop() waits for NATS to confirm what it was sent. */
const STOP_FLUSH_MS = 1000;
/** Shortest time between two log lines about drops. */
const DROP_LOG_INTERVAL_MS = 1000;

/** A message on its way to NATS. */
export interface Outgoing {
  subject: string;
  reply: string | undefined;
  headers: MsgHdrs;
  payload: Uint8Array;
  /** Bytes it counts for (buffer and in-flight bounds). */
  size: number;
}

/** What a {@link NatsLink} needs. */
export interface NatsLinkOptions {
  config: NatsBridgeConfig;
  log: Logger;
  /** Counters it keeps up to date (connection, messages out, drops). */
  stats: BridgeStats;
  /** A new connection object (not a reconnect: the client re-sends subscriptions itself). */
  onConnection(nc: NatsConnection): void;
}

type State = "idle" | "connecting" | "connected" | "disconnected" | "closed";

/** See the module doc. */
export class NatsLink {
  #o: NatsLinkOptions;
  #log: Logger;
  #stats: BridgeStats;
  #state: State = "idle";
  #nc?: NatsConnection;
  #subscriptions = 0;
  #buffer: ExportBuffer<Outgoing>;
  // Messages (and bytes) handed to the client, and how many of them the server confirmed.
  #published = 0;
  #publishedBytes = 0;
  #confirmed = 0;
  #confirmedBytes = 0;
  // The connection a confirming PING is in flight on (a closed one may never answer).
  #confirmingOn?: NatsConnection;
  #drainScheduled = false;
  #confirmTimer?: ReturnType<typeof setTimeout>;
  // When the current outage began, as the client's backoff sees it.
  #awaySince?: number;
  #abort = new AbortController();
  #run?: Promise<void>;
  #connectOptions: NodeConnectionOptions;
  #dropsToLog = 0;
  #dropLoggedAt = 0;
  #dropLogTimer?: ReturnType<typeof setTimeout>;

  /** Reads credentials and TLS files now: throws (naming the key) when one cannot be read. */
  constructor(opts: NatsLinkOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#stats = opts.stats;
    const limits = opts.config.limits;
    this.#buffer = new ExportBuffer(
      { maxMessages: limits.bufferMessages, maxBytes: limits.bufferBytes },
      (m) => m.size,
    );
    this.#connectOptions = connectionOptions(opts.config, () => this.#reconnectDelay());
  }

  /** Connected to a NATS server now? */
  get connected(): boolean {
    return this.#state === "connected";
  }

  /** Messages and bytes waiting in the buffer. */
  get buffered(): { messages: number; bytes: number } {
    return { messages: this.#buffer.length, bytes: this.#buffer.bytes };
  }

  /** NATS subscriptions on the current connection. */
  get subscriptions(): number {
    return this.#subscriptions;
  }

  /** Start connecting (in the background); returns at once. */
  start(): void {
    if (this.#state !== "idle") throw new Error("NATS link already started");
    this.#state = "connecting";
    this.#run = this.#connectLoop();
  }

  /** Give NATS a moment to confirm what it has, then close; what waited is dropped, counted. */
  async stop(): Promise<void> {
    if (this.#state === "idle" || this.#state === "closed") {
      this.#state = "closed";
      return;
    }
    const wasConnected = this.#state === "connected";
    this.#state = "closed";
    this.#abort.abort();
    const left = this.#buffer.clear();
    if (left > 0) this.drop(BridgeDrop.Stopped, left);
    const nc = this.#nc;
    if (nc) {
      if (wasConnected) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          nc.flush().catch(() => {}),
          new Promise<void>((r) => timer = setTimeout(r, STOP_FLUSH_MS)),
        ]);
        clearTimeout(timer);
      }
      await nc.close().catch(() => {});
    }
    await this.#run;
    if (this.#confirmTimer) clearTimeout(this.#confirmTimer);
    if (this.#dropLogTimer) clearTimeout(this.#dropLogTimer);
    this.#flushDropLog();
    this.#stats.connected = false;
  }

  /**
   * Resolves once the server has everything sent so far (subscriptions included): a PING's
   * PONG. Rejects when not connected.
   */
  async flush(): Promise<void> {
    const nc = this.#nc;
    if (!nc || this.#state !== "connected") {
      throw new VbusError(ErrorCode.Closed, "the bridge is not connected to NATS");
    }
    await nc.flush();
  }

  /**
   * Subscribe on the current connection (the client keeps it across reconnects); undefined
   * when there is none yet ({@link NatsLinkOptions.onConnection} comes later).
   */
  subscribe(subject: string, queue: string | undefined, on: (msg: Msg) => void) {
    const nc = this.#nc;
    if (!nc || this.#state === "closed") return undefined;
    this.#subscriptions++;
    return nc.subscribe(subject, {
      ...(queue !== undefined ? { queue } : {}),
      callback: (err, msg) => {
        if (err || this.#state === "closed") return;
        try {
          on(msg);
        } catch (e) {
          // A fault of ours must not end the client's subscription.
          this.#log.error("bridge failed on a message from NATS", {
            subject: msg.subject,
            error: (e as Error).message,
          });
        }
      },
    });
  }

  /** End a subscription made by {@link subscribe} on the current connection. */
  unsubscribe(sub: Subscription): void {
    if (sub.isClosed()) return;
    sub.unsubscribe();
    this.#subscriptions--;
  }

  /** Hand a message to NATS now, or keep it in the buffer; never waits. */
  send(out: Outgoing): void {
    if (
      this.#state === "connected" && this.#buffer.length === 0 &&
      this.#publishedBytes - this.#confirmedBytes < this.#o.config.limits.inFlightBytes
    ) {
      this.#publish(out);
      return;
    }
    if (this.#state === "closed") return;
    const dropped = this.#buffer.push(out);
    if (dropped > 0) this.drop(BridgeDrop.BufferFull, dropped);
  }

  /** Count `n` messages not carried, and log it (one line per interval at most). */
  drop(reason: string, n = 1): void {
    const s = this.#stats;
    s.dropped += n;
    s.drops[reason] = (s.drops[reason] ?? 0) + n;
    this.#dropsToLog += n;
    const now = Date.now();
    if (now - this.#dropLoggedAt >= DROP_LOG_INTERVAL_MS) this.#flushDropLog();
    else {
      this.#dropLogTimer ??= setTimeout(() => {
        this.#dropLogTimer = undefined;
        this.#flushDropLog();
      }, DROP_LOG_INTERVAL_MS - (now - this.#dropLoggedAt));
      (this.#dropLogTimer as { unref?: () => void }).unref?.();
    }
  }

  #flushDropLog() {
    if (this.#dropsToLog === 0) return;
    this.#dropLoggedAt = Date.now();
    this.#log.warn("bridge dropped messages", {
      dropped: this.#dropsToLog,
      total: this.#stats.dropped,
      byReason: JSON.stringify(this.#stats.drops),
    });
    this.#dropsToLog = 0;
  }

  // ---- out -----------------------------------------------------------------------------------

  /** Hand one message to the client (it writes it on its next turn). */
  #publish(out: Outgoing) {
    const nc = this.#nc!;
    try {
      nc.publish(out.subject, out.payload, { reply: out.reply, headers: out.headers });
    } catch (err) {
      const msg = (err as Error).message;
      this.drop(
        /max_payload/.test(msg)
          ? BridgeDrop.TooLarge // the server's limit
          : nc.isClosed()
          ? BridgeDrop.Stopped
          : BridgeDrop.BadSubject,
      );
      return;
    }
    this.#published++;
    this.#publishedBytes += out.size;
    this.#stats.msgsOut++;
    this.#stats.bytesOut += out.payload.length;
    this.#confirm();
  }

  /**
   * Keep one PING in flight while anything is unconfirmed (see the module doc): sent once a
   * quarter of the in-flight bound is unconfirmed, or {@link CONFIRM_DELAY_MS} after the first
   * unconfirmed message (a PING per message would double a request's traffic).
   */
  #confirm(now = false) {
    const nc = this.#nc;
    if (!nc || this.#confirmingOn === nc || this.#state !== "connected") return;
    const unconfirmed = this.#publishedBytes - this.#confirmedBytes;
    if (!now && unconfirmed < this.#o.config.limits.inFlightBytes / 4) {
      if (this.#confirmTimer) return;
      this.#confirmTimer = setTimeout(() => {
        this.#confirmTimer = undefined;
        this.#confirm(true);
      }, CONFIRM_DELAY_MS);
      (this.#confirmTimer as { unref?: () => void }).unref?.();
      return;
    }
    if (this.#confirmTimer) clearTimeout(this.#confirmTimer);
    this.#confirmTimer = undefined;
    this.#confirmingOn = nc;
    const mark = this.#published;
    const markBytes = this.#publishedBytes;
    const done = () => {
      if (this.#confirmingOn === nc) this.#confirmingOn = undefined;
    };
    nc.flush().then(
      () => {
        done();
        if (this.#nc !== nc || this.#state !== "connected") return;
        if (mark > this.#confirmed) {
          this.#confirmed = mark;
          this.#confirmedBytes = markBytes;
        }
        if (this.#published > this.#confirmed) this.#confirm();
        this.#drain();
      },
      done, // the connection was lost: #disconnected accounted for what it took
    );
  }

  /** Send what waited, in order, while connected and within the in-flight bound. */
  #drain() {
    if (this.#drainScheduled) return;
    const limit = this.#o.config.limits.inFlightBytes;
    let n = 0;
    while (
      this.#state === "connected" && this.#buffer.length > 0 &&
      this.#publishedBytes - this.#confirmedBytes < limit
    ) {
      if (++n > DRAIN_BATCH) {
        // Let the rest of the broker run between batches.
        this.#drainScheduled = true;
        setImmediate(() => {
          this.#drainScheduled = false;
          this.#drain();
        });
        return;
      }
      this.#publish(this.#buffer.shift()!);
    }
  }

  // ---- connection ----------------------------------------------------------------------------

  /** Was stop() called? (A method: TypeScript cannot see that an await changed the state.) */
  #stopped(): boolean {
    return this.#state === "closed";
  }

  /**
   * The client's reconnect delay: it grows with the time NATS has been away, from initialMs
   * to maxMs (the client asks before every attempt, so this must not count calls).
   */
  #reconnectDelay(): number {
    const now = Date.now();
    this.#awaySince ??= now;
    const { initialMs, maxMs } = this.#o.config.reconnect;
    const base = Math.min(maxMs, Math.max(initialMs, now - this.#awaySince));
    return Math.round(base * (1 + Math.random() * 0.1));
  }

  /** Connect (again and again, with backoff) until connected or stopped. */
  async #connectLoop(): Promise<void> {
    const backoff = new Backoff(this.#o.config.reconnect);
    let lastError = "";
    while (!this.#stopped()) {
      let nc: NatsConnection;
      try {
        nc = await connect(this.#connectOptions);
      } catch (err) {
        const msg = (err as Error).message;
        this.#stats.lastError = msg;
        if (msg !== lastError) {
          this.#log.warn("NATS not reachable, retrying (local traffic is not affected)", {
            servers: this.#o.config.servers.join(","),
            error: msg,
          });
        }
        lastError = msg;
        await sleep(backoff.next(), this.#abort.signal);
        continue;
      }
      if (this.#stopped()) {
        await nc.close().catch(() => {});
        return;
      }
      const err = await this.#attach(nc);
      if (this.#stopped()) return;
      // The client gave up (e.g. an authorization error twice): start over with a new one.
      this.#detach(err?.message ?? "connection closed");
      backoff.reset();
      await sleep(backoff.next(), this.#abort.signal);
    }
  }

  /** A new connection object: follow its status, let the owner subscribe, send what waited. */
  #attach(nc: NatsConnection): Promise<Error | void> {
    this.#nc = nc;
    this.#subscriptions = 0;
    const status = nc.status();
    this.#connected(nc, false);
    this.#o.onConnection(nc);
    (async () => {
      for await (const s of status) {
        if (this.#nc !== nc) break;
        switch (s.type) {
          case "disconnect":
            this.#disconnected(s.server);
            break;
          case "reconnect":
            this.#connected(nc, true);
            break;
          case "error":
            this.#stats.lastError = s.error.message;
            this.#log.warn("NATS error", { error: s.error.message });
            break;
          case "ldm":
            this.#log.info("NATS server entering lame duck mode; the client will move", {
              server: s.server,
            });
            break;
        }
      }
    })().catch(() => {});
    return nc.closed();
  }

  /** The connection object is gone for good (closed by the client). */
  #detach(why: string) {
    if (this.#state === "connected") this.#disconnected(this.#stats.server ?? "?");
    this.#nc = undefined;
    this.#subscriptions = 0;
    this.#stats.lastError = why;
    this.#log.warn("NATS connection closed, connecting again", { error: why });
  }

  #connected(nc: NatsConnection, reconnect: boolean) {
    if (this.#stopped()) return;
    this.#state = "connected";
    this.#awaySince = undefined;
    const s = this.#stats;
    s.connected = true;
    s.connects++;
    if (reconnect) s.reconnects++;
    s.server = nc.getServer();
    s.serverName = nc.info?.server_name ?? null;
    this.#log.info(reconnect ? "reconnected to NATS" : "connected to NATS", {
      server: s.server,
      name: s.serverName ?? "?",
      buffered: this.#buffer.length,
    });
    this.#drain();
  }

  #disconnected(server: string) {
    if (this.#stopped()) return;
    this.#state = "disconnected";
    const s = this.#stats;
    s.connected = false;
    s.disconnects++;
    // Handed to the connection but not confirmed: it may or may not have reached NATS.
    const unconfirmed = this.#published - this.#confirmed;
    s.maybeLost += unconfirmed;
    this.#confirmed = this.#published;
    this.#confirmedBytes = this.#publishedBytes;
    const limits = this.#o.config.limits;
    this.#log.warn("NATS connection lost; exports wait in the buffer", {
      server,
      maybeLost: unconfirmed,
      bufferMessages: limits.bufferMessages,
      bufferBytes: limits.bufferBytes,
    });
  }
}

/** The official client's options from the config (credentials and TLS files checked now). */
function connectionOptions(
  c: NatsBridgeConfig,
  reconnectDelay: () => number,
): NodeConnectionOptions {
  const at = "bridge.nats";
  const read = (file: string, key: string): Uint8Array => {
    try {
      return new Uint8Array(readFileSync(file));
    } catch (err) {
      throw new VbusError(
        ErrorCode.Port,
        `${at}.${key}: cannot read ${file}: ${(err as Error).message}`,
      );
    }
  };
  const opts: NodeConnectionOptions = {
    servers: c.servers,
    name: c.name ?? `vbus-${hostname()}`,
    noEcho: true,
    reconnect: true,
    maxReconnectAttempts: -1,
    timeout: CONNECT_TIMEOUT_MS,
    // A server that stops answering (without closing) is left after about 30 s, not 4 minutes.
    pingInterval: PING_INTERVAL_MS,
    maxPingOut: 3,
    inboxPrefix: c.inboxPrefix,
    reconnectDelayHandler: reconnectDelay,
  };
  const auth = c.auth;
  if (auth) {
    if ("user" in auth) {
      opts.user = auth.user;
      if (auth.pass !== undefined) opts.pass = auth.pass;
    } else if ("token" in auth) opts.token = auth.token;
    else if ("nkeySeedFile" in auth) {
      const seed = new TextDecoder().decode(read(auth.nkeySeedFile, "auth.nkeySeedFile")).trim();
      opts.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
    } else {
      opts.authenticator = credsAuthenticator(read(auth.credsFile, "auth.credsFile"));
    }
  }
  if (c.tls) {
    for (const k of ["caFile", "certFile", "keyFile"] as const) {
      const file = c.tls[k];
      if (file === undefined) continue;
      try {
        accessSync(file, fsConstants.R_OK);
      } catch (err) {
        throw new VbusError(
          ErrorCode.Port,
          `${at}.tls.${k}: cannot read ${file}: ${(err as Error).message}`,
        );
      }
    }
    opts.tls = { ...c.tls };
  }
  return opts;
}

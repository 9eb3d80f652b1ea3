/**
 * The chaos soak's well-behaved clients: simulated VMs (guest clients on a SimulatedVm port,
 * with or without their shared-memory ring) and host clients (on the broker's socket, rings
 * with doorbell or futex wake-ups, or the port stream only). Each peer publishes one numbered
 * stream, subscribes to other peers' streams, asks requests of the echo service and may serve
 * it; the auditor subscribes to every stream and reconnects fast; the sink counts the hostile
 * VM's flood. Everything they see goes to the {@link Ledger}.
 *
 * Payloads are binary: a 16-byte header (magic, stream id, seq, length) and a body whose bytes
 * depend on the seq, so a subscriber checks the length and sampled bytes of every message.
 *
 * @example
 * ```ts
 * import { SoakClient } from "./soak_clients.ts";
 * const c = new SoakClient({ name: "h1", kind: "host", path: "ring", role: "peer",
 *   subscribeTo: ["vm1"], replier: false, requester: true }, ctx);
 * await c.start();
 * ```
 * @module
 */
import { type Bus, connect } from "../../src/client/bus.ts";
import type { ConnectOptions } from "../../src/client/options.ts";
import type { Msg } from "../../src/client/msg.ts";
import type { SimulatedVm } from "../../src/sim/simulated_vm.ts";
import type { ClientTimeline, Ledger, Pair, Span, Stream } from "./soak_ledger.ts";

/** What one client is and does. */
export interface ClientSpec {
  name: string;
  kind: "vm" | "host";
  /** "ring": shared memory (a VM's region, or a host region from the broker); "stream": the port. */
  path: "ring" | "stream";
  /** Host ring clients: how the broker wakes them. */
  wake?: "doorbell" | "futex";
  /** peer: publishes and subscribes; auditor: subscribes to all streams; sink: hostile.> only. */
  role: "peer" | "auditor" | "sink";
  /** Names of the peers whose streams it subscribes to (peer role). */
  subscribeTo: string[];
  replier: boolean;
  requester: boolean;
}

/** What the clients share. */
export interface SoakContext {
  ledger: Ledger;
  /** The broker's host socket. */
  listen: string;
  /** performance.now() at the soak's start (times in reports are relative to it). */
  t0: number;
  /** Simulated VMs by name (for vm clients). */
  vms: Map<string, { vm: SimulatedVm; shm?: string }>;
  /** Stream of each publishing peer, by peer name. */
  streams: Map<string, Stream>;
}

/** A disconnect seen by a client, for the report. */
export interface DisconnectRecord {
  client: string;
  /** Seconds since the soak started. */
  t: number;
  reason: string;
  /** The last (at most 3) error events in the 3 s before it. */
  recentErrors: { t: number; code: string; message: string }[];
  gen: number;
}

/** Request/reply counts of one client. */
export interface RequestCounts {
  sent: number;
  ok: number;
  failed: Record<string, number>;
  /** Replies that were not the echo of the request: must be 0. */
  wrong: number;
  /** Still unsettled at the end (requests have a timeout): must be 0. */
  pending: number;
}

const MAGIC = 0x4b414f53; // "SOAK"
const RR_MAGIC = 0x52524b53; // "SKRR"
/** Request timeout: long enough for a broker restart to be reported as a timeout, not to hang. */
const REQUEST_TIMEOUT_MS = 2000;
const LOST_FIELD = /lost|unconfirmed/i;

/**
 * Size of message `seq` of stream `stream`: mostly small, some KiB, a few 16 and 64 KiB
 * (deterministic, so the subscriber can check it).
 *
 * @example
 * ```ts
 * payloadSize(0, 7); // the same number every time
 * ```
 */
export function payloadSize(stream: number, seq: number): number {
  const h = Math.imul(seq + 1, 2654435761) ^ Math.imul(stream + 7, 40503);
  const u = h >>> 0;
  const r = u % 1000;
  if (r < 600) return 16 + ((u >>> 10) % 100);
  if (r < 950) return 1024 + ((u >>> 10) % 3072);
  if (r < 995) return 16384;
  return 65536;
}

function bodyByte(seq: number, i: number): number {
  return (seq * 31 + i) & 0xff;
}

/**
 * The payload of message `seq` of `stream`.
 *
 * @example
 * ```ts
 * checkPayload(makePayload(1, 2)); // { stream: 1, seq: 2 }
 * ```
 */
export function makePayload(stream: number, seq: number): Uint8Array {
  const size = payloadSize(stream, seq);
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint32(4, stream, true);
  v.setUint32(8, seq, true);
  v.setUint32(12, size, true);
  for (let i = 16; i < size; i++) b[i] = bodyByte(seq, i);
  return b;
}

/** Check a payload: its stream and seq, or what is wrong with it. */
export function checkPayload(b: unknown): { stream: number; seq: number } | string {
  if (!(b instanceof Uint8Array)) return `not binary (${typeof b})`;
  if (b.length < 16) return `${b.length} bytes, shorter than the header`;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(0, true) !== MAGIC) return "bad magic";
  const stream = v.getUint32(4, true), seq = v.getUint32(8, true), size = v.getUint32(12, true);
  const want = payloadSize(stream, seq);
  if (size !== want || b.length !== want) {
    return `stream ${stream} seq ${seq}: ${b.length} bytes, want ${want}`;
  }
  for (const i of [16, size >> 1, size - 1]) {
    if (i >= 16 && i < size && b[i] !== bodyByte(seq, i)) {
      return `stream ${stream} seq ${seq}: byte ${i} differs`;
    }
  }
  return { stream, seq };
}

/** A numeric field whose name says "lost", at the top level or one level down. */
function lostField(o: unknown, depth = 0): { key: string; value: number } | undefined {
  if (!o || typeof o !== "object") return undefined;
  for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
    if (typeof v === "number" && LOST_FIELD.test(k)) return { key: k, value: v };
  }
  if (depth === 0) {
    for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
      const f = lostField(v, 1);
      if (f) return { key: `${k}.${f.key}`, value: f.value };
    }
  }
  return undefined;
}

/** One well-behaved client. */
export class SoakClient {
  bus?: Bus;
  readonly timeline: ClientTimeline;
  readonly errors: Record<string, number> = {};
  readonly slowReports: { where: string; n: number }[] = [];
  readonly disconnects: DisconnectRecord[] = [];
  readonly rr: RequestCounts = { sent: 0, ok: 0, failed: {}, wrong: 0, pending: 0 };
  /** Messages the sink got from the hostile VM. */
  sinkReceived = 0;
  /** Where this client's possibly-lost-in-flight count came from ("none" if its bus has none). */
  inFlightSource = "none";
  inFlightReported = 0;
  /** Messages it received (for the drain's "no more progress" test). */
  receipts = 0;
  #recentErrors: { t: number; code: string; message: string }[] = [];
  #pairs = new Map<number, Pair>();
  #statsLost?: number;
  #lastDisconnect?: unknown;
  #requesting = false;
  #requestLoop?: Promise<void>;
  readonly #ctx: SoakContext;

  constructor(readonly spec: ClientSpec, ctx: SoakContext) {
    this.#ctx = ctx;
    this.timeline = ctx.ledger.client(spec.name);
  }

  get name(): string {
    return this.spec.name;
  }

  /** Is it connected with its subscriptions confirmed, in generation `gen`? */
  settled(gen: number): boolean {
    const cur = this.timeline.current;
    return !!this.bus?.isConnected && !!cur && cur.gen === gen && cur.confirmedAt !== Infinity;
  }

  /** Connect, subscribe, confirm. */
  async start(): Promise<void> {
    const s = this.spec;
    const base: ConnectOptions = {
      name: `soak ${s.name}`,
      timeout: 30_000,
      reconnectDelay: s.role === "auditor" ? 10 : 50,
      reconnectMaxDelay: s.role === "auditor" ? 50 : 1000,
    };
    let opts: ConnectOptions;
    if (s.kind === "vm") {
      const vm = this.#ctx.vms.get(s.name);
      if (!vm) throw new Error(`no simulated VM ${s.name}`);
      opts = {
        ...base,
        transport: () => vm.vm.open(),
        ...(s.path === "ring" ? { shm: vm.shm } : {}),
      };
    } else {
      opts = {
        ...base,
        server: this.#ctx.listen,
        shm: s.path === "ring",
        ...(s.path === "ring" && s.wake ? { wake: s.wake } : {}),
      };
    }
    const bus = await connect(opts);
    this.bus = bus;
    const info = bus.info;
    if (!info) throw new Error(`${s.name}: connected but no session info`);
    const first = this.timeline.opened(info.session, performance.now());
    bus.on("reconnected", (e) => this.#onReconnected(e.session, e));
    bus.on("disconnected", (e) => this.#onDisconnected(e.reason, e));
    bus.on("error", (e) => this.#onError(e.code, e.message));
    bus.on("slowConsumer", (e) => {
      this.slowReports.push({ where: e.where, n: e.dropped });
      // Broker reports carry the count dropped since the last report; client ones a running total.
      this.timeline.slow.add(performance.now(), e.where === "broker" ? e.dropped : 1);
    });
    this.#subscribe(bus);
    await this.#confirm(first);
  }

  #subscribe(bus: Bus) {
    const s = this.spec;
    const ledger = this.#ctx.ledger;
    if (s.role === "sink") {
      bus.subscribe("hostile.>", { callback: () => this.sinkReceived++ });
      return;
    }
    const streams = s.role === "auditor"
      ? [...this.#ctx.streams.values()]
      : s.subscribeTo.map((n) => {
        const st = this.#ctx.streams.get(n);
        if (!st) throw new Error(`${s.name} subscribes to unknown stream ${n}`);
        return st;
      });
    for (const st of streams) this.#pairs.set(st.id, ledger.subscribe(st, this.timeline));
    const onMsg = (err: Error | null, msg: Msg<unknown>) => {
      if (err) return;
      this.receipts++;
      let data: unknown;
      try {
        data = msg.data;
      } catch (e) {
        ledger.corruptPayload(
          `${s.name}: undecodable message on ${msg.subject}: ${(e as Error).message}`,
        );
        return;
      }
      const r = checkPayload(data);
      if (typeof r === "string") {
        ledger.corruptPayload(`${s.name} on ${msg.subject}: ${r}`);
        return;
      }
      const pair = this.#pairs.get(r.stream);
      if (!pair || msg.subject !== `soak.${pair.stream.name}`) {
        ledger.corruptPayload(`${s.name}: stream ${r.stream} arrived on ${msg.subject}`);
        return;
      }
      ledger.received(pair, r.seq, this.timeline.gen);
    };
    if (s.role === "auditor") bus.subscribe("soak.>", { callback: onMsg });
    else for (const st of streams) bus.subscribe(`soak.${st.name}`, { callback: onMsg });
    if (s.replier) {
      bus.subscribe("svc.echo", {
        queue: "echo",
        callback: (err, m) => {
          if (err) return;
          let d: unknown;
          try {
            d = m.data;
          } catch {
            return;
          }
          if (d instanceof Uint8Array) m.respond(d.slice());
        },
      });
    }
  }

  /** Confirm `span`'s subscriptions with a flush (the broker handled SUB before the PONG). */
  async #confirm(span: Span) {
    try {
      await this.bus!.flush();
      this.timeline.confirmed(span, performance.now());
    } catch {
      // The session ended before the PONG: that span is never confirmed.
    }
  }

  #onReconnected(session: string, e: unknown) {
    const t = performance.now();
    const previous = this.timeline.spans.at(-1);
    const span = this.timeline.opened(session, t);
    this.#readInFlight(e, previous);
    this.#confirm(span);
  }

  /**
   * The client's count of publishes possibly lost in flight across the session that just
   * ended: `bus.stats` if it has a "lost" counter (the difference since the last session),
   * else a "lost" field of the reconnected event, else of the disconnected event.
   */
  #readInFlight(reconnected: unknown, previous: Span | undefined) {
    let n: number | undefined;
    const stats = (this.bus as unknown as { stats?: unknown }).stats;
    const fromStats = lostField(stats);
    if (fromStats) {
      n = fromStats.value - (this.#statsLost ?? 0);
      this.#statsLost = fromStats.value;
      this.inFlightSource = `bus.stats.${fromStats.key}`;
    } else {
      const f = lostField(reconnected) ?? lostField(this.#lastDisconnect);
      if (f) {
        n = f.value;
        this.inFlightSource = `${
          lostField(reconnected) ? "reconnected" : "disconnected"
        } event .${f.key}`;
      }
    }
    if (n && n > 0 && previous) {
      this.inFlightReported += n;
      this.timeline.inFlight.add(performance.now(), n, previous.index);
    }
  }

  #onDisconnected(reason: string, e: unknown) {
    const t = performance.now();
    this.#lastDisconnect = e;
    this.timeline.closed(t, reason);
    const since = t - 3000;
    this.disconnects.push({
      client: this.name,
      t: (t - this.#ctx.t0) / 1000,
      reason,
      recentErrors: this.#recentErrors.filter((r) => r.t >= since).slice(-3).map((r) => ({
        ...r,
        t: (r.t - this.#ctx.t0) / 1000,
      })),
      gen: this.timeline.gen,
    });
  }

  #onError(code: string, message: string) {
    const t = performance.now();
    this.errors[code] = (this.errors[code] ?? 0) + 1;
    this.#recentErrors.push({ t, code, message: message.slice(0, 160) });
    if (this.#recentErrors.length > 20) this.#recentErrors.shift();
    if (code === "FLOOD") {
      const m = /(\d+) message\(s\) rejected/.exec(message);
      this.timeline.flood.add(t, m ? Number(m[1]) : 1);
    } else if (code === "FRAME_TOO_LARGE" || code === "BLOCK_TIMEOUT") {
      this.timeline.errBudget(code).add(t, 1);
    }
  }

  /** Publish the next `n` messages of this peer's stream (not awaited; each settles itself). */
  publish(stream: Stream, n: number): void {
    const bus = this.bus!;
    const ledger = this.#ctx.ledger;
    const subject = `soak.${stream.name}`;
    // The bus's session, even if the soak already cut it (dropped its port) and the client
    // has not noticed yet: what is written now goes to that dying session.
    const last = this.timeline.spans.at(-1);
    const span = bus.isConnected && last && last.session === bus.info?.session ? last : undefined;
    for (let k = 0; k < n; k++) {
      const seq = ledger.published(stream, performance.now(), span);
      bus.publish(subject, makePayload(stream.id, seq)).then(
        () => ledger.resolved(stream, seq),
        (err) => ledger.rejected(stream, seq, String((err as { code?: string }).code ?? "ERROR")),
      );
    }
  }

  /** Start asking the echo service, one request in flight, every `intervalMs`. */
  startRequests(index: number, intervalMs: number): void {
    if (!this.spec.requester || this.#requesting) return;
    this.#requesting = true;
    this.#requestLoop = (async () => {
      let n = 0;
      while (this.#requesting) {
        const body = new Uint8Array(24 + (n % 7) * 100);
        const v = new DataView(body.buffer);
        v.setUint32(0, RR_MAGIC, true);
        v.setUint32(4, index, true);
        v.setUint32(8, n, true);
        this.rr.sent++;
        this.rr.pending++;
        try {
          const reply = await this.bus!.request("svc.echo", body, { timeout: REQUEST_TIMEOUT_MS });
          const d = reply.data;
          const ok = d instanceof Uint8Array && d.length === body.length &&
            new DataView(d.buffer, d.byteOffset, d.byteLength).getUint32(8, true) === n &&
            new DataView(d.buffer, d.byteOffset, d.byteLength).getUint32(4, true) === index;
          if (ok) this.rr.ok++;
          else this.rr.wrong++;
        } catch (err) {
          const code = String((err as { code?: string }).code ?? "ERROR");
          this.rr.failed[code] = (this.rr.failed[code] ?? 0) + 1;
        } finally {
          this.rr.pending--;
        }
        n++;
        await new Promise((r) => setTimeout(r, intervalMs));
      }
    })();
  }

  /** Stop asking; resolves when the last request settled (at most the request timeout). */
  async stopRequests(): Promise<void> {
    this.#requesting = false;
    if (this.#requestLoop) {
      await Promise.race([
        this.#requestLoop,
        new Promise((r) => setTimeout(r, REQUEST_TIMEOUT_MS + 3000)),
      ]);
    }
  }

  /** Flush, bounded in time; false if it did not confirm. */
  async flush(ms: number): Promise<boolean> {
    if (!this.bus) return false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        this.bus.flush().then(() => true, () => false),
        new Promise<boolean>((r) => timer = setTimeout(() => r(false), ms)),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** `bus.stats` as it was just before `close()` (if the client has them), numbers only. */
  finalStats: Record<string, number> = {};

  async close(): Promise<void> {
    const stats = (this.bus as unknown as { stats?: unknown } | undefined)?.stats;
    if (stats && typeof stats === "object") {
      for (const [k, v] of Object.entries(stats)) if (typeof v === "number") this.finalStats[k] = v;
    }
    await this.bus?.close();
  }
}

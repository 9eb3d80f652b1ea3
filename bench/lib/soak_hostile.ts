/**
 * The chaos soak's hostile VM. It plays its own QEMU chardev socket (so it can really stop
 * reading: the kernel buffer fills and the broker's writes back up), negotiates the rings on
 * its region like any guest, subscribes to everything it may (`soak.>`, so the broker delivers
 * into its inbound ring), and between attacks reads carelessly (skips its inbound ring ahead).
 * On command it attacks, each attack bounded in time and bytes:
 *
 * - scribbles: a bogus CONSUMER_POSITION on its inbound ring (the broker's producer reads it),
 *   a bogus PRODUCER_POSITION on its outbound ring, an invalid record header, a DATA record of
 *   random bytes (a bad frame inside the ring), random bytes over ring data and control words;
 * - floods: PUBs as fast as it can on the port and through its outbound ring; PINGs on the
 *   port while it does not read its port (the PONGs pile up at the broker).
 *
 * After an attack the broker is expected to reset this VM's session (and only this one); the
 * hostile VM then negotiates again on the broker's next connection, as a rebooted guest would.
 *
 * @example
 * ```ts
 * import { HostileVm } from "./soak_hostile.ts";
 * const evil = new HostileVm("evil", "/tmp/soak/evil.sock", "/dev/shm/vbus-soak-1-evil", 4 << 20);
 * await evil.listen(); // before the broker starts
 * await evil.waitReady(10_000);
 * const result = await evil.attack("scribble-consumer-position");
 * ```
 * @module
 */
import { createServer, type Server, type Socket } from "node:net";
import { unlinkSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { SocketPort } from "../../src/port/socket_port.ts";
import { encodeFrame, FrameDecoder } from "../../src/protocol/frame.ts";
import { decodeValue, encodeValue } from "../../src/protocol/codec.ts";
import { Feature, Op, PROTOCOL_VERSION, type WelcomeHead } from "../../src/protocol/ops.ts";
import { writeGuestNonce } from "../../src/shm/negotiation.ts";
import { attachRegion, type Region } from "../../src/ring/region.ts";
import { RECORD, ringControl, RingId } from "../../src/ring/layout.ts";
import { RingProducer } from "../../src/ring/ring.ts";
import { mapSharedSync, type SharedMapping } from "../../ffi/mod.ts";

/** What the hostile VM can do. */
export const ATTACKS = [
  "scribble-consumer-position",
  "scribble-producer-position",
  "scribble-record-header",
  "scribble-bad-frame",
  "scribble-random",
  "flood-pub",
  "flood-ping",
] as const;
/** One of {@link ATTACKS}. */
export type Attack = typeof ATTACKS[number];

/** What one attack did and how the broker answered. */
export interface AttackResult {
  attack: Attack;
  /** Whether a session was up to attack. */
  attempted: boolean;
  /** Frames / records / bytes the attacker wrote. */
  frames: number;
  bytes: number;
  ms: number;
  /** ERR codes the broker sent during the attack and the 2 s after it. */
  errors: Record<string, number>;
  /** The broker closed the hostile session within 2 s after the attack. */
  sessionClosed: boolean;
}

const DOORBELL_DATA = 0;
const DOORBELL_SPACE = 1;
/** Bytes the attacker lets queue in its own socket before it waits (bounds its own memory). */
const OWN_QUEUE_BYTES = 4 * 1024 * 1024;

interface Session {
  socket: Socket;
  port: SocketPort;
  region?: Region;
  outbound?: RingProducer;
  closed: boolean;
  errors: Record<string, number>;
}

/** The hostile VM. */
export class HostileVm {
  #server?: Server;
  #mapping: SharedMapping;
  #i32: Int32Array;
  #session?: Session;
  #reader?: ReturnType<typeof setInterval>;
  /** Sessions negotiated (each broker connection that got a WELCOME with rings). */
  sessions = 0;
  /** Sessions the broker closed. */
  sessionsClosed = 0;
  /** ERR codes received over the whole run. */
  readonly errors: Record<string, number> = {};
  /** Negotiation failures (e.g. the broker refused the rings), with the last reason. */
  negotiationFailures = 0;
  lastNegotiationError = "";
  #stopped = false;
  #readerPaused = false;

  constructor(
    readonly name: string,
    readonly socketPath: string,
    readonly shmPath: string,
    readonly shmSize: number,
  ) {
    this.#mapping = mapSharedSync(shmPath, shmSize);
    const b = this.#mapping.bytes;
    this.#i32 = new Int32Array(b.buffer, b.byteOffset, b.byteLength >> 2);
  }

  /** Is a negotiated session up? */
  get ready(): boolean {
    return this.#session !== undefined && !this.#session.closed &&
      this.#session.outbound !== undefined;
  }

  /** Listen on the chardev socket (the broker connects to it, as to QEMU's). */
  async listen(): Promise<void> {
    try {
      unlinkSync(this.socketPath);
    } catch { /* nothing there */ }
    const server = createServer((socket) => this.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.socketPath, () => resolve());
    });
    this.#server = server;
    this.#reader = setInterval(() => this.#readCarelessly(), 50);
  }

  /** Wait until a session is negotiated, at most `ms`. */
  async waitReady(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.ready && Date.now() < deadline) await sleep(20);
    return this.ready;
  }

  /** Run one attack (bounded: at most ~2.5 s and a few MiB). */
  async attack(attack: Attack): Promise<AttackResult> {
    const result: AttackResult = {
      attack,
      attempted: false,
      frames: 0,
      bytes: 0,
      ms: 0,
      errors: {},
      sessionClosed: false,
    };
    const s = this.#session;
    if (!s || s.closed || !s.region || !s.outbound) return result;
    result.attempted = true;
    s.errors = result.errors;
    // A careless read would repair a scribbled consumer position: no reading until it is over.
    this.#readerPaused = true;
    const t0 = performance.now();
    try {
      switch (attack) {
        case "scribble-consumer-position": {
          const c = ringControl(RingId.INBOUND);
          const producer = Atomics.load(this.#i32, c.PRODUCER_POSITION >> 2);
          // Far ahead of what the broker produced: its next claim must not trust it.
          Atomics.store(
            this.#i32,
            c.CONSUMER_POSITION >> 2,
            (producer + s.region.inbound.capacity * 3 + 8) | 0,
          );
          this.#doorbell(s, RingId.INBOUND, DOORBELL_SPACE);
          result.frames = 1;
          break;
        }
        case "scribble-producer-position": {
          const c = ringControl(RingId.OUTBOUND);
          const consumer = Atomics.load(this.#i32, c.CONSUMER_POSITION >> 2);
          Atomics.store(
            this.#i32,
            c.PRODUCER_POSITION >> 2,
            (consumer + s.region.outbound.capacity + 64) | 0,
          );
          this.#doorbell(s, RingId.OUTBOUND, DOORBELL_DATA);
          result.frames = 1;
          break;
        }
        case "scribble-record-header": {
          const d = s.region.outbound;
          const c = ringControl(RingId.OUTBOUND);
          const producer = Atomics.load(this.#i32, c.PRODUCER_POSITION >> 2) >>> 0;
          const at = d.dataOffset + (producer & (d.capacity - 1));
          const view = new DataView(this.#mapping.bytes.buffer, this.#mapping.bytes.byteOffset);
          view.setUint32(at + RECORD.LENGTH, 0x7ffffff0, true); // longer than the ring
          view.setUint16(at + RECORD.TYPE, 0x55, true); // no such record type
          Atomics.store(this.#i32, c.PRODUCER_POSITION >> 2, (producer + 8) | 0);
          this.#doorbell(s, RingId.OUTBOUND, DOORBELL_DATA);
          result.frames = 1;
          break;
        }
        case "scribble-bad-frame": {
          // Well-formed records whose bodies are not frames.
          for (let i = 0; i < 8 && s.outbound.tryWrite(randomBytes(16 + i * 40)); i++) {
            result.frames++;
          }
          this.#doorbell(s, RingId.OUTBOUND, DOORBELL_DATA);
          break;
        }
        case "scribble-random": {
          const d = s.region.outbound;
          const junk = randomBytes(512);
          const off = d.dataOffset + ((Math.random() * (d.capacity - 512)) & ~7);
          this.#mapping.bytes.set(junk, off);
          const c = ringControl(RingId.OUTBOUND);
          Atomics.store(this.#i32, c.PRODUCER_POSITION >> 2, junk.readInt32LE(0) & ~7);
          Atomics.store(
            this.#i32,
            ringControl(RingId.INBOUND).CONSUMER_POSITION >> 2,
            junk.readInt32LE(4),
          );
          this.#doorbell(s, RingId.OUTBOUND, DOORBELL_DATA);
          result.frames = 1;
          result.bytes = 512;
          break;
        }
        case "flood-pub":
          await this.#floodPub(s, result);
          break;
        case "flood-ping":
          await this.#floodPing(s, result);
          break;
      }
    } catch (err) {
      // The broker reset the region under us mid-attack (a ring write threw): that is fine.
      result.errors[`attacker: ${(err as Error).message.slice(0, 80)}`] = 1;
    }
    result.ms = Math.round(performance.now() - t0);
    const deadline = performance.now() + 2000;
    while (!s.closed && performance.now() < deadline) await sleep(20);
    result.sessionClosed = s.closed;
    this.#readerPaused = false;
    return result;
  }

  /** Close everything. */
  async close(): Promise<void> {
    this.#stopped = true;
    if (this.#reader) clearInterval(this.#reader);
    this.#session?.socket.destroy();
    if (this.#server) await new Promise<void>((r) => this.#server!.close(() => r()));
    try {
      unlinkSync(this.socketPath);
    } catch { /* gone */ }
    this.#mapping.unmap();
  }

  #accept(socket: Socket) {
    if (this.#stopped) {
      socket.destroy();
      return;
    }
    this.#session?.socket.destroy(); // one host connection at a time, like QEMU
    const port = new SocketPort(socket, `hostile chardev ${this.socketPath}`);
    const s: Session = { socket, port, closed: false, errors: {} };
    this.#session = s;
    const decoder = new FrameDecoder(1 << 26);
    let nonce = 0;
    port.start((chunk) => {
      try {
        decoder.push(chunk, (f) => {
          if (f.op === Op.Ping) port.write(encodeFrame(Op.Pong, encodeValue([])));
          else if (f.op === Op.Err) {
            const e = safeDecode(f.head) as { code?: string };
            const code = String(e?.code ?? "?");
            this.errors[code] = (this.errors[code] ?? 0) + 1;
            s.errors[code] = (s.errors[code] ?? 0) + 1;
          } else if (f.op === Op.Welcome) {
            const w = safeDecode(f.head) as WelcomeHead;
            if (w?.nonce === nonce) this.#welcomed(s, w);
          }
        });
      } catch {
        decoder.resync?.();
      }
    }, () => {
      if (!s.closed) {
        s.closed = true;
        if (s.outbound) this.sessionsClosed++;
      }
      if (this.#session === s) this.#session = undefined;
    });
    nonce = (Math.random() * 0x7fffffff) | 0;
    const shmNonce = writeGuestNonce(this.#mapping.bytes);
    port.write(encodeFrame(
      Op.Hello,
      encodeValue({
        v: PROTOCOL_VERSION,
        features: [Feature.Headers, Feature.NoResponders],
        client: "soak hostile guest",
        nonce,
        shm: { size: this.#mapping.bytes.length, nonce: shmNonce },
      }),
    ));
  }

  #welcomed(s: Session, w: WelcomeHead) {
    const shm = w.shm as { ok?: boolean; reason?: string } | undefined;
    if (!shm?.ok) {
      this.negotiationFailures++;
      this.lastNegotiationError = shm?.reason ?? "no shared-memory answer";
      return;
    }
    try {
      s.region = attachRegion(this.#mapping.bytes, "guest");
      s.outbound = new RingProducer(this.#mapping.bytes, s.region.outbound);
    } catch (err) {
      this.negotiationFailures++;
      this.lastNegotiationError = (err as Error).message;
      return;
    }
    this.sessions++;
    // Subscribe to everything it may: the broker then writes innocent traffic into its ring.
    s.port.write(encodeFrame(Op.Sub, encodeValue([1, "soak.>", null])));
    s.port.write(encodeFrame(Op.Sub, encodeValue([2, "hostile.>", null])));
  }

  /** Between attacks: skip the inbound ring ahead (reading nothing) and say there is space. */
  #readCarelessly() {
    const s = this.#session;
    if (!s || s.closed || !s.region || this.#readerPaused) return;
    const c = ringControl(RingId.INBOUND);
    const producer = Atomics.load(this.#i32, c.PRODUCER_POSITION >> 2);
    if (Atomics.load(this.#i32, c.CONSUMER_POSITION >> 2) === producer) return;
    Atomics.store(this.#i32, c.CONSUMER_POSITION >> 2, producer);
    this.#doorbell(s, RingId.INBOUND, DOORBELL_SPACE);
  }

  #doorbell(s: Session, ring: number, kind: number) {
    if (!s.closed) s.port.write(encodeFrame(Op.Doorbell, encodeValue([ring, kind])));
  }

  /** PUBs for 1.5 s (at most 300,000), on the port and through the outbound ring. */
  async #floodPub(s: Session, r: AttackResult) {
    const frame = encodeFrame(Op.Pub, encodeValue(["hostile.flood", null, null]), encodeValue(0));
    const batch = new Uint8Array(frame.length * 512);
    for (let i = 0; i < 512; i++) batch.set(frame, i * frame.length);
    const end = performance.now() + 1500;
    while (performance.now() < end && !s.closed && r.frames < 300_000) {
      if (s.port.pending < OWN_QUEUE_BYTES) {
        s.port.write(batch);
        r.frames += 512;
        r.bytes += batch.length;
      }
      let n = 0;
      while (n < 2048 && s.outbound!.tryWrite(frame)) n++;
      if (n > 0) {
        r.frames += n;
        r.bytes += n * frame.length;
        this.#doorbell(s, RingId.OUTBOUND, DOORBELL_DATA);
      }
      await sleep(1);
    }
  }

  /** PINGs for 2 s (at most 1,000,000) while not reading the port; then read again. */
  async #floodPing(s: Session, r: AttackResult) {
    const ping = encodeFrame(Op.Ping, encodeValue([]));
    const batch = new Uint8Array(ping.length * 4096);
    for (let i = 0; i < 4096; i++) batch.set(ping, i * ping.length);
    s.port.pause();
    const end = performance.now() + 2000;
    try {
      while (performance.now() < end && !s.closed && r.frames < 1_000_000) {
        if (s.port.pending < OWN_QUEUE_BYTES) {
          s.port.write(batch);
          r.frames += 4096;
          r.bytes += batch.length;
        }
        await sleep(1);
      }
    } finally {
      s.port.resume();
    }
  }
}

function safeDecode(head: Uint8Array): unknown {
  try {
    return decodeValue(head.slice());
  } catch {
    return undefined;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The broker's side of `vbus agent` (docs/PROTOCOL.md section 14): one VM connection carrying
 * the streams of many guest processes in channel envelopes. Each channel becomes a {@link Port}
 * with an ordinary `Session` on it (the VM's identity, permissions and stats), its region the
 * channel's slot of the VM's shared memory. Everything from the agent is hostile: a lie about
 * channels or slots gets an ERROR envelope naming it and ends this VM's connection only.
 *
 * `serveVmConnection` looks at the first bytes of a VM connection: the mux magic starts a
 * {@link ChannelMux}, anything else an ordinary session (old guests are unaffected).
 *
 * @example
 * ```ts
 * // Used by the broker's VM link (broker.ts):
 * // serveVmConnection(port, { vm: "vm1", ..., startSession: (p, shm, onEnd) => ... });
 * ```
 * @module
 */
import type { Port } from "../port/port.ts";
import {
  decodeEnvelopeBody,
  encodeEnvelope,
  ENVELOPE_MAGIC_0,
  ENVELOPE_MAGIC_1,
  EnvelopeDecoder,
  envelopeHeader,
  EnvelopeKind,
  envelopeKindName,
  MAX_ENVELOPE_BODY,
  MUX_VERSION,
} from "../protocol/channel_frame.ts";
import { planSlots, slotBytes, type SlotPlan } from "../ring/layout.ts";
import type { Logger } from "../util/log.ts";
import type { EndpointStats } from "./stats.ts";
import type { Session, SessionShm } from "./session.ts";
import { FedPort } from "../port/fed_port.ts";

/** Default of `vms[].agentSlots`: slots (and so local processes) one agent may use. */
export const DEFAULT_AGENT_SLOTS = 8;
/** Bytes buffered for channels whose session does not read, beyond which the VM is not read. */
export const CHANNEL_BUFFER_BYTES = 1024 * 1024;
/** Reason counted in the VM's `closed` stats when its agent broke the mux protocol. */
export const AGENT_PROTOCOL = "AGENT_PROTOCOL";

/** What serving one VM connection needs from the broker. */
export interface VmConnectionOptions {
  vm: string;
  /** The VM's shared memory, or why there is none. */
  shm?: SessionShm;
  /** `vms[].agentSlots`: 0 refuses agents. */
  agentSlots: number;
  /** When each slot's last session stopped reading it (kept per VM across connections). */
  slotsQuiet: Map<number, Promise<void>>;
  stats: EndpointStats;
  log: Logger;
  /** Start a session of this VM on `port` (the broker's #startSession). */
  startSession(port: Port, shm: SessionShm | undefined, onEnd: (reason: string) => void): Session;
  /** Aborted when the link stops: a connection that has not started a session yet closes. */
  signal: AbortSignal;
}

/** A live VM connection: its one session, or its mux. */
export interface VmConnection {
  /** Resolves with the reason when the connection (and every session on it) has ended. */
  ended: Promise<string>;
  /** Close it and every session on it. */
  close(reason: string): void;
  /** The sessions running on it now. */
  sessions(): Session[];
}

/**
 * Serve a freshly connected VM port: an ordinary session, or a mux when the guest's first
 * bytes are an envelope.
 *
 * @example
 * ```ts
 * import { serveVmConnection, type VmConnectionOptions } from "./channel_mux.ts";
 * import { connectUnix } from "../port/socket_port.ts";
 * declare const opts: VmConnectionOptions; // the broker's VM link fills these in
 * const conn = serveVmConnection(await connectUnix("/run/vbus/vms/vm1.sock"), opts);
 * console.log(await conn.ended);
 * ```
 */
export function serveVmConnection(port: Port, o: VmConnectionOptions): VmConnection {
  let target: { close(reason: string): void; sessions(): Session[] } | undefined;
  let resolveEnded!: (reason: string) => void;
  const ended = new Promise<string>((r) => resolveEnded = r);
  let decided = false;
  let head: Uint8Array = new Uint8Array(0);
  const direct = new FedPort(port.description, {
    write: (b) => port.write(b),
    pending: () => port.pending,
    drained: () => port.drained(),
    close: () => port.close(),
    pause: () => port.pause(),
    resume: () => port.resume(),
  });
  let mux: ChannelMux | undefined;
  // Aborting stops the link from reconnecting; a live session is closed by its owner (a
  // drain lets it finish), so only a connection still deciding its mode is closed here.
  const onAbort = () => {
    if (!target) port.close();
  };
  o.signal.addEventListener("abort", onAbort, { once: true });
  const finish = (reason: string) => {
    o.signal.removeEventListener("abort", onAbort);
    resolveEnded(reason);
  };
  port.start(
    (chunk) => {
      if (decided) return mux ? mux.push(chunk) : direct.feed(chunk);
      head = concat(head, chunk);
      if (head.length < 2) return;
      decided = true;
      const plainSession = (bytes: Uint8Array) => {
        const session = o.startSession(direct, o.shm, finish);
        target = { close: (r) => session.close(r), sessions: () => [session] };
        direct.feed(bytes);
      };
      if (head[0] === ENVELOPE_MAGIC_0 && head[1] === ENVELOPE_MAGIC_1) {
        mux = new ChannelMux(port, o, finish, (rest) => {
          mux = undefined; // from now on the connection's bytes are an ordinary session's
          plainSession(rest);
        });
        target = mux;
        mux.push(head);
      } else plainSession(head);
    },
    (err) => {
      if (mux) mux.portClosed(err);
      else if (target) direct.end(err);
      else finish(err ? `port error: ${err.message}` : "port closed");
    },
  );
  return {
    ended,
    close: (reason) => target ? target.close(reason) : port.close(),
    sessions: () => target?.sessions() ?? [],
  };
}

/** One channel of a mux. */
interface Channel {
  id: number;
  slot: number;
  port: FedPort;
  session?: Session;
  /** The agent sent CLOSE / the broker sent CLOSE. */
  gotClose: boolean;
  sentClose: boolean;
}

/**
 * The channels of one VM connection with an agent on the other end; see the module doc.
 *
 * @example
 * ```ts
 * // made by serveVmConnection when the guest's first bytes are "vM"
 * ```
 */
export class ChannelMux {
  #port: Port;
  #o: VmConnectionOptions;
  #onEnd: (reason: string) => void;
  #decoder = new EnvelopeDecoder();
  #channels = new Map<number, Channel>();
  #plan?: SlotPlan;
  #region?: Uint8Array;
  #welcomed = false;
  #closed = false;
  #overfull = new Set<number>(); // channels whose buffered input holds the VM's port

  #onPlain: (rest: Uint8Array) => void;

  /**
   * `onEnd`: the connection is over. `onPlain`: the agent is gone and a process talks to the
   * port directly (a vbus frame where an envelope was due): its bytes, from that frame on, for
   * an ordinary session on the same connection.
   */
  constructor(
    port: Port,
    o: VmConnectionOptions,
    onEnd: (reason: string) => void,
    onPlain: (rest: Uint8Array) => void,
  ) {
    this.#port = port;
    this.#o = o;
    this.#onEnd = onEnd;
    this.#onPlain = onPlain;
  }

  /** The sessions of the open channels. */
  sessions(): Session[] {
    return [...this.#channels.values()].flatMap((c) => c.session ? [c.session] : []);
  }

  /** Bytes from the VM. */
  push(chunk: Uint8Array): void {
    if (this.#closed) return;
    let plain: Uint8Array | undefined;
    try {
      plain = this.#decoder.push(
        chunk,
        (kind, channel, body) => this.#onEnvelope(kind, channel, body),
      );
    } catch (err) {
      this.#violation((err as Error).message);
      return;
    }
    if (plain && !this.#closed) {
      // The guest closing its port tells the broker nothing: the agent's exit shows only as
      // the next opener's HELLO. Its processes' sessions end; the connection stays.
      this.#closed = true;
      this.#endChannels("the agent is gone (a process opened the port directly)");
      this.#o.log.info("the VM's agent is gone; a process uses the port directly", {
        vm: this.#o.vm,
      });
      this.#onPlain(plain);
    }
  }

  /** End every channel and the VM connection. */
  close(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#endChannels(reason);
    this.#port.close();
    this.#onEnd(reason);
  }

  /** The VM's port closed. */
  portClosed(err?: Error): void {
    this.close(err ? `port error: ${err.message}` : "port closed");
  }

  #onEnvelope(kind: EnvelopeKind, id: number, body: Uint8Array) {
    if (this.#closed) return;
    if (kind === EnvelopeKind.MuxHello) return this.#onMuxHello(id, body);
    if (!this.#welcomed) {
      throw new Error(`${envelopeKindName(kind)} before MUX_HELLO`);
    }
    if (kind === EnvelopeKind.Data) {
      const ch = this.#channels.get(id);
      if (!ch || ch.gotClose) throw new Error(`DATA for channel ${id}, which is not open`);
      ch.port.feed(body);
      this.#checkBuffered(ch);
      return;
    }
    if (kind === EnvelopeKind.Open) return this.#onOpen(id, decodeEnvelopeBody(body));
    if (kind === EnvelopeKind.Close) {
      const ch = this.#channels.get(id);
      if (!ch || ch.gotClose) throw new Error(`CLOSE for channel ${id}, which is not open`);
      ch.gotClose = true;
      if (ch.session) ch.port.end();
      else this.#sessionEnded(ch, "the process closed its connection");
      return;
    }
    throw new Error(`${envelopeKindName(kind)} is not sent by an agent`);
  }

  #onMuxHello(id: number, body: Uint8Array) {
    if (id !== 0) throw new Error(`MUX_HELLO on channel ${id} (must be 0)`);
    const hello = decodeEnvelopeBody(body);
    if (hello.v !== MUX_VERSION) {
      throw new Error(`mux version ${String(hello.v)} is not ${MUX_VERSION}`);
    }
    const nonce = typeof hello.nonce === "number" ? hello.nonce : 0;
    if (this.#o.agentSlots === 0) {
      throw new Error(`VM ${this.#o.vm} accepts no agent (its agentSlots is 0)`);
    }
    if (this.#channels.size > 0) this.#endChannels("the agent restarted (a new MUX_HELLO)");
    const wanted = Number.isInteger(hello.slots) && (hello.slots as number) > 0
      ? Math.min(hello.slots as number, this.#o.agentSlots)
      : this.#o.agentSlots;
    const shm = this.#o.shm;
    let reason: string | undefined;
    this.#plan = this.#region = undefined;
    if (!shm) reason = "no shared memory is configured for this VM";
    else if ("reason" in shm) reason = shm.reason;
    else {
      try {
        this.#plan = planSlots(shm.bytes.length, wanted);
        this.#region = shm.bytes;
      } catch (err) {
        reason = (err as Error).message;
      }
    }
    this.#welcomed = true;
    const plan = this.#plan;
    this.#o.log.info("agent attached", {
      vm: this.#o.vm,
      agent: String(hello.agent ?? "").slice(0, 96),
      slots: plan?.slots ?? 0,
      ...(reason ? { reason } : {}),
    });
    this.#send(EnvelopeKind.MuxWelcome, 0, {
      v: MUX_VERSION,
      nonce,
      channels: this.#o.agentSlots,
      slots: plan?.slots ?? 0,
      ...(plan
        ? {
          slotOffset: plan.slotOffset,
          slotStride: plan.slotStride,
          slotSize: plan.slotSize,
          regionSize: this.#region!.length,
        }
        : { reason }),
    });
  }

  #onOpen(id: number, open: Record<string, unknown>) {
    const limit = this.#o.agentSlots;
    if (!Number.isInteger(id) || id < 1 || id > limit) {
      throw new Error(`OPEN of channel ${id}: channels are 1..${limit} (agentSlots)`);
    }
    if (this.#channels.has(id)) throw new Error(`OPEN of channel ${id}, which is open`);
    const slot = open.slot;
    const slots = this.#plan?.slots ?? 0;
    if (!Number.isInteger(slot) || (slot as number) < -1 || (slot as number) >= slots) {
      throw new Error(`OPEN of channel ${id} with slot ${String(slot)}: slots are 0..${slots - 1}`);
    }
    if (slot !== -1) {
      for (const other of this.#channels.values()) {
        if (other.slot === slot) {
          throw new Error(`OPEN of channel ${id} with slot ${slot}, used by channel ${other.id}`);
        }
      }
    }
    const port = new FedPort(`${this.#port.description} channel ${id}`, {
      write: (b) => this.#writeData(id, b),
      pending: () => this.#port.pending,
      drained: () => this.#port.drained(),
      close: () => {},
      pause: () => {},
      resume: () => this.#checkBuffered(ch),
    });
    const ch: Channel = { id, slot: slot as number, port, gotClose: false, sentClose: false };
    this.#channels.set(id, ch);
    const shm: SessionShm = slot === -1 || !this.#plan
      ? { reason: "the agent gave this process no slot" }
      : {
        bytes: slotBytes(this.#region!, this.#plan, slot as number),
        path: `slot ${slot} of VM ${this.#o.vm}'s shared memory`,
        perSession: false,
      };
    const quiet = slot === -1 ? Promise.resolve() : this.#o.slotsQuiet.get(slot as number);
    const start = () => {
      if (this.#closed || ch.gotClose || this.#channels.get(id) !== ch) return;
      ch.session = this.#o.startSession(port, shm, (reason) => this.#sessionEnded(ch, reason));
    };
    // A slot's previous session (an earlier agent or connection) may still be reading it.
    if (quiet) quiet.then(start);
    else start();
  }

  /** A channel's session ended (or never started): CLOSE once its ring no longer reads. */
  #sessionEnded(ch: Channel, reason: string) {
    const stopped = ch.session?.ringStopped ?? Promise.resolve();
    if (ch.slot !== -1) this.#o.slotsQuiet.set(ch.slot, stopped);
    this.#overfull.delete(ch.id);
    this.#checkResume();
    stopped.then(() => {
      if (!this.#closed && !ch.sentClose) {
        ch.sentClose = true;
        this.#send(EnvelopeKind.Close, ch.id, { reason });
      }
      if (ch.gotClose || this.#closed) {
        if (this.#channels.get(ch.id) === ch) this.#channels.delete(ch.id);
      }
    });
  }

  #writeData(id: number, bytes: Uint8Array): boolean {
    let ok = true;
    for (let at = 0; at < bytes.length; at += MAX_ENVELOPE_BODY) {
      const part = bytes.subarray(at, Math.min(bytes.length, at + MAX_ENVELOPE_BODY));
      this.#port.write(envelopeHeader(EnvelopeKind.Data, id, part.length));
      ok = this.#port.write(part);
    }
    return ok;
  }

  #send(kind: EnvelopeKind, id: number, body: Record<string, unknown>) {
    this.#port.write(encodeEnvelope(kind, id, body));
  }

  #checkBuffered(ch: Channel) {
    if (ch.port.buffered > CHANNEL_BUFFER_BYTES) {
      if (this.#overfull.size === 0) this.#port.pause();
      this.#overfull.add(ch.id);
    } else if (this.#overfull.delete(ch.id)) this.#checkResume();
  }

  #checkResume() {
    if (this.#overfull.size === 0 && !this.#closed) this.#port.resume();
  }

  #endChannels(reason: string) {
    for (const ch of [...this.#channels.values()]) {
      ch.gotClose = true;
      ch.sentClose = true; // the agent these channels belonged to is gone
      if (ch.session) ch.session.close(reason);
      else this.#sessionEnded(ch, reason);
      this.#channels.delete(ch.id);
    }
  }

  #violation(problem: string) {
    const stats = this.#o.stats;
    stats.closed[AGENT_PROTOCOL] = (stats.closed[AGENT_PROTOCOL] ?? 0) + 1;
    this.#o.log.warn("the VM's agent broke the mux protocol; closing its connection", {
      vm: this.#o.vm,
      problem,
    });
    if (!this.#closed) this.#send(EnvelopeKind.Error, 0, { message: problem });
    this.close(`agent protocol: ${problem}`);
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

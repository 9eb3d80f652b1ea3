/**
 * `vbus agent`: the one process in a guest that owns the VM's port (and names the ivshmem
 * device) and serves any number of local processes over a unix socket, each with its own
 * channel and ring pair ("slot"). Design: docs/ARCHITECTURE.md, "Several processes in one
 * guest"; wire: docs/PROTOCOL.md section 14.
 *
 * The agent does not parse its clients' frames: a process's bytes go into DATA envelopes of
 * its channel, the broker's envelopes come back out to the right socket. It keeps running
 * while the broker is away (it opens the port again with backoff); local processes that
 * connect meanwhile wait for their ATTACH, and those connected when the broker goes away are
 * disconnected, so they reconnect and re-subscribe as after a broker restart.
 *
 * @example
 * ```ts
 * import { Agent } from "./agent.ts";
 * const agent = new Agent({ socket: "/run/vbus/agent.sock" }); // the device, found as usual
 * await agent.start();
 * // ... later
 * await agent.stop();
 * ```
 * @module
 */
import { createServer, type Server, type Socket } from "node:net";
import process from "node:process";
import { chmodSync, chownSync, lstatSync, statSync, unlinkSync } from "node:fs";
import type { Port, PortOpener } from "../port/port.ts";
import { DEFAULT_PORT_NAME, openDevice, portPath } from "../port/device_port.ts";
import { connectUnix } from "../port/socket_port.ts";
import {
  decodeEnvelopeBody,
  encodeEnvelope,
  ENVELOPE_MAGIC_0,
  ENVELOPE_MAGIC_1,
  EnvelopeDecoder,
  envelopeHeader,
  EnvelopeKind,
  MAX_ENVELOPE_BODY,
  MUX_VERSION,
} from "../protocol/channel_frame.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { type ChannelEntry, SlotTable } from "./slot_table.ts";
import { DEFAULT_AGENT_SOCKET } from "./attach.ts";

/** Bytes queued towards one local process that does not read, beyond which it is dropped. */
export const LOCAL_QUEUE_LIMIT = 64 * 1024 * 1024;
/** Local processes waiting for the broker at once; more are refused. */
export const MAX_WAITING = 1024;
/** Default socket mode: owner and group (`vbus`) may connect. */
export const DEFAULT_SOCKET_MODE = 0o660;

/** Options of an {@link Agent}. */
export interface AgentOptions {
  /** The agent's socket. Default `VBUS_AGENT`, else /run/vbus/agent.sock. */
  socket?: string;
  /** Opens the VM's port. Default: the device /dev/virtio-ports/NAME (`port`). */
  transport?: PortOpener;
  /** Port name under /dev/virtio-ports. Default `VBUS_PORT`, else org.vbus.0. */
  port?: string;
  /**
   * What local processes map for their slots: a path (the ivshmem BAR's `resource2`, or a
   * simulated VM's file), or false for no slots (the port stream only). Default: the vbus
   * ivshmem device found as a guest client finds it.
   */
  shm?: string | false;
  /** Slots to ask the broker for. Default: as many as it grants (`vms[].agentSlots`). */
  slots?: number;
  /** Socket mode. Default 0660. */
  socketMode?: number;
  /** Group id the socket gets (e.g. the `vbus` group's); default the agent's group. */
  socketGroup?: number;
  logger?: Logger;
  /** Reopening the port: first and largest delay (ms). */
  reconnect?: { initialMs?: number; maxMs?: number };
}

/** A local process's connection. */
interface Local {
  socket: Socket;
  entry?: ChannelEntry<Local>;
}

/** What {@link Agent.stats} reports. */
export interface AgentStats {
  /** Connected to the broker (MUX_WELCOME received). */
  connected: boolean;
  /** Channels and slots the broker granted. */
  channels: number;
  slots: number;
  /** Local processes attached now, and waiting for the broker. */
  attached: number;
  waiting: number;
  /** Processes refused because every channel was in use. */
  refused: number;
}

/** See the module doc. */
export class Agent {
  #o: AgentOptions;
  #log: Logger;
  #socketPath: string;
  #server?: Server;
  #running = false;
  #abort = new AbortController();
  #loop?: Promise<void>;
  #port?: Port;
  #table?: SlotTable<Local>;
  #welcome?: Record<string, unknown>;
  #device?: { path: string; size: number };
  #deviceReason?: string;
  #waiting: Local[] = [];
  #refused = 0;
  #portHeld = 0; // local sockets paused until the port drains

  constructor(opts: AgentOptions = {}) {
    this.#o = opts;
    this.#log = opts.logger ?? createLogger("vbus-agent");
    this.#socketPath = opts.socket ?? (process.env.VBUS_AGENT || DEFAULT_AGENT_SOCKET);
  }

  /** The socket local processes connect to. */
  get socket(): string {
    return this.#socketPath;
  }

  /** A snapshot of the agent's state. */
  get stats(): AgentStats {
    const t = this.#table;
    return {
      connected: this.#welcome !== undefined,
      channels: t?.channels ?? 0,
      slots: t?.slots ?? 0,
      attached: t?.all().filter((e) => !e.closeSent).length ?? 0,
      waiting: this.#waiting.length,
      refused: this.#refused,
    };
  }

  /** Find the device, listen on the socket, start the port loop. */
  async start(): Promise<void> {
    this.#running = true;
    await this.#findDevice();
    await removeStaleSocket(this.#socketPath);
    const server = createServer((s) => this.#accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.#socketPath, () => resolve());
    });
    this.#server = server;
    chmodSync(this.#socketPath, this.#o.socketMode ?? DEFAULT_SOCKET_MODE);
    if (this.#o.socketGroup !== undefined) {
      chownSync(this.#socketPath, -1, this.#o.socketGroup);
      this.#shareDevice(this.#o.socketGroup);
    }
    this.#log.info("listening", {
      socket: this.#socketPath,
      mode: (this.#o.socketMode ?? DEFAULT_SOCKET_MODE).toString(8),
      device: this.#device?.path ?? `none (${this.#deviceReason})`,
    });
    this.#loop = this.#runPort();
  }

  /** Disconnect everyone, close the port and the socket. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    this.#abort.abort();
    for (const l of this.#waiting.splice(0)) l.socket.destroy();
    this.#dropLocals();
    this.#port?.close();
    await this.#loop;
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
    try {
      unlinkSync(this.#socketPath);
    } catch { /* already gone */ }
  }

  /**
   * Give the ivshmem device the socket's group (mode 0660): each local process maps its slot
   * itself. Whoever is in the group can map every slot; that is the boundary (see the doc).
   */
  #shareDevice(gid: number) {
    const dev = this.#device;
    if (!dev) return;
    try {
      chownSync(dev.path, -1, gid);
      chmodSync(dev.path, DEFAULT_SOCKET_MODE);
    } catch (err) {
      this.#log.warn("cannot give the ivshmem device the socket's group", {
        device: dev.path,
        error: (err as Error).message,
      });
    }
  }

  async #findDevice() {
    const shm = this.#o.shm;
    if (shm === false) {
      this.#deviceReason = "disabled by the shm option";
      return;
    }
    try {
      if (typeof shm === "string") {
        this.#device = { path: shm, size: statSync(shm).size };
        return;
      }
      const ffi = await import("../../ffi/mod.ts");
      const { findVbusIvshmem } = await import("../shm/find_ivshmem.ts");
      const dev = findVbusIvshmem({ map: ffi.mapSharedSync });
      this.#device = { path: dev.path, size: dev.size };
    } catch (err) {
      this.#deviceReason = `no ivshmem device: ${(err as Error).message}`;
      this.#log.warn("local processes will use the port stream", { reason: this.#deviceReason });
    }
  }

  /** Open the port, MUX_HELLO, serve until it closes; again with backoff. */
  async #runPort() {
    const backoff = new Backoff({
      initialMs: this.#o.reconnect?.initialMs ?? 50,
      maxMs: this.#o.reconnect?.maxMs ?? 2000,
    });
    const opener = this.#o.transport ??
      (() => openDevice(portPath(this.#o.port ?? (process.env.VBUS_PORT || DEFAULT_PORT_NAME))));
    let lastError = "";
    while (this.#running) {
      let port: Port;
      try {
        port = await opener();
      } catch (err) {
        const msg = (err as Error).message;
        if (msg !== lastError) this.#log.warn("cannot open the port, retrying", { error: msg });
        lastError = msg;
        await sleep(backoff.next(), this.#abort.signal);
        continue;
      }
      lastError = "";
      if (!this.#running) {
        port.close();
        break;
      }
      const startedAt = Date.now();
      const why = await this.#serve(port);
      this.#log.info("disconnected from the broker", { reason: why });
      if (Date.now() - startedAt > 5000) backoff.reset();
      if (this.#running) await sleep(backoff.next(), this.#abort.signal);
    }
  }

  /** One port session: resolves with why it ended. */
  #serve(port: Port): Promise<string> {
    this.#port = port;
    const nonce = (Math.random() * 0x7fffffff) | 0;
    let decoder = new EnvelopeDecoder();
    return new Promise<string>((resolve) => {
      let done = false;
      const end = (reason: string) => {
        if (done) return;
        done = true;
        this.#welcome = undefined;
        this.#dropLocals();
        this.#table = undefined;
        this.#port = undefined;
        port.close();
        resolve(reason);
      };
      port.start((chunk) => {
        try {
          const plain = decoder.push(chunk, (kind, channel, body) => {
            if (!this.#welcome) {
              if (kind !== EnvelopeKind.MuxWelcome) return; // stale bytes of an earlier agent
              const w = decodeEnvelopeBody(body);
              if (w.nonce !== nonce) return;
              return this.#onWelcome(w);
            }
            this.#onEnvelope(kind, channel, body, end);
          });
          // The broker speaks envelopes only: a vbus frame here is foreign bytes.
          if (plain) throw new Error("a vbus frame where an envelope was due");
        } catch (err) {
          if (this.#welcome) return end(`bad bytes from the broker: ${(err as Error).message}`);
          // Before our MUX_WELCOME: stale or foreign bytes (an old broker's ERR). Resync.
          decoder = new EnvelopeDecoder();
          const at = findMagic(chunk);
          if (at >= 0) {
            try {
              decoder.push(chunk.subarray(at), () => {});
            } catch { /* wait for the next chunk */ }
          }
        }
      }, (err) => {
        end(
          this.#welcome
            ? (err ? `port error: ${err.message}` : "the broker went away")
            : "the port closed before MUX_WELCOME (no broker yet, or one without agent support)",
        );
      });
      port.write(encodeEnvelope(EnvelopeKind.MuxHello, 0, {
        v: MUX_VERSION,
        nonce,
        slots: this.#o.slots ?? 0,
        agent: `vbus-agent pid ${process.pid}`,
      }));
    });
  }

  #onWelcome(w: Record<string, unknown>) {
    if (typeof w.error === "string") {
      this.#log.error("the broker refused the agent", { error: w.error });
      this.#port?.close();
      return;
    }
    const int = (n: unknown, max: number) =>
      Number.isInteger(n) && (n as number) >= 0 && (n as number) <= max;
    const channels = int(w.channels, 256) ? w.channels as number : 0;
    let slots = int(w.slots, channels) ? w.slots as number : 0;
    let reason = typeof w.reason === "string" ? w.reason : undefined;
    const dev = this.#device;
    if (slots > 0 && !dev) {
      reason = this.#deviceReason;
      slots = 0;
    } else if (slots > 0 && dev && dev.size !== w.regionSize) {
      reason = `the device ${dev.path} has ${dev.size} bytes, the broker's region ${w.regionSize}`;
      slots = 0;
    }
    const mine = this.#o.slots && this.#o.slots > 0 ? Math.min(this.#o.slots, channels) : channels;
    this.#welcome = { ...w, reason };
    this.#table = new SlotTable<Local>(mine, Math.min(slots, mine));
    this.#log.info("connected to the broker", { channels: mine, slots: this.#table.slots, reason });
    for (const l of this.#waiting.splice(0)) {
      if (!l.socket.destroyed) this.#admit(l);
    }
  }

  #onEnvelope(kind: EnvelopeKind, id: number, body: Uint8Array, end: (r: string) => void) {
    const table = this.#table!;
    if (kind === EnvelopeKind.Error) {
      const e = safeBody(body);
      this.#log.error("the broker reported an agent protocol error", { message: e.message });
      return end(`the broker's ERROR: ${String(e.message)}`);
    }
    const entry = table.get(id);
    if (kind === EnvelopeKind.Data) {
      if (!entry || entry.closeSent) return; // the process is gone; its CLOSE is on the way
      const s = entry.owner.socket;
      s.write(body);
      if (s.writableLength > LOCAL_QUEUE_LIMIT) {
        this.#log.warn("a local process does not read; disconnecting it", { channel: id });
        s.destroy();
      }
      return;
    }
    if (kind === EnvelopeKind.Close) {
      if (!entry) return;
      if (!entry.closeSent) {
        // The broker ended the session (a fatal ERR went before): end the process's socket.
        entry.owner.socket.end();
        this.#sendClose(entry, "the broker closed the session");
      }
      table.gotClose(entry);
      return;
    }
    // MUX_WELCOME again or an unknown direction: ignore.
  }

  #accept(socket: Socket) {
    const local: Local = { socket };
    socket.on("error", () => {});
    if (!this.#table) {
      if (this.#waiting.length >= MAX_WAITING) {
        this.#refuse(local, `${MAX_WAITING} processes are already waiting for the broker`);
        return;
      }
      this.#waiting.push(local);
      socket.once("close", () => {
        const i = this.#waiting.indexOf(local);
        if (i >= 0) this.#waiting.splice(i, 1);
      });
      return;
    }
    this.#admit(local);
  }

  #admit(local: Local) {
    const table = this.#table!;
    const entry = table.take(local);
    if (!entry) {
      this.#refused++;
      this.#refuse(
        local,
        `all ${table.channels} slots of this agent are in use (the limit: the agent's --slots ` +
          `or the broker's vms[].agentSlots, here ${table.channels}); a slot is free again ` +
          `when a process using it exits`,
      );
      return;
    }
    local.entry = entry;
    const dev = this.#device;
    const w = this.#welcome!;
    const slot = entry.slot >= 0 && dev
      ? {
        index: entry.slot,
        offset: (w.slotOffset as number) + entry.slot * (w.slotStride as number),
        size: w.slotSize as number,
      }
      : null;
    this.#port!.write(
      encodeEnvelope(EnvelopeKind.Open, entry.id, { slot: slot ? slot.index : -1 }),
    );
    const socket = local.socket;
    socket.write(encodeEnvelope(EnvelopeKind.Attach, 0, {
      v: MUX_VERSION,
      channel: entry.id,
      slot,
      ...(dev ? { device: dev.path, deviceSize: dev.size } : {}),
      ...(slot ? {} : { reason: String(w.reason ?? `no slot for channel ${entry.id}`) }),
    }));
    socket.on("data", (chunk: Uint8Array) => this.#fromLocal(entry, chunk));
    socket.once("close", () => {
      if (this.#table === table && !entry.closeSent) this.#sendClose(entry, "the process exited");
      if (this.#table === table) table.sentClose(entry);
    });
  }

  #fromLocal(entry: ChannelEntry<Local>, chunk: Uint8Array) {
    const port = this.#port;
    if (!port || entry.closeSent) return;
    let ok = true;
    for (let at = 0; at < chunk.length; at += MAX_ENVELOPE_BODY) {
      const part = chunk.subarray(at, Math.min(chunk.length, at + MAX_ENVELOPE_BODY));
      port.write(envelopeHeader(EnvelopeKind.Data, entry.id, part.length));
      ok = port.write(part);
    }
    if (!ok) {
      // The port is backed up: stop reading this process until it drains.
      const s = entry.owner.socket;
      s.pause();
      this.#portHeld++;
      port.drained().then(() => {
        this.#portHeld--;
        if (!s.destroyed) s.resume();
      });
    }
  }

  #sendClose(entry: ChannelEntry<Local>, reason: string) {
    entry.closeSent = true;
    this.#port?.write(encodeEnvelope(EnvelopeKind.Close, entry.id, { reason }));
  }

  #refuse(local: Local, error: string) {
    this.#log.warn("refused a local process", { error });
    local.socket.end(encodeEnvelope(EnvelopeKind.Attach, 0, { v: MUX_VERSION, error }));
  }

  /** The broker connection is gone: every attached process must reconnect. */
  #dropLocals() {
    const table = this.#table;
    if (!table) return;
    for (const e of table.all()) e.owner.socket.destroy();
    table.clear();
  }
}

function safeBody(body: Uint8Array): Record<string, unknown> {
  try {
    return decodeEnvelopeBody(body);
  } catch {
    return {};
  }
}

function findMagic(chunk: Uint8Array): number {
  for (let i = 0; i + 1 < chunk.length; i++) {
    if (chunk[i] === ENVELOPE_MAGIC_0 && chunk[i + 1] === ENVELOPE_MAGIC_1) return i;
  }
  return -1;
}

/** Remove a socket file left by a dead agent; refuse anything else or a live agent's. */
async function removeStaleSocket(path: string) {
  let info;
  try {
    info = lstatSync(path);
  } catch {
    return;
  }
  if (!info.isSocket()) {
    throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  }
  let live = false;
  try {
    const probe = await connectUnix(path);
    probe.close();
    live = true;
  } catch { /* nobody listens: stale */ }
  if (live) throw new Error(`another vbus agent listens on ${path}`);
  unlinkSync(path);
}

/**
 * The local side of `vbus agent`: where its socket is, the ATTACH envelope it sends first on
 * every local connection (docs/PROTOCOL.md section 14), and {@link openAgentPort}, which a
 * client uses instead of the VM's port: it reads the ATTACH (the process's channel, its slot
 * and the device to map) and returns a {@link Port} carrying the ordinary protocol.
 *
 * @example
 * ```ts
 * import { openAgentPort } from "./attach.ts";
 * const { port, attach } = await openAgentPort("/run/vbus/agent.sock");
 * console.log(attach.channel, attach.slot?.offset);
 * ```
 * @module
 */
import { existsSync } from "node:fs";
import process from "node:process";
import type { Port } from "../port/port.ts";
import { connectUnix } from "../port/socket_port.ts";
import { FedPort } from "../port/fed_port.ts";
import {
  decodeEnvelopeBody,
  ENVELOPE_HEADER_BYTES,
  ENVELOPE_MAGIC_0,
  ENVELOPE_MAGIC_1,
  EnvelopeKind,
  MUX_VERSION,
} from "../protocol/channel_frame.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";

/** The agent's socket when `VBUS_AGENT` does not name another. */
export const DEFAULT_AGENT_SOCKET = "/run/vbus/agent.sock";
/** Environment variable naming the agent's socket. */
export const AGENT_ENV = "VBUS_AGENT";
/**
 * How long a local process waits for its ATTACH: an agent holds new processes until it is
 * connected to the broker; after this the connect loop tries again.
 */
export const ATTACH_TIMEOUT_MS = 5000;
/** Largest ATTACH body accepted from an agent. */
const MAX_ATTACH_BYTES = 64 * 1024;

/** What the agent tells a local process about its channel (the ATTACH envelope's body). */
export interface AttachInfo {
  v: number;
  channel: number;
  /** The process's ring pair inside the device, or null: it runs on the port stream. */
  slot: { index: number; offset: number; size: number } | null;
  /** What to map: the ivshmem BAR (`resource2`) or a simulated VM's file, and its size. */
  device?: string;
  deviceSize?: number;
  /** Why there is no slot, when there is none. */
  reason?: string;
}

/**
 * The agent socket a `connect()` with no endpoint option uses: `VBUS_AGENT` if set, else
 * {@link DEFAULT_AGENT_SOCKET} if it exists, else undefined (open the port directly).
 *
 * @example
 * ```ts
 * agentSocket(); // "/run/vbus/agent.sock" while an agent runs in this guest
 * ```
 */
export function agentSocket(): string | undefined {
  let named: string | undefined;
  try {
    named = process.env[AGENT_ENV] || undefined;
  } catch {
    return undefined; // no env permission: no agent either
  }
  if (named) return named;
  try {
    return existsSync(DEFAULT_AGENT_SOCKET) ? DEFAULT_AGENT_SOCKET : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Check an ATTACH body from the agent (hostile as everything else: a bad one is an error).
 *
 * @example
 * ```ts
 * parseAttach({ v: 1, channel: 1, slot: null, reason: "no shm" }).channel; // 1
 * ```
 */
export function parseAttach(body: Record<string, unknown>): AttachInfo {
  if (body.v !== MUX_VERSION) throw new Error(`agent mux version ${String(body.v)} is not 1`);
  if (typeof body.error === "string") throw new Error(body.error);
  const int = (n: unknown) => Number.isInteger(n) && (n as number) >= 0;
  if (!int(body.channel)) throw new Error("ATTACH without a channel");
  const s = body.slot as Record<string, unknown> | null | undefined;
  let slot: AttachInfo["slot"] = null;
  if (s !== null && s !== undefined) {
    if (typeof s !== "object" || !int(s.index) || !int(s.offset) || !int(s.size)) {
      throw new Error("ATTACH with a malformed slot");
    }
    if (typeof body.device !== "string" || !int(body.deviceSize)) {
      throw new Error("ATTACH with a slot but no device");
    }
    if ((s.offset as number) + (s.size as number) > (body.deviceSize as number)) {
      throw new Error("ATTACH with a slot outside the device");
    }
    slot = { index: s.index as number, offset: s.offset as number, size: s.size as number };
  }
  return {
    v: MUX_VERSION,
    channel: body.channel as number,
    slot,
    ...(typeof body.device === "string" ? { device: body.device } : {}),
    ...(int(body.deviceSize) ? { deviceSize: body.deviceSize as number } : {}),
    ...(typeof body.reason === "string" ? { reason: body.reason } : {}),
  };
}

/**
 * Connect to the agent at `path` and read its ATTACH. Rejects with the agent's refusal (e.g.
 * every slot in use, naming the limit) or when it closes first.
 *
 * @example
 * ```ts
 * const { port, attach } = await openAgentPort("/run/vbus/agent.sock");
 * ```
 */
export async function openAgentPort(path: string): Promise<{ port: Port; attach: AttachInfo }> {
  const socket = await connectUnix(path);
  return await new Promise((resolve, reject) => {
    let head: Uint8Array = new Uint8Array(0);
    let attached = false;
    const port = new FedPort(`vbus agent ${path}`, {
      write: (b) => socket.write(b),
      pending: () => socket.pending,
      drained: () => socket.drained(),
      close: () => socket.close(),
      pause: () => socket.pause(),
      resume: () => socket.resume(),
    });
    const timer = setTimeout(
      () =>
        fail(`no ATTACH within ${ATTACH_TIMEOUT_MS} ms (is the agent connected to the broker?)`),
      ATTACH_TIMEOUT_MS,
    );
    const fail = (message: string) => {
      clearTimeout(timer);
      socket.close();
      reject(new VbusError(ErrorCode.Port, `vbus agent ${path}: ${message}`));
    };
    socket.start((chunk) => {
      if (attached) return port.feed(chunk);
      const joined = new Uint8Array(head.length + chunk.length);
      joined.set(head, 0);
      joined.set(chunk, head.length);
      head = joined;
      if (head.length < ENVELOPE_HEADER_BYTES) return;
      if (
        head[0] !== ENVELOPE_MAGIC_0 || head[1] !== ENVELOPE_MAGIC_1 ||
        head[2] !== EnvelopeKind.Attach
      ) {
        return fail("the first bytes are not an ATTACH envelope (is this a vbus agent?)");
      }
      const length = new DataView(head.buffer, head.byteOffset).getUint32(8);
      if (length > MAX_ATTACH_BYTES) return fail(`ATTACH of ${length} bytes`);
      if (head.length < ENVELOPE_HEADER_BYTES + length) return;
      let attach: AttachInfo;
      try {
        const body = head.subarray(ENVELOPE_HEADER_BYTES, ENVELOPE_HEADER_BYTES + length);
        attach = parseAttach(decodeEnvelopeBody(body));
      } catch (err) {
        return fail((err as Error).message);
      }
      attached = true;
      clearTimeout(timer);
      const rest = head.subarray(ENVELOPE_HEADER_BYTES + length);
      head = new Uint8Array(0);
      resolve({ port, attach });
      if (rest.length > 0) port.feed(rest);
    }, (err) => {
      if (!attached) {
        fail(
          `closed before ATTACH${
            err ? `: ${err.message}` : " (is the agent connected to the broker?)"
          }`,
        );
      } else port.end(err);
    });
  });
}

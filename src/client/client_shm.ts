/**
 * A connection's shared memory: what it plans to use (nothing, a guest's ivshmem BAR or file,
 * or a region the broker makes for a host client), the mappings, the futex sleepers of a
 * `wake: "futex"` host client, and the ring channel of the current session.
 *
 * The plan is made once per connection ({@link ClientShm.prepare}: map the guest's memory,
 * start the futex Workers); if that fails the connection says why and uses the port stream.
 * Each session then offers it in HELLO ({@link ClientShm.offer}) and attaches to the region
 * the broker prepared ({@link ClientShm.attach}); a region it cannot use makes the session
 * start again without shared memory.
 *
 * @example
 * ```ts
 * import { ClientShm, shmPlanFor } from "./client_shm.ts";
 * import { createLogger } from "../util/log.ts";
 * import type { WelcomeHead } from "../protocol/ops.ts";
 * import type { ShmAnswer } from "../shm/negotiation.ts";
 * declare const welcome: WelcomeHead; // the broker's answer to the HELLO carrying the offer
 * const plan = shmPlanFor({ kind: "server" }, true, "doorbell"); // { kind: "host", futex: false }
 * const shm = new ClientShm(plan, createLogger("client"));
 * await shm.prepare();
 * const offer = shm.offer(); // goes into HELLO: { want: true }
 * const problem = shm.attach(welcome.shm as ShmAnswer | undefined, {
 *   ringDoorbell: (ring, kind) => console.log("send a DOORBELL frame", ring, kind),
 *   onFrame: (frame) => console.log("a frame from the inbound ring, op", frame.op),
 *   onCorrupt: (err) => console.error("hang up and start a new session:", err.message),
 * }); // undefined: the session runs on shm.ring, which the caller starts
 * if (problem === undefined) shm.ring?.start();
 * shm.shutdown(); // the connection closed
 * ```
 * @module
 */
import { statSync } from "node:fs";
import type { FutexWaiter } from "../../ffi/futex_waiter.ts";
import type { Frame } from "../protocol/frame.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import { attachRegion } from "../ring/region.ts";
import {
  type Ffi,
  loadFfi,
  type ShmAnswer,
  type ShmOffer,
  writeGuestNonce,
} from "../shm/negotiation.ts";
import { type FutexWakeups, RingChannel, type RingChannelStats } from "../shm/ring_channel.ts";
import { findVbusIvshmem } from "../shm/find_ivshmem.ts";
import type { Logger } from "../util/log.ts";
import type { AttachInfo } from "../agent/attach.ts";

/** How a connection gets shared memory. */
export type ShmPlan =
  | { kind: "none"; reason: string }
  /** Map a file or the ivshmem BAR (found by PCI id when `path` is absent), offer it in HELLO. */
  | { kind: "guest"; path?: string }
  /** Ask the broker for a per-session region. */
  | { kind: "host"; futex: boolean }
  /** Through `vbus agent`: map the device its ATTACH names and use this process's slot. */
  | { kind: "agent" };

/**
 * FUTEX_WAIT sleeps of a `wake: "futex"` client, waiting for data and for space.
 *
 * @example
 * ```ts
 * import { connect } from "./bus.ts";
 * import type { FutexSleepCounts } from "./client_shm.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock", wake: "futex" });
 * const futex: FutexSleepCounts | undefined = bus.ringStats?.futex;
 * if (futex) console.log(`${futex.data.sleeps} sleeps for data, ${futex.data.timeouts} timed out`);
 * ```
 */
export interface FutexSleepCounts {
  /** Sleeps waiting for records to read, and how many ran to their timeout. */
  data: { sleeps: number; timeouts: number };
  /** Sleeps waiting for room to write, and how many ran to their timeout. */
  space: { sleeps: number; timeouts: number };
}

/** What the ring of a session needs from its connection. */
export interface RingHooks {
  /** Send a DOORBELL frame on the port. */
  ringDoorbell(ring: number, kind: number): void;
  /** A frame read from the inbound ring (the same object for every record: read it during the call). */
  onFrame(frame: Frame): void;
  /** The inbound ring cannot be trusted any more. */
  onCorrupt(err: Error): void;
}

interface Mapping {
  bytes: Uint8Array;
  unmap(): void;
}

/**
 * The plan for an endpoint: a transport given by the caller (a simulated VM) uses the file
 * `shm` names, if any; a host client (`server`) asks the broker; a guest maps its device.
 *
 * @example
 * ```ts
 * shmPlanFor({ kind: "device" }, true, undefined); // { kind: "guest", path: undefined }
 * ```
 */
export function shmPlanFor(
  endpoint: { kind: "server" | "device" | "transport" },
  shm: string | boolean | undefined,
  wake: "doorbell" | "futex" | undefined,
): ShmPlan {
  if (endpoint.kind === "transport") {
    return typeof shm === "string"
      ? { kind: "guest", path: shm }
      : { kind: "none", reason: "no shared-memory file given for this transport" };
  }
  if (shm === false) return { kind: "none", reason: "disabled by the shm option" };
  return endpoint.kind === "server"
    ? { kind: "host", futex: wake === "futex" }
    : { kind: "guest", path: typeof shm === "string" ? shm : undefined };
}

/** A connection's shared memory; see the module doc. */
export class ClientShm {
  #plan: ShmPlan;
  #log: Logger;
  #ffi?: Ffi;
  #guestMapping?: Mapping;
  #sessionMapping?: Mapping;
  #futexWaiters?: [FutexWaiter, FutexWaiter];
  #futexCounts?: FutexSleepCounts;
  #ring?: RingChannel;
  #agentMapping?: Mapping & { path: string };
  #agentSlot?: Uint8Array;
  #agentReason = "";

  constructor(plan: ShmPlan, log: Logger) {
    this.#plan = plan;
    this.#log = log;
  }

  /** Why this connection uses no shared memory at all, or undefined when it may. */
  get unused(): string | undefined {
    return this.#plan.kind === "none" ? this.#plan.reason : undefined;
  }

  /** A guest maps memory the broker keeps reading after the guest hung up (see ring_salvage). */
  get isGuest(): boolean {
    return this.#plan.kind === "guest";
  }

  /** The current session's ring channel, if it runs on one. */
  get ring(): RingChannel | undefined {
    return this.#ring;
  }

  /** The ring's counters, with the futex sleeps of a `wake: "futex"` client. */
  get stats(): (RingChannelStats & { futex?: FutexSleepCounts }) | undefined {
    const ring = this.#ring;
    if (!ring) return undefined;
    const f = this.#futexCounts;
    return {
      ...ring.stats,
      ...(f ? { futex: { data: { ...f.data }, space: { ...f.space } } } : {}),
    };
  }

  /** Map what the plan says, once per connection; on failure say why and use the stream. */
  async prepare(): Promise<void> {
    const plan = this.#plan;
    if (plan.kind === "none") return;
    if (plan.kind === "agent") {
      try {
        this.#ffi = await loadFfi();
      } catch (err) {
        this.#plan = {
          kind: "none",
          reason: `shared memory unavailable: ${(err as Error).message}`,
        };
      }
      return;
    }
    try {
      const ffi = this.#ffi = await loadFfi();
      if (plan.kind === "guest") {
        let path = plan.path;
        let size: number;
        if (path) {
          size = statSync(path).size;
        } else {
          // The vbus one by its region signature, or VBUS_IVSHMEM: see find_ivshmem.ts.
          const dev = findVbusIvshmem({ map: ffi.mapSharedSync });
          path = dev.path;
          size = dev.size;
        }
        this.#guestMapping = ffi.mapSharedSync(path, size);
      }
      if (plan.kind === "host" && plan.futex && !this.#futexWaiters) {
        // Started once and kept across reconnects: a Worker takes a while to start.
        let waiters: FutexWaiter[] = [];
        try {
          waiters = [new ffi.FutexWaiter(), new ffi.FutexWaiter()];
          await Promise.all(waiters.map((w) => w.ready));
          this.#futexWaiters = waiters as [FutexWaiter, FutexWaiter];
        } catch (err) {
          await Promise.all(waiters.map((w) => w.close()));
          plan.futex = false;
          this.#log.warn("futex wake-ups unavailable, using doorbell frames", {
            reason: (err as Error).message,
          });
        }
      }
    } catch (err) {
      const reason = `shared memory unavailable: ${(err as Error).message}`;
      this.#plan = { kind: "none", reason };
      this.#log.info("using the port stream only", { reason });
    }
  }

  /**
   * A new connection to the agent: use the slot its ATTACH names (mapping the device it
   * names, once), or none. Called before the HELLO of that connection.
   */
  useAgentSlot(attach: AttachInfo): void {
    this.#agentSlot = undefined;
    if (this.#plan.kind !== "agent") return;
    if (!attach.slot || !attach.device || attach.deviceSize === undefined) {
      this.#agentReason = `the agent gave no slot: ${attach.reason ?? "no reason given"}`;
      return;
    }
    try {
      let m = this.#agentMapping;
      if (!m || m.path !== attach.device || m.bytes.length !== attach.deviceSize) {
        const old = m;
        const mapped = this.#ffi!.mapSharedSync(attach.device, attach.deviceSize);
        m = this.#agentMapping = {
          bytes: mapped.bytes,
          unmap: () => mapped.unmap(),
          path: attach.device,
        };
        if (old) this.stopRing().then(() => old.unmap());
      }
      const { offset, size } = attach.slot;
      this.#agentSlot = m.bytes.subarray(offset, offset + size);
    } catch (err) {
      this.#agentReason = `cannot map the agent's device: ${(err as Error).message}`;
    }
  }

  /** What to offer in HELLO, or undefined when there is nothing to offer. */
  offer(): ShmOffer | undefined {
    const plan = this.#plan;
    if (plan.kind === "agent") {
      const slot = this.#agentSlot;
      return slot ? { size: slot.length, nonce: writeGuestNonce(slot) } : undefined;
    }
    if (plan.kind === "host") return plan.futex ? { want: true, futex: true } : { want: true };
    if (plan.kind === "guest" && this.#guestMapping) {
      const bytes = this.#guestMapping.bytes;
      return { size: bytes.length, nonce: writeGuestNonce(bytes) };
    }
    return undefined;
  }

  /**
   * Attach to the region the broker prepared for this session; returns why not, or undefined
   * once the session's ring channel exists (not started: the caller starts it). The caller
   * has taken the previous session's sender off the old ring first.
   */
  attach(answer: ShmAnswer | undefined, hooks: RingHooks): string | undefined {
    if (!answer) return "the broker did not answer the shared-memory offer";
    if (!answer.ok) {
      return `the broker declined shared memory: ${answer.reason ?? "no reason given"}`;
    }
    try {
      let bytes: Uint8Array;
      if (this.#plan.kind === "host") {
        if (typeof answer.path !== "string" || typeof answer.size !== "number") {
          return "malformed shared-memory answer";
        }
        const old = this.#sessionMapping;
        this.#sessionMapping = this.#ffi!.mapSharedSync(answer.path, answer.size);
        if (old) this.stopRing().then(() => old.unmap());
        bytes = this.#sessionMapping.bytes;
      } else if (this.#plan.kind === "agent") {
        if (!this.#agentSlot) return this.#agentReason;
        bytes = this.#agentSlot;
      } else {
        bytes = this.#guestMapping!.bytes;
      }
      const region = attachRegion(bytes, "guest");
      if (region.epoch !== answer.epoch) {
        return `region epoch ${region.epoch} is not the broker's ${answer.epoch}`;
      }
      this.stopRing();
      this.#futexCounts = undefined;
      const futex = this.#plan.kind === "host" && this.#futexWaiters && answer.futex === true
        ? this.#futexSleepers()
        : undefined;
      this.#ring = new RingChannel(region, {
        maxFrameBytes: DEFAULT_LIMITS.maxFrameBytes * 2,
        ringDoorbell: hooks.ringDoorbell,
        futex,
        onFrame: hooks.onFrame,
        onCorrupt: hooks.onCorrupt,
        // A MSG is read during the call (a Msg keeps its payload view, never the frame).
        reuseFrames: true,
      });
      return undefined;
    } catch (err) {
      return `cannot attach the region: ${(err as Error).message}`;
    }
  }

  /** Stop the ring channel; resolves when it no longer touches the mapping. */
  stopRing(): Promise<void> {
    const ring = this.#ring;
    if (!ring) return Promise.resolve();
    this.#ring = undefined;
    ring.region.detach();
    return ring.stop();
  }

  /** The connection closed: stop the ring, the futex Workers, then unmap everything. */
  shutdown(): void {
    const mappings = [this.#guestMapping, this.#sessionMapping, this.#agentMapping];
    this.#guestMapping = this.#sessionMapping = this.#agentMapping = undefined;
    this.#agentSlot = undefined;
    const waiters = this.#futexWaiters ?? [];
    this.#futexWaiters = undefined;
    this.stopRing()
      .then(() => Promise.all(waiters.map((w) => w.close())))
      .then(() => mappings.forEach((m) => m?.unmap()));
  }

  /** Sleep in FUTEX_WAIT (one Worker per sleeper, started in prepare()). */
  #futexSleepers(): FutexWakeups {
    const ffi = this.#ffi!;
    const [dataWaiter, spaceWaiter] = this.#futexWaiters!;
    const all = this.#futexCounts = {
      data: { sleeps: 0, timeouts: 0 },
      space: { sleeps: 0, timeouts: 0 },
    };
    const sleeper =
      (waiter: FutexWaiter, counts: { sleeps: number; timeouts: number }) =>
      async (word: Int32Array, index: number, expected: number, ms: number) => {
        counts.sleeps++;
        if (await waiter.wait(word, index, expected, ms) === "timed-out") counts.timeouts++;
      };
    return {
      wake: (word, index) => ffi.futexWake(word, index, 1),
      peerSleeps: false, // the broker serves every session from one event loop: it takes frames
      sleep: { data: sleeper(dataWaiter, all.data), space: sleeper(spaceWaiter, all.space) },
    };
  }
}

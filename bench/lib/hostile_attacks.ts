/**
 * The attacks of issue 9, one per item, as the hostile bench runs them: each is a description
 * of the attacker VMs it needs (their chardevs are played by the harness), the broker limits
 * and permissions it runs under, a setup before the measured window, and a run that attacks
 * until the window's deadline and returns what the attacker saw. The attackers speak raw
 * frames and write shared memory directly (`tests/fixtures/raw_guest.ts`, `raw_chardev.ts`,
 * `raw_ring_guest.ts`, `ring_flood.ts`), as a compromised guest or host process would.
 *
 * Every loop here is bounded by the deadline and by a count, and every wait by a timeout.
 *
 * @example
 * ```ts
 * import { ATTACKS } from "./hostile_attacks.ts";
 * console.log(ATTACKS.map((a) => `${a.name}: ${a.title}`).join("\n"));
 * ```
 * @module
 */
import { closeSync, ftruncateSync, openSync } from "node:fs";
import { Packr } from "msgpackr";
import {
  frame,
  frameHeaderAnnouncing,
  rawHostClient,
  type RawPeer,
  repeated,
  repeatedKeyPubHead,
} from "../../tests/fixtures/raw_guest.ts";
import type { RawChardev } from "../../tests/fixtures/raw_chardev.ts";
import { RawRingGuest } from "../../tests/fixtures/raw_ring_guest.ts";
import { type RingFloodProcess, startRingFlood } from "../../tests/fixtures/ring_flood.ts";
import { yieldNow } from "../../tests/fixtures/wait.ts";
import type { BrokerStats } from "../../src/broker/stats.ts";
import { mapSharedSync } from "../../ffi/mod.ts";
import { encodeValue } from "../../src/protocol/codec.ts";
import { encodeFrame } from "../../src/protocol/frame.ts";
import { Op, type WelcomeHead } from "../../src/protocol/ops.ts";
import { RingId } from "../../src/ring/layout.ts";

/** One attacker VM of an attack. */
export interface AttackVm {
  name: string;
  /**
   * "peer": a {@link RawChardev} whose connections keep every frame they get (a logged
   * {@link RawPeer} each). "raw": one that only counts MSGs; with `reads: false` its socket is
   * never read.
   */
  chardev: "peer" | "raw";
  reads?: boolean;
  /** Give it a shared-memory file (the ring path). */
  shm?: boolean;
  permissions?: Record<string, unknown>;
}

/** What an attack can reach. */
export interface AttackContext {
  /** The broker's host socket. */
  listen: string;
  /** Length of the measured window (s). */
  seconds: number;
  /** `Date.now()` at which the window ends: every attack stops by then. */
  deadline: number;
  shmSize: number;
  /** Capacity of a VM's inbound ring (every VM region has the same size). */
  ringCapacity: number;
  peerDev(name: string): RawChardev;
  rawDev(name: string): RawChardev;
  socketPath(name: string): string;
  shmPath(name: string): string;
  /** `$VBUS.STATS` through the harness's own host client. */
  stats(): Promise<BrokerStats>;
}

/**
 * What the attacker saw, for the report: counts and short strings; `headline`, if set, is the
 * few words the results table shows.
 */
export type Observations = Record<string, number | string | Record<string, number>>;

/** One attack of issue 9. */
export interface Attack {
  /** Short name for `--only` (the item number works too). */
  name: string;
  /** Issue 9 item number(s). */
  item: string;
  /** One line: what the attacker does. */
  title: string;
  vms: AttackVm[];
  /** Endpoints whose broker stats describe the attacker: VM names, or "host". */
  attackers: string[];
  /** Limits beyond the bench's defaults. */
  limits?: Record<string, number>;
  /** The host service also publishes this much to `svc.events` during the window. */
  serviceEvents?: { bytes: number; count: number };
  /** Before the window (not measured). */
  setup?(ctx: AttackContext): Promise<unknown>;
  /** During the window, until `ctx.deadline`. */
  run(ctx: AttackContext, state: unknown): Promise<Observations>;
  /** After the window, whatever happened. */
  cleanup?(state: unknown): Promise<void> | void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));
const left = (ctx: AttackContext) => ctx.deadline - Date.now();

function bump(rec: Record<string, number>, key: string, n = 1) {
  rec[key] = (rec[key] ?? 0) + n;
}

/** ERR codes received by every connection of a peer chardev. */
function peerErrors(dev: RawChardev): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of dev.peers) for (const e of p.errors()) bump(out, e.code);
  return out;
}

/**
 * A ring guest on the current connection of raw chardev `name`, its region mapped: it
 * publishes through its outbound ring and never reads its inbound ring.
 */
function stalledRingGuest(ctx: AttackContext, name: string): RawRingGuest {
  const peer = ctx.rawDev(name).peer;
  if (!peer) throw new Error(`the broker is not connected to ${name}`);
  return new RawRingGuest(peer, mapSharedSync(ctx.shmPath(name), ctx.shmSize));
}

/** ERR codes a raw chardev read. */
function rawErrors(dev: RawChardev): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of dev.errors()) bump(out, String(e?.code ?? "?"));
  return out;
}

/**
 * The live connection of a peer chardev, waiting (until the deadline) for the broker's next
 * one when the last was closed; undefined once the window is over.
 */
async function livePeer(ctx: AttackContext, dev: RawChardev): Promise<RawPeer | undefined> {
  for (;;) {
    const last = dev.peers[dev.peers.length - 1];
    if (last && !last.closed) return last;
    if (left(ctx) <= 0) return undefined;
    try {
      await dev.nextPeer(dev.peers.length + 1, left(ctx));
    } catch {
      return undefined;
    }
  }
}

/** HELLO on the live connection (again after every reset); undefined at the deadline. */
async function helloedPeer(
  ctx: AttackContext,
  dev: RawChardev,
  helloed: WeakSet<RawPeer>,
): Promise<RawPeer | undefined> {
  while (left(ctx) > 0) {
    const peer = await livePeer(ctx, dev);
    if (!peer) return undefined;
    if (helloed.has(peer)) return peer;
    try {
      await peer.hello({}, Math.max(100, left(ctx)));
      helloed.add(peer);
      return peer;
    } catch {
      await sleep(20); // closed meanwhile: the next connection
    }
  }
  return undefined;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A deterministic PRNG, so every run attacks with the same patterns. */
function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `n` tokens: `n - 1` random picks of `a` or `*`, then `z` (as tests/hostile_match_test.ts):
 * a subject of `a`s walks every node of the index, and the final `z` matches nothing.
 */
function hostilePattern(n: number, random: () => number): string {
  const tokens: string[] = [];
  for (let i = 0; i < n - 1; i++) tokens.push(random() < 0.5 ? "a" : "*");
  tokens.push("z");
  return tokens.join(".");
}

/** The `i`th distinct subject of `n` tokens: `n - 1` `a`s and a last token that is never `z`. */
function hostileSubject(n: number, i: number): string {
  return `${"a.".repeat(n - 1)}y${i.toString(36)}`;
}

/** A msgpack map cut short (tests/hostile_payload_test.ts). */
const TRUNCATED = (() => {
  const whole = encodeValue({ reading: "a value long enough to be cut", n: 42 });
  return whole.subarray(0, whole.length - 5);
})();
/** An object that contains itself, as msgpackr's structured clone writes it. */
const CYCLIC = (() => {
  const loop: Record<string, unknown> = { name: "loop" };
  loop.self = loop;
  return new Packr({ structuredClone: true }).pack(loop);
})();

/** Limits every attack runs under (the rest are the broker's defaults). */
export const BENCH_LIMITS = { maxPendingBytes: 8 * 1024 * 1024 };

/** No attacker: the reference row. */
const baseline: Attack = {
  name: "baseline",
  item: "-",
  title: "no attack",
  vms: [],
  attackers: [],
  run: async (ctx) => {
    await sleep(left(ctx));
    return {};
  },
};

/** Item 1: a bogus CONSUMER_POSITION in its own inbound ring, with a backlog behind it. */
const scribble: Attack = {
  name: "scribble",
  item: "1",
  title:
    "scribbles its inbound ring's CONSUMER_POSITION (misaligned / ahead) with a backlog queued, rings the doorbell; again after every reset",
  vms: [{ name: "bad", chardev: "peer", shm: true }],
  attackers: ["bad"],
  run: async (ctx) => {
    const dev = ctx.peerDev("bad");
    const fill = encodeFrame(
      Op.Pub,
      encodeValue(["bad.fill", null, null]),
      encodeValue(new Uint8Array(1000)),
    );
    // Enough to fill the inbound ring, so the rest waits in the broker's backlog.
    const fillCount = Math.ceil(ctx.ringCapacity / 1000) + 200;
    const obs = { cycles: 0, closedAfterScribble: 0, negotiationFailures: 0 };
    while (left(ctx) > 0 && obs.cycles < 100) {
      const peer = await livePeer(ctx, dev);
      if (!peer) break;
      const guest = new RawRingGuest(peer, mapSharedSync(ctx.shmPath("bad"), ctx.shmSize));
      try {
        await guest.negotiate(Math.max(100, left(ctx)));
      } catch {
        obs.negotiationFailures++;
        guest.close();
        await sleep(20);
        continue;
      }
      obs.cycles++;
      peer.send(Op.Sub, [1, "victim.>", null]); // innocent traffic into its ring too
      peer.send(Op.Sub, [2, "bad.fill", null]);
      for (let i = 0; i < fillCount; i++) peer.sendRaw(fill);
      await peer.ping(Math.max(100, left(ctx))).catch(() => {});
      const ahead = obs.cycles % 2 === 0 ? guest.inboundCapacity + 4096 : 12;
      guest.scribbleInboundConsumerPosition(guest.inboundProducerPosition() + ahead);
      peer.send(Op.Doorbell, [RingId.INBOUND, 1]); // "space freed": look at it now
      if (await peer.closedWithin(Math.min(2000, Math.max(0, left(ctx))))) {
        obs.closedAfterScribble++;
      }
      guest.close();
    }
    return {
      headline: `${obs.cycles} scribbles, ${obs.closedAfterScribble} sessions reset`,
      ...obs,
      errs: peerErrors(dev),
    };
  },
};

/** Item 2: a host client shrinks the region the broker gave it. */
const shrink: Attack = {
  name: "shrink",
  item: "2",
  title:
    "host clients ask for a region, map it, ftruncate it to 0, subscribe to victim traffic; a new client every 200 ms",
  vms: [],
  attackers: ["host"],
  run: async (ctx) => {
    const truncate: Record<string, number> = {};
    const errs: Record<string, number> = {};
    let clients = 0;
    while (left(ctx) > 0 && clients < 100) {
      const next = Date.now() + 200;
      const c = await rawHostClient(ctx.listen);
      clients++;
      try {
        const welcome = await c.hello({ shm: { want: true } } as never, Math.max(100, left(ctx)));
        const shm = welcome.shm as { ok?: boolean; path?: string; size?: number } | undefined;
        if (!shm?.ok || !shm.path || !shm.size) {
          bump(truncate, "no region");
        } else {
          const mapping = mapSharedSync(shm.path, shm.size);
          try {
            const fd = openSync(shm.path, "r+");
            try {
              ftruncateSync(fd, 0);
              bump(truncate, "shrunk");
            } catch (err) {
              bump(truncate, (err as NodeJS.ErrnoException).code ?? "error");
            } finally {
              closeSync(fd);
            }
            c.send(Op.Sub, [1, "victim.>", null]); // the broker now writes into that region
            await sleep(Math.min(100, left(ctx)));
          } finally {
            mapping.unmap();
          }
        }
      } catch {
        bump(truncate, "no welcome");
      }
      for (const e of c.errors()) bump(errs, e.code);
      c.close();
      await sleep(Math.min(next - Date.now(), left(ctx)));
    }
    const outcomes = Object.entries(truncate).map(([k, v]) => `${k}×${v}`).join(" ");
    return { headline: `${clients} clients, ftruncate → ${outcomes}`, clients, truncate, errs };
  },
};

/** Item 3: a 65,536-byte PUB head that decodes to one header, to the victims' subject. */
const maxHead: Attack = {
  name: "max-head",
  item: "3",
  title:
    "PUBs with a 65,536-byte head (one header key repeated; 25 bytes decoded) to the victims' stream subject, every 20 ms",
  vms: [{ name: "bad", chardev: "peer" }],
  attackers: ["bad"],
  run: async (ctx) => {
    const dev = ctx.peerDev("bad");
    const giant = encodeFrame(Op.Pub, repeatedKeyPubHead("victim.down", 65_536), encodeValue("x"));
    const helloed = new WeakSet<RawPeer>();
    let sent = 0;
    while (left(ctx) > 0 && sent < 10_000) {
      const peer = await helloedPeer(ctx, dev, helloed);
      if (!peer) break;
      peer.sendRaw(giant);
      sent++;
      await sleep(20);
    }
    return {
      headline: `${sent} giant heads sent`,
      sent,
      connections: dev.peers.length,
      errs: peerErrors(dev),
    };
  },
};

/** Item 4: messages larger than a victim's ring, from a publisher that re-HELLOs every 50. */
const tooLarge: Attack = {
  name: "too-large",
  item: "4",
  title:
    "publishes messages larger than the ring victim's inbound ring to a subject it subscribes, a fresh HELLO every 50 (resetting its own error count)",
  vms: [{ name: "bad", chardev: "peer" }],
  attackers: ["bad"],
  run: async (ctx) => {
    const dev = ctx.peerDev("bad");
    const big = encodeFrame(
      Op.Pub,
      encodeValue(["victim.vring.big", null, null]),
      encodeValue(new Uint8Array(ctx.ringCapacity + 64 * 1024)),
    );
    const helloed = new WeakSet<RawPeer>();
    let sent = 0, hellos = 0;
    while (left(ctx) > 0 && sent < 2000) {
      let peer = await helloedPeer(ctx, dev, helloed);
      if (!peer) break;
      if (sent > 0 && sent % 50 === 0) {
        await peer.hello({}, Math.max(100, left(ctx))).catch(() => {});
        hellos++;
        peer = await helloedPeer(ctx, dev, helloed);
        if (!peer) break;
      }
      peer.sendRaw(big);
      sent++;
      if (peer.port.pending > 8 * 1024 * 1024) {
        await Promise.race([peer.port.drained(), sleep(left(ctx))]);
      } else {
        await yieldNow();
      }
    }
    return {
      headline: `${sent} × ${
        ((ctx.ringCapacity + 64 * 1024) / 2 ** 20).toFixed(2)
      } MiB sent, ${hellos} HELLOs`,
      sent,
      hellos,
      connections: dev.peers.length,
      errs: peerErrors(dev),
    };
  },
};

/** Item 5: requests whose reply subject is another VM's subject it may not publish to. */
const foreignReply: Attack = {
  name: "foreign-reply",
  item: "5",
  title:
    "may publish only bad.>; sends requests to an unanswered subject with reply set to the victims' stream subject (no-responders bait), 20 per 10 ms",
  vms: [{ name: "bad", chardev: "peer", permissions: { publish: ["bad.>"] } }],
  attackers: ["bad"],
  run: async (ctx) => {
    const dev = ctx.peerDev("bad");
    const helloed = new WeakSet<RawPeer>();
    let sent = 0;
    const bait = [
      encodeFrame(Op.Pub, encodeValue(["bad.nobody", "victim.down", null]), encodeValue(1)),
      encodeFrame(Op.Pub, encodeValue(["bad.nobody", "victim.vport.x", null]), encodeValue(1)),
    ];
    const burst = repeated(concat(bait), 10);
    while (left(ctx) > 0 && sent < 200_000) {
      const peer = await helloedPeer(ctx, dev, helloed);
      if (!peer) break;
      peer.sendRaw(burst);
      sent += 20;
      await sleep(10);
    }
    return {
      headline: `${sent} baited requests`,
      sent,
      connections: dev.peers.length,
      errs: peerErrors(dev),
    };
  },
};

/** Item 6: a control-frame flood from a guest that never reads its port. */
function controlFlood(kind: "ping" | "hello"): Attack {
  return {
    name: `${kind}-flood`,
    item: "6",
    title:
      `never reads its port; floods ${kind.toUpperCase()}s (64 KiB writes, as fast as its socket takes them)`,
    vms: [{ name: "bad", chardev: "raw", reads: false }],
    attackers: ["bad"],
    setup: async (ctx) => {
      await ctx.rawDev("bad").hello();
    },
    run: async (ctx) => {
      const dev = ctx.rawDev("bad");
      const one = kind === "ping"
        ? frame(Op.Ping, [])
        : frame(Op.Hello, { v: 1, features: [], client: "hostile", nonce: 1 });
      const chunk = repeated(one, Math.floor(65536 / one.length));
      const bytes = await dev.flood(chunk, ctx.deadline, (b) => b > 4 * 1024 ** 3);
      const frames = Math.round(bytes / one.length);
      return {
        headline: `${frames} ${kind.toUpperCase()}s (${
          (bytes / 2 ** 20).toFixed(0)
        } MiB) taken by its socket`,
        frames,
        MiB: Math.round(bytes / 1024 ** 2),
      };
    },
  };
}

/** Item 7: a "block" subscription on its own subject, flooded through its ring. */
const selfBlock: Attack = {
  name: "self-block",
  item: "7",
  title:
    'permitted "block"; subscribes its own subject with block, never reads its inbound ring, floods that subject through its outbound ring (1 KiB)',
  vms: [{ name: "bad", chardev: "raw", reads: true, shm: true, permissions: { block: true } }],
  attackers: ["bad"],
  setup: async (ctx) => {
    const guest = stalledRingGuest(ctx, "bad");
    await guest.negotiate();
    guest.peer.send(Op.Sub, [1, "bad.loop", null, "block"]);
    await guest.peer.ping();
    return guest;
  },
  run: async (ctx, state) => {
    const guest = state as RawRingGuest;
    const dev = ctx.rawDev("bad");
    const head = encodeValue(["bad.loop", null, null]);
    const payload = new Uint8Array(1024).fill(1);
    let published = 0, n = 0;
    while (left(ctx) > 0 && !dev.closed && published < 50_000_000) {
      if (guest.publishRing(head, payload)) {
        published++;
        if (++n % 256 === 0) await yieldNow();
      } else {
        await sleep(1); // its outbound ring is full: the broker is not reading it now
      }
    }
    return { headline: `${published} × 1 KiB published`, published, errs: rawErrors(dev) };
  },
  cleanup: (state) => (state as RawRingGuest | undefined)?.unmap(),
};

/** Item 8: a "block" subscription on the host service's subject, never reading. */
const blockService: Attack = {
  name: "block-service",
  item: "8",
  title:
    'permitted "block"; subscribes the host service\'s svc.events with block and never reads its port (the service publishes 20 x 4 KiB per 10 ms there)',
  vms: [{ name: "bad", chardev: "raw", reads: false, permissions: { block: true } }],
  attackers: ["bad"],
  serviceEvents: { bytes: 4096, count: 20 },
  setup: async (ctx) => {
    const guest = ctx.rawDev("bad");
    await guest.hello();
    guest.send(Op.Sub, [1, "svc.events", null, "block"]);
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const s = (await ctx.stats()).vms.find((v) => v.name === "bad");
      if (s?.subscriptions === 1) return;
      await sleep(20);
    }
    throw new Error("the block subscription did not stand");
  },
  run: async (ctx) => {
    await sleep(left(ctx)); // it does nothing: not reading is the attack
    const dev = ctx.rawDev("bad");
    dev.startReading(); // now see what the broker told it
    await sleep(500);
    return { errs: rawErrors(dev) };
  },
};

/** Item 9: the worst subscription patterns the limits allow, then new subjects. */
const matchCost: Attack = {
  name: "match-patterns",
  item: "9",
  title:
    "subscribes the longest patterns the limits allow (a/* mixes ending in z, up to maxSubscriptionTokens), then publishes 40 new non-matching subjects every 25 ms",
  vms: [{ name: "bad", chardev: "raw", reads: true }],
  attackers: ["bad"],
  setup: async (ctx) => {
    const dev = ctx.rawDev("bad");
    const guest = dev;
    const welcome = (await guest.hello()) as WelcomeHead;
    const random = mulberry32(7);
    // Probe whether 128-token patterns (the most that fit in 256 bytes) are accepted.
    guest.send(Op.Sub, [1, hostilePattern(128, random), null]);
    await guest.sync();
    const tokens = dev.errors().length === 0 ? 128 : 32;
    const count = tokens === 128 ? welcome.maxSubscriptions : Math.floor(16_384 / 32);
    const subs: Uint8Array[] = [];
    for (let i = tokens === 128 ? 1 : 0; i < count; i++) {
      subs.push(frame(Op.Sub, [i + 2, hostilePattern(tokens, random), null]));
    }
    dev.write(concat(subs));
    await guest.sync(30_000);
    const accepted = (await ctx.stats()).vms.find((v) => v.name === "bad")?.subscriptions ?? 0;
    return { guest, tokens, accepted, setupErrors: dev.errors().length };
  },
  run: async (ctx, state) => {
    const { guest, tokens, accepted, setupErrors } = state as {
      guest: RawChardev;
      tokens: number;
      accepted: number;
      setupErrors: number;
    };
    const dev = ctx.rawDev("bad");
    const payload = encodeValue(0);
    let n = 0;
    while (left(ctx) > 0 && n < 1_000_000) {
      const pubs: Uint8Array[] = [];
      for (let k = 0; k < 40; k++) {
        pubs.push(
          encodeFrame(Op.Pub, encodeValue([hostileSubject(tokens, n++), null, null]), payload),
        );
      }
      dev.write(concat(pubs));
      await sleep(25);
    }
    await guest.sync(10_000).catch(() => {});
    return {
      headline: `${accepted} patterns × ${tokens} tokens, ${n} new subjects`,
      patterns: `${accepted} x ${tokens} tokens`,
      subjects: n,
      errs: rawErrors(dev),
      setupErrors,
    };
  },
};

/** Item 10: an outbound ring kept full, with a port frame after every refill. */
const ringFull: Attack = {
  name: "ring-full",
  item: "10",
  title:
    "in its own process: keeps its outbound ring full of small PUBs and sends a PING on the port after every refill",
  vms: [{ name: "bad", chardev: "peer", shm: true }],
  attackers: ["bad"],
  setup: async (ctx) => {
    // The flooder plays the chardev itself: the harness's placeholder goes away (the broker
    // reconnects to the flooder within its backoff).
    await ctx.peerDev("bad").close();
    const flood = startRingFlood(
      ctx.socketPath("bad"),
      ctx.shmPath("bad"),
      ctx.shmSize,
      ctx.seconds * 1000 + 1500,
      "flood.nobody",
    );
    try {
      await Promise.race([
        flood.ready,
        sleep(30_000).then(() => {
          throw new Error("the ring flooder was not ready within 30 s");
        }),
      ]);
    } catch (err) {
      flood.kill();
      throw err;
    }
    return flood;
  },
  run: async (ctx, state): Promise<Observations> => {
    const flood = state as RingFloodProcess;
    await sleep(left(ctx));
    const r = await Promise.race([flood.done, sleep(10_000).then(() => undefined)]).catch((e) => ({
      error: (e as Error).message.slice(0, 120),
    }));
    if (!r) return { headline: "the flooder did not report", result: "no report" };
    if ("error" in r) return { headline: r.error, ...r };
    return { headline: `${r.records} records in ${r.refills} refills`, ...r };
  },
  cleanup: (state) => (state as RingFloodProcess | undefined)?.kill(),
};

/** Item 11: a stalled ring subscriber of 19-byte messages, fed by a fast publisher. */
const stalledRing: Attack = {
  name: "stalled-ring",
  item: "11",
  title:
    "bad negotiates rings, subscribes t, never reads its inbound ring; bad2 floods 19-byte PUBs to t on its port",
  vms: [
    { name: "bad", chardev: "raw", reads: true, shm: true },
    { name: "bad2", chardev: "raw", reads: true },
  ],
  attackers: ["bad", "bad2"],
  setup: async (ctx) => {
    const sub = stalledRingGuest(ctx, "bad");
    await sub.negotiate();
    sub.peer.send(Op.Sub, [1, "t", null]);
    await sub.peer.ping();
    await ctx.rawDev("bad2").hello();
    return sub;
  },
  run: async (ctx) => {
    const pub = encodeFrame(Op.Pub, encodeValue(["t", null, null]), new Uint8Array(19).fill(7));
    const bytes = await ctx.rawDev("bad2").flood(
      repeated(pub, Math.floor(65536 / pub.length)),
      ctx.deadline,
      (b) => b > 4 * 1024 ** 3,
    );
    return {
      headline: `${Math.round(bytes / pub.length)} × 19 B published`,
      published: Math.round(bytes / pub.length),
      errsToSubscriber: rawErrors(ctx.rawDev("bad")),
      errsToPublisher: rawErrors(ctx.rawDev("bad2")),
    };
  },
  cleanup: (state) => (state as RawRingGuest | undefined)?.unmap(),
};

/** Item 12: 2 VMs x 4096 subscriptions to `>` and a stream of distinct subjects. */
const matchCache: Attack = {
  name: "match-cache",
  item: "12",
  title:
    "bad and bad2 (never reading) each hold 4096 subscriptions to > (one queue group each); bad3 publishes distinct subjects, 256 per batch",
  vms: [
    { name: "bad", chardev: "raw", reads: false },
    { name: "bad2", chardev: "raw", reads: false },
    { name: "bad3", chardev: "raw", reads: true },
  ],
  attackers: ["bad", "bad2", "bad3"],
  setup: async (ctx) => {
    for (const name of ["bad", "bad2"]) {
      await ctx.rawDev(name).hello();
      const subs = Array.from({ length: 4096 }, (_, i) => frame(Op.Sub, [i + 1, ">", `q-${name}`]));
      ctx.rawDev(name).write(concat(subs));
    }
    const pub = ctx.rawDev("bad3");
    await pub.hello();
    const deadline = Date.now() + 20_000;
    let subscribed = 0;
    while (Date.now() < deadline && subscribed < 8192) {
      const s = await ctx.stats();
      subscribed = s.vms.filter((v) => v.name === "bad" || v.name === "bad2")
        .reduce((n, v) => n + v.subscriptions, 0);
      if (subscribed < 8192) await sleep(25);
    }
    return { pub, subscribed };
  },
  run: async (ctx, state) => {
    const { pub, subscribed } = state as { pub: RawChardev; subscribed: number };
    const payload = encodeValue(1);
    let n = 0;
    while (left(ctx) > 0 && n < 10_000_000) {
      const batch: Uint8Array[] = [];
      for (let j = 0; j < 256; j++) {
        batch.push(encodeFrame(Op.Pub, encodeValue([`s.${n++}`, null, null]), payload));
      }
      ctx.rawDev("bad3").write(concat(batch));
      await pub.sync(Math.max(100, left(ctx))).catch(() => {}); // routed before the next batch
    }
    return {
      headline: `${subscribed} subscriptions, ${n} distinct subjects published`,
      subscriptions: subscribed,
      subjects: n,
      errs: rawErrors(ctx.rawDev("bad3")),
    };
  },
};

/** Item 13: undecodable payloads (truncated msgpack, a cyclic graph) to the victims. */
const badPayloads: Attack = {
  name: "bad-payloads",
  item: "13",
  title:
    "publishes a truncated msgpack value and a cyclic structured-clone graph to the victims' subjects, and requests svc.echo with them, every 10 ms",
  vms: [{ name: "bad", chardev: "peer" }],
  attackers: ["bad"],
  run: async (ctx) => {
    const dev = ctx.peerDev("bad");
    const helloed = new WeakSet<RawPeer>();
    let sent = 0;
    const burst = concat([TRUNCATED, CYCLIC].flatMap((p) => [
      encodeFrame(Op.Pub, encodeValue(["victim.down", null, null]), p),
      encodeFrame(Op.Pub, encodeValue(["victim.up.vring", null, null]), p),
      encodeFrame(Op.Pub, encodeValue(["svc.echo", "bad.replies", null]), p),
    ]));
    while (left(ctx) > 0 && sent < 100_000) {
      const peer = await helloedPeer(ctx, dev, helloed);
      if (!peer) break;
      peer.sendRaw(burst);
      sent += 6;
      await sleep(10);
    }
    return {
      headline: `${sent} bad payloads`,
      sent,
      connections: dev.peers.length,
      errs: peerErrors(dev),
    };
  },
};

/** Item 14: idle host connections and 8 MiB frames announced before HELLO. */
const idleHost: Attack = {
  name: "idle-host",
  item: "14",
  title:
    "opens a host connection every 50 ms that never says HELLO; every 4th announces an 8 MiB frame and sends 1 KiB of it; at the end a new honest host client tries to connect",
  vms: [],
  attackers: ["host"],
  run: async (ctx) => {
    const conns: RawPeer[] = [];
    const announced = new Set<RawPeer>();
    try {
      while (left(ctx) > 0 && conns.length < 200) {
        const c = await rawHostClient(ctx.listen).catch(() => undefined);
        if (c) {
          conns.push(c);
          if (conns.length % 4 === 0) {
            c.sendRaw(frameHeaderAnnouncing(8 * 1024 * 1024));
            c.sendRaw(new Uint8Array(1024).fill(0x61));
            announced.add(c);
          }
        }
        await sleep(Math.min(50, left(ctx)));
      }
      // Can an honest host client still connect while the attacker holds what it holds?
      const t0 = performance.now();
      const probe = await rawHostClient(ctx.listen);
      let honest: string;
      try {
        await probe.hello({}, 3000);
        honest = `connected in ${(performance.now() - t0).toFixed(0)} ms`;
      } catch {
        const e = probe.errors()[0];
        honest = e ? `refused: ${e.code}` : "no WELCOME within 3 s";
      } finally {
        probe.close();
      }
      const errs: Record<string, number> = {};
      for (const c of conns) for (const e of c.errors()) bump(errs, e.code);
      return {
        headline: `${conns.length} idle connections; a new honest host client: ${honest}`,
        connections: conns.length,
        closedByBroker: conns.filter((c) => c.closed).length,
        announcedClosed: `${[...announced].filter((c) => c.closed).length}/${announced.size}`,
        errs,
        newHostClient: honest,
      };
    } finally {
      for (const c of conns) c.close();
    }
  },
};

/** Item 15: a request dropped for a slow responder, then a forged reply to it. */
const forgedReply: Attack = {
  name: "forged-reply",
  item: "15",
  title:
    "may publish only svc.>; subscribes svc.echo and learns the victims' inboxes, stops reading while an accomplice (bad2) floods a subject it subscribes until the broker drops for it (the victims' requests too), then forges replies to the dropped and the next request tokens",
  vms: [
    { name: "bad", chardev: "peer", permissions: { publish: ["svc.>"] } },
    { name: "bad2", chardev: "raw", reads: true },
  ],
  attackers: ["bad", "bad2"],
  setup: async (ctx) => {
    const peer = await ctx.peerDev("bad").nextPeer(1, 10_000);
    await peer.hello();
    peer.send(Op.Sub, [1, "svc.echo", null]);
    peer.send(Op.Sub, [2, "bad.bulk", null]);
    await peer.ping();
    await ctx.rawDev("bad2").hello();
    return peer;
  },
  run: async (ctx, state) => {
    const peer = state as RawPeer;
    // 1. Read requests for a while: every reply subject is `<inbox>.<base-36 token>`.
    await sleep(Math.min(800, left(ctx)));
    const inboxes = new Map<string, { token: number; at: number }>();
    for (const m of peer.messages()) {
      if (m.subject !== "svc.echo" || !m.reply) continue;
      const cut = m.reply.lastIndexOf(".");
      const token = parseInt(m.reply.slice(cut + 1), 36);
      if (Number.isFinite(token)) inboxes.set(m.reply.slice(0, cut), { token, at: Date.now() });
    }
    const tokenNow = (seen: { token: number; at: number }) =>
      seen.token + Math.floor((Date.now() - seen.at) / 10); // one request per 10 ms each
    // 2. Stop reading; the accomplice floods a subject it subscribes until the broker drops.
    peer.port.pause();
    const droppedFor = async () =>
      (await ctx.stats()).vms.find((v) => v.name === "bad")?.dropped ?? 0;
    const dropsBefore = await droppedFor();
    const bulk = repeated(
      encodeFrame(Op.Pub, encodeValue(["bad.bulk", null, null]), new Uint8Array(16 * 1024)),
      64,
    );
    let bulkSent = 0;
    while (left(ctx) > 0 && bulkSent < 20_000 && (await droppedFor()) === dropsBefore) {
      ctx.rawDev("bad2").write(bulk);
      bulkSent += 64;
      await sleep(50);
    }
    const droppingSince = new Map([...inboxes].map(([k, v]) => [k, tokenNow(v)]));
    // Keep it dropping a while: the victims' requests in this stretch are dropped for it.
    const keepUntil = Date.now() + Math.min(500, left(ctx));
    while (Date.now() < keepUntil) {
      ctx.rawDev("bad2").write(bulk);
      bulkSent += 64;
      await sleep(50);
    }
    // 3. Forge replies to the dropped requests' tokens, then (reading again) to the next ones.
    const forged = encodeValue("forged");
    const forge = (from: (inbox: string, seen: { token: number; at: number }) => number) => {
      const frames: Uint8Array[] = [];
      for (const [inbox, seen] of inboxes) {
        for (let t = from(inbox, seen); t < tokenNow(seen) + 30; t++) {
          frames.push(
            encodeFrame(Op.Pub, encodeValue([`${inbox}.${t.toString(36)}`, null, null]), forged),
          );
        }
      }
      return frames;
    };
    let forgedSent = 0;
    const first = forge((inbox) => droppingSince.get(inbox)!);
    peer.sendRaw(concat(first));
    forgedSent += first.length;
    peer.port.resume();
    while (left(ctx) > 0 && forgedSent < 200_000 && !peer.closed && inboxes.size > 0) {
      await sleep(50);
      const next = forge((_i, seen) => tokenNow(seen));
      if (peer.port.pending < 4 * 1024 * 1024) peer.sendRaw(concat(next));
      forgedSent += next.length;
    }
    await sleep(Math.min(300, Math.max(0, left(ctx))));
    return {
      headline: `${forgedSent} forged replies to ${inboxes.size} victims' inboxes`,
      inboxesLearned: inboxes.size,
      bulkSent,
      forgedSent,
      errs: peerErrors(ctx.peerDev("bad")),
    };
  },
};

/** Every attack, in the order the bench runs them. */
export const ATTACKS: readonly Attack[] = [
  baseline,
  scribble,
  maxHead,
  tooLarge,
  foreignReply,
  controlFlood("ping"),
  controlFlood("hello"),
  selfBlock,
  blockService,
  matchCost,
  ringFull,
  stalledRing,
  matchCache,
  badPayloads,
  idleHost,
  forgedReply,
  shrink,
];

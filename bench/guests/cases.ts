/**
 * The cases of the in-guest benchmark (bench/guests.ts), one function per shape, the same for
 * every system: vbus on rings or on the port stream, NATS, raw TCP and vsock (the TCP/IP systems
 * over the guests' virtio-net NIC or AF_VSOCK: bench/guests/net_clients.ts). The guests are driven
 * over vbus (`gbench.ctl.VM`, bench/guests/agent.ts); the host side of a case runs in the
 * benchmark process. What a row claims about vbus's data path is checked against the broker's
 * own stats (`$VBUS.STATS`); for the other systems, delivered counts are checked.
 *
 * @example
 * ```ts
 * import { g2g } from "./bench/guests/cases.ts";
 * const row = await g2g(world, "nats", 1024); // vm1 -> nats-server -> vm2, 1 KiB
 * ```
 * @module
 */
import { loadavg } from "node:os";
import type { BrokerStats, Bus, EndpointStats } from "../../mod.ts";
import type { LatencyUs } from "../lib/report.ts";
import { type NetChannel, type NetEndpoint, type NetSystem, openNet } from "./net_clients.ts";

/** Every system of the in-guest comparison. */
export type GuestSystem = "vbus-ring" | "vbus-port" | NetSystem;
/** Case shapes. rr-h2g and rr-g2b are vbus-only extras (host asks a guest; a bare PING/PONG). */
export type Kind = "g2g" | "g2h" | "rr-g2h" | "rr-g2g" | "rr-h2g" | "rr-g2b";
type Path = "ring" | "stream";

/** What the flows are, per system (the middle process differs). */
export function flowOf(kind: Kind, system: GuestSystem): string {
  const mid = system.startsWith("vbus") ? "broker" : system === "nats" ? "nats-server" : "relay";
  return {
    g2g: `vm1 → ${mid} → vm2`,
    g2h: `vm1 → ${mid} → host client`,
    "rr-g2h": `vm1 asks host client (via ${mid})`,
    "rr-g2g": `vm1 asks vm2 (via ${mid})`,
    "rr-h2g": `host client asks vm1 (via ${mid})`,
    "rr-g2b": "vm1 flush() = PING/PONG with the broker only",
  }[kind];
}

/** vbus broker counters of one endpoint over a case. */
export interface StatDelta {
  path: string;
  pathReason?: string;
  msgsIn: number;
  msgsOut: number;
  ringMsgsIn: number;
  ringMsgsOut: number;
  dropped: number;
}

/** One measured case. */
export interface Row {
  id: string;
  system: GuestSystem;
  kind: Kind;
  flow: string;
  size: number;
  ok: boolean;
  skipped?: boolean;
  error?: string;
  sent?: number;
  delivered?: number;
  lost?: number;
  badSize?: number;
  durationS?: number;
  msgsPerSec?: number;
  bytesPerSec?: number;
  pubMsgsPerSec?: number;
  latencyUs?: LatencyUs;
  timeouts?: number;
  warmup?: number;
  loadavg1: number;
  /** vbus only: the broker's counters for the endpoints involved. */
  stats?: Record<string, StatDelta>;
  /** vbus rings only: data doorbells rung per VM ring (vm1Out = vm1 woke the broker, ...). */
  doorbells?: Record<string, number>;
  /** Host CPU seconds during the case (/proc/PID/stat): each QEMU (the whole guest), the
   * system's middle process (`server`: vbus broker, nats-server or relay) and this process. */
  cpuS?: Record<string, number>;
  /** CPU seconds of the guest agent processes from inside (process.cpuUsage). */
  guestCpuS?: Record<string, number>;
  check?: { ok: boolean; detail: string };
}

/** What the cases need from the benchmark's world. */
export interface World {
  /** The host's vbus client (control of the agents; host side of vbus cases). */
  host(): Bus;
  ctl<T = Record<string, unknown>>(
    vm: string,
    cmd: Record<string, unknown>,
    timeoutMs?: number,
  ): Promise<T>;
  stats(): Promise<BrokerStats>;
  /** Host CPU seconds so far per process key (vm1, vm2, broker, nats, relay, host). */
  cpuNow(): Record<string, number>;
  /** vbus rings: doorbell counters so far. */
  doorbells(): Record<string, number>;
  /** Where a guest's client of `system` connects (tcp: a fresh guestfwd port per call). */
  guestEndpoint(system: NetSystem, vm: string): NetEndpoint;
  /** How the host's client of `system` connects (vsock: over TCP to the relay's host port). */
  hostEndpoint(system: NetSystem): { system: NetSystem; endpoint: NetEndpoint };
  settings: {
    seconds: number;
    count: Record<number, number>;
    rrCount: number;
    rrSeconds: number;
    idleMs: number;
  };
}

/**
 * Ignore a failure of a fire-and-forget call (`msg.respond()`: a promise in some vbus versions,
 * a boolean in others): a reply that cannot be sent shows up as a timeout on the asking side.
 *
 * @example
 * ```ts
 * quietly(msg.respond(msg.data));
 * ```
 */
export function quietly(v: unknown): void {
  if (v && typeof (v as Promise<unknown>).catch === "function") {
    (v as Promise<unknown>).catch(() => {});
  }
}

const now = () => performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const isVbus = (s: GuestSystem) => s === "vbus-ring" || s === "vbus-port";
const pathOf = (s: GuestSystem): Path => (s === "vbus-ring" ? "ring" : "stream");
/** Messages per flush: 256 KiB or 1,024 messages, whichever is fewer (as the host benchmark). */
export const batchFor = (size: number): number =>
  Math.max(1, Math.min(1024, Math.floor((256 * 1024) / size)));
/** Round trips not recorded at the start of a latency case. */
export const warmupFor = (n: number): number => Math.min(200, Math.ceil(n / 10));

function delta(before: BrokerStats, after: BrokerStats, who: string): StatDelta {
  const pick = (s: BrokerStats): EndpointStats =>
    who === "host" ? s.host : s.vms.find((v) => v.name === who)!;
  const a = pick(after);
  const b = pick(before);
  return {
    path: a.path,
    ...(a.pathReason ? { pathReason: a.pathReason } : {}),
    msgsIn: a.msgsIn - b.msgsIn,
    msgsOut: a.msgsOut - b.msgsOut,
    ringMsgsIn: a.ringMsgsIn - b.ringMsgsIn,
    ringMsgsOut: a.ringMsgsOut - b.ringMsgsOut,
    dropped: a.dropped - b.dropped,
  };
}

type Want = { who: string; dir: "in" | "out"; n: number };
/** The path a vbus row claims must be what the broker saw (see bench/guests.ts's report). */
function verify(path: Path, d: Record<string, StatDelta>, want: Want[]): Row["check"] {
  const bad: string[] = [];
  const parts: string[] = [];
  for (const w of want) {
    const s = d[w.who];
    const ring = w.dir === "in" ? s.ringMsgsIn : s.ringMsgsOut;
    const all = w.dir === "in" ? s.msgsIn : s.msgsOut;
    const name = `ringMsgs${w.dir === "in" ? "In" : "Out"}`;
    parts.push(`${w.who} ${s.path}, ${w.dir} ${all} (${ring} via ring)`);
    if (s.path !== path) {
      bad.push(`${w.who} path is ${s.path}${s.pathReason ? ` (${s.pathReason})` : ""}`);
    }
    if (path === "ring" && ring < w.n) bad.push(`${w.who} ${name} +${ring} < ${w.n}`);
    if (path === "stream" && ring !== 0) {
      bad.push(`${w.who} ring counter moved (+${ring}) on the stream path`);
    }
    if (all < w.n) bad.push(`${w.who} msgs${w.dir === "in" ? "In" : "Out"} +${all} < ${w.n}`);
  }
  const drops = Object.entries(d).filter(([, s]) => s.dropped > 0).map(([k, s]) =>
    `${k} dropped +${s.dropped}`
  );
  parts.push(...drops);
  return {
    ok: bad.length === 0,
    detail: bad.length ? `MISMATCH: ${bad.join("; ")}` : parts.join(", "),
  };
}

/** Counts delivered messages: the system's own check when it has no broker stats. */
function countCheck(sent: number, delivered: number, badSize: number): Row["check"] {
  const ok = delivered === sent && badSize === 0;
  return {
    ok,
    detail: `${delivered}/${sent} delivered${badSize ? `, ${badSize} of the wrong size` : ""}`,
  };
}

/**
 * Everything measured around a case: broker stats (vbus), doorbells (rings), host CPU per
 * process, guest CPU from inside both agents. `finish` fills the row.
 */
async function meter(w: World, system: GuestSystem, row: Row) {
  const vbus = isVbus(system);
  const before = vbus ? await w.stats() : undefined;
  const bells = system === "vbus-ring" ? w.doorbells() : undefined;
  const guestCpu = async () =>
    Object.fromEntries(
      await Promise.all(["vm1", "vm2"].map(async (vm) =>
        [vm, (await w.ctl<{ cpuUs: number }>(vm, { op: "cpu" })).cpuUs] as const
      )),
    );
  const g0 = await guestCpu();
  const c0 = w.cpuNow();
  return async (who: string[], want: (d: Record<string, StatDelta>) => Want[] | undefined) => {
    const c1 = w.cpuNow();
    const g1 = await guestCpu();
    row.cpuS = Object.fromEntries(
      Object.keys(c1).map((k) => [k, +(c1[k] - (c0[k] ?? 0)).toFixed(2)]),
    );
    row.guestCpuS = Object.fromEntries(
      Object.keys(g1).map((k) => [k, +((g1[k] - g0[k]) / 1e6).toFixed(3)]),
    );
    if (!vbus) return;
    const after = await w.stats();
    if (bells) {
      const b1 = w.doorbells();
      row.doorbells = Object.fromEntries(
        Object.keys(b1).map((k) => [k, (b1[k] - (bells[k] ?? 0)) >>> 0]),
      );
    }
    const d = Object.fromEntries(who.map((k) => [k, delta(before!, after, k)]));
    row.stats = d;
    const wants = want(d);
    if (wants) row.check = verify(pathOf(system), d, wants);
  };
}

let caseNo = 0;
function newRow(system: GuestSystem, kind: Kind, size: number): Row {
  return {
    id: `${system}-${kind}-${size}-${++caseNo}`,
    system,
    kind,
    flow: flowOf(kind, system),
    size,
    ok: false,
    loadavg1: +loadavg()[0].toFixed(2),
  };
}
const via = (w: World, system: GuestSystem, vm: string) =>
  isVbus(system) ? {} : { system, endpoint: w.guestEndpoint(system as NetSystem, vm) };

/** vm1 publishes, vm2 subscribes, through the system's middle process. */
export async function g2g(w: World, system: GuestSystem, size: number): Promise<Row> {
  const row = newRow(system, "g2g", size);
  const subject = `gbench.g2g.${caseNo}`;
  await w.ctl("vm2", { op: "sub", id: row.id, subject, size, ...via(w, system, "vm2") }, 30_000);
  const done = await meter(w, system, row);
  const r = await w.ctl<{
    sent: number;
    t0: number;
    tFlushed: number;
    tReport: number;
    report: { received: number; badSize: number; tFirst: number; tLast: number; tReply: number };
  }>("vm1", {
    op: "pub",
    id: row.id,
    subject,
    size,
    count: w.settings.count[size],
    seconds: w.settings.seconds,
    batch: batchFor(size),
    ...via(w, system, "vm1"),
    reportTo: {
      subject: "gbench.ctl.vm2",
      body: { op: "report", id: row.id, idleMs: w.settings.idleMs, maxMs: 15_000 },
      timeoutMs: 20_000,
    },
  }, w.settings.seconds * 1000 + 60_000);
  const rep = r.report;
  // vm1's clock from its first publish to vm2's answer, minus the time vm2 waited after its last
  // arrival (vm2's clock; a duration, so the two clocks never need to agree).
  const elapsedMs = (r.tReport - r.t0) - (rep.tReply - rep.tLast);
  await done(["vm1", "vm2"], () => [
    { who: "vm1", dir: "in", n: r.sent },
    { who: "vm2", dir: "out", n: rep.received },
  ]);
  Object.assign(row, {
    ok: rep.received > 0,
    sent: r.sent,
    delivered: rep.received,
    lost: r.sent - rep.received,
    badSize: rep.badSize,
    durationS: elapsedMs / 1000,
    msgsPerSec: rep.received / (elapsedMs / 1000),
    bytesPerSec: (rep.received * size) / (elapsedMs / 1000),
    pubMsgsPerSec: r.sent / ((r.tFlushed - r.t0) / 1000),
  });
  if (!isVbus(system)) row.check = countCheck(r.sent, rep.received, rep.badSize);
  return row;
}

/** A host-side subscriber of `system` counting messages on `subject`. */
async function hostSubscriber(
  w: World,
  system: GuestSystem,
  subject: string,
  onSize: (n: number) => void,
) {
  if (isVbus(system)) {
    const sub = w.host().subscribe<Uint8Array>(subject, {
      callback: (_e, m) => onSize(m.raw.length),
    });
    await w.host().flush();
    return () => Promise.resolve(sub.unsubscribe());
  }
  const h = w.hostEndpoint(system as NetSystem);
  const ch = await openNet(h.system, h.endpoint, {
    sub: subject,
    onMessage: (p) => onSize(p.length),
    name: "gbench-host-sub",
  });
  return () => ch.close();
}

/** vm1 publishes, a client in this (host) process subscribes. */
export async function g2h(w: World, system: GuestSystem, size: number): Promise<Row> {
  const row = newRow(system, "g2h", size);
  const subject = `gbench.g2h.${caseNo}`;
  let received = 0;
  let badSize = 0;
  let tLast = NaN;
  const slack = isVbus(system) ? 5 : 0; // vbus: the raw msgpack bin
  const stop = await hostSubscriber(w, system, subject, (n) => {
    tLast = now();
    received++;
    if (n < size || n > size + slack) badSize++;
  });
  const done = await meter(w, system, row);
  const tGo = now();
  const r = await w.ctl<{ sent: number; t0: number; tFlushed: number }>("vm1", {
    op: "pub",
    id: row.id,
    subject,
    size,
    count: w.settings.count[size],
    seconds: w.settings.seconds,
    batch: batchFor(size),
    ...via(w, system, "vm1"),
  }, w.settings.seconds * 1000 + 60_000);
  // Everything accepted is on its way: wait for it, or for idleMs without progress.
  let last = received;
  let lastChange = now();
  const waitStart = now();
  while (received < r.sent && now() - waitStart < 15_000) {
    await sleep(5);
    if (received !== last) [last, lastChange] = [received, now()];
    else if (now() - lastChange > w.settings.idleMs) break;
  }
  await stop();
  await done(["vm1", "host"], () => [
    { who: "vm1", dir: "in", n: r.sent },
    { who: "host", dir: "out", n: received },
  ]);
  const elapsedMs = tLast - tGo;
  Object.assign(row, {
    ok: received > 0,
    sent: r.sent,
    delivered: received,
    lost: r.sent - received,
    badSize,
    durationS: elapsedMs / 1000,
    msgsPerSec: received / (elapsedMs / 1000),
    bytesPerSec: (received * size) / (elapsedMs / 1000),
    pubMsgsPerSec: r.sent / ((r.tFlushed - r.t0) / 1000),
  });
  if (!isVbus(system)) row.check = countCheck(r.sent, received, badSize);
  return row;
}

interface RrResult {
  n: number;
  done: number;
  warmup: number;
  badSize: number;
  timeouts: number;
  elapsedMs: number;
  latencyUs: LatencyUs;
}

function fillRr(row: Row, r: RrResult) {
  Object.assign(row, {
    ok: r.n > 0,
    sent: r.done,
    delivered: r.n,
    warmup: r.warmup,
    badSize: r.badSize,
    timeouts: r.timeouts,
    durationS: r.elapsedMs / 1000,
    msgsPerSec: r.done / (r.elapsedMs / 1000),
    latencyUs: r.latencyUs,
  });
}

function rrCmd(w: World, row: Row, subject: string, size: number, extra: Record<string, unknown>) {
  return {
    op: "rr",
    id: row.id,
    subject,
    size,
    count: w.settings.rrCount,
    seconds: w.settings.rrSeconds,
    warmup: warmupFor(w.settings.rrCount),
    ...extra,
  };
}

/** Round trips: vm1 asks, a replier in this (host) process answers (or, `flushOnly`, vbus's
 * bare PING/PONG with the broker). */
export async function rrG2h(
  w: World,
  system: GuestSystem,
  size: number,
  flushOnly = false,
): Promise<Row> {
  const row = newRow(system, flushOnly ? "rr-g2b" : "rr-g2h", size);
  let replier: NetChannel | undefined;
  const subject = isVbus(system) ? "gbench.hecho" : `gbench.hecho.${caseNo}`;
  if (!isVbus(system)) {
    const h = w.hostEndpoint(system as NetSystem);
    replier = await openNet(h.system, h.endpoint, {
      sub: subject,
      pub: system === "nats" ? undefined : `${subject}.rep`,
      echo: true,
      name: "gbench-host-echo",
    });
  }
  const done = await meter(w, system, row);
  const r = await w.ctl<RrResult>(
    "vm1",
    rrCmd(w, row, subject, size, { flushOnly, ...via(w, system, "vm1") }),
    w.settings.rrSeconds * 1000 + 30_000,
  );
  await replier?.close();
  const n = r.done - r.timeouts;
  await done(["vm1", "host"], () =>
    flushOnly ? [{ who: "vm1", dir: "in", n: 0 }] : [
      { who: "vm1", dir: "in", n },
      { who: "host", dir: "out", n },
      { who: "host", dir: "in", n },
      { who: "vm1", dir: "out", n },
    ]);
  fillRr(row, r);
  if (!isVbus(system)) row.check = countCheck(r.done, r.done - r.timeouts, r.badSize);
  return row;
}

/** Round trips: vm1 asks, vm2 answers, through the system's middle process. */
export async function rrG2g(w: World, system: GuestSystem, size: number): Promise<Row> {
  const row = newRow(system, "rr-g2g", size);
  const subject = isVbus(system) ? "gbench.echo.vm2" : `gbench.gecho.${caseNo}`;
  if (!isVbus(system)) {
    await w.ctl("vm2", { op: "echo", id: row.id, subject, ...via(w, system, "vm2") }, 30_000);
  }
  const done = await meter(w, system, row);
  const r = await w.ctl<RrResult>(
    "vm1",
    rrCmd(w, row, subject, size, via(w, system, "vm1")),
    w.settings.rrSeconds * 1000 + 30_000,
  );
  if (!isVbus(system)) await w.ctl("vm2", { op: "unecho", id: row.id });
  const n = r.done - r.timeouts;
  await done(["vm1", "vm2"], () => [
    { who: "vm1", dir: "in", n },
    { who: "vm2", dir: "out", n },
    { who: "vm2", dir: "in", n },
    { who: "vm1", dir: "out", n },
  ]);
  fillRr(row, r);
  if (!isVbus(system)) row.check = countCheck(r.done, r.done - r.timeouts, r.badSize);
  return row;
}

function latency(xs: number[]): LatencyUs {
  const s = xs.slice().sort((a, b) => a - b);
  const p = (q: number) =>
    s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((q / 100) * s.length) - 1))] : NaN;
  return {
    n: s.length,
    mean: s.reduce((a, b) => a + b, 0) / (s.length || 1),
    min: s[0] ?? NaN,
    p50: p(50),
    p90: p(90),
    p99: p(99),
    p999: p(99.9),
    max: s[s.length - 1] ?? NaN,
  };
}

/** vbus only: round trips the host client asks, vm1's agent answers (`gbench.echo.vm1`). */
export async function rrH2g(w: World, system: GuestSystem, size: number): Promise<Row> {
  const row = newRow(system, "rr-h2g", size);
  const p = new Uint8Array(size).map((_, i) => (i * 131 + 7) & 0xff);
  const warmup = warmupFor(w.settings.rrCount);
  const lat: number[] = [];
  let timeouts = 0;
  let badSize = 0;
  const done = await meter(w, system, row);
  const t0 = now();
  const deadline = t0 + w.settings.rrSeconds * 1000;
  // Warm-up: the first `warmup` round trips, but at most a fifth of the time bound.
  const warmupEnd = t0 + w.settings.rrSeconds * 200;
  let warm = 0;
  let n = 0;
  while (lat.length < w.settings.rrCount && now() < deadline) {
    const inWarmup = warm < warmup && now() < warmupEnd;
    const t = now();
    try {
      const r = await w.host().request<Uint8Array>("gbench.echo.vm1", p, { timeout: 2000 });
      if (!(r.data instanceof Uint8Array) || r.data.length !== size) badSize++;
      if (!inWarmup) lat.push((now() - t) * 1000);
    } catch {
      timeouts++;
    }
    if (inWarmup) warm++;
    n++;
  }
  const elapsedMs = now() - t0;
  const ok = n - timeouts;
  await done(["vm1", "host"], () => [
    { who: "host", dir: "in", n: ok },
    { who: "vm1", dir: "out", n: ok },
    { who: "vm1", dir: "in", n: ok },
    { who: "host", dir: "out", n: ok },
  ]);
  fillRr(row, {
    n: lat.length,
    done: n,
    warmup: warm,
    badSize,
    timeouts,
    elapsedMs,
    latencyUs: latency(lat),
  });
  return row;
}

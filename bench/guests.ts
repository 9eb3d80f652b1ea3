/**
 * vbus inside real guests (issue "Benchmarks", item 5): boots two micro-VMs with the lab
 * (lab/vm.ts) from exactly `qemuArgs(vm)` of a broker config whose sockets and /dev/shm files are
 * private to this run, starts a `vbus broker --config` child process, and measures, with the
 * guest service bench/guests/agent.ts (TypeScript importing the project's mod.ts) in each guest:
 *
 * - guest -> broker -> guest throughput (vm1 publishes, vm2 subscribes), 64 B and 64 KiB binary
 * - guest -> host throughput (vm1 publishes, a host client in this process subscribes)
 * - request/reply round trips guest <-> host, 64 B, both directions (guest asks, host asks), and
 *   the guest's `flush()` (PING/PONG with the broker alone) for reference
 *
 * each on the shared-memory rings (the VMs have ivshmem; guest and host clients with shm) and on
 * the port stream (the same VMs, clients reconnected with `shm: false`). Every case is bounded by
 * a message count and by time, every boot by a hard timeout, the whole run by a budget. The data
 * path of every row is checked from the broker's own stats (`$VBUS.STATS`: `path`, ring
 * counters, drops). Output: bench/results/guests.md and guests.json (or `--out DIR`).
 *
 *   node_modules/.bin/bun bench/guests.ts [--quick] [--guest-runtime bun|deno] [--out DIR]
 *   node_modules/.bin/deno run -A bench/guests.ts [--quick]
 *
 * Exits 0 without writing results when the lab cannot boot guests here (says why).
 * @module
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { join, relative } from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import {
  bootGuest,
  detectAccelerator,
  ensureLab,
  type GuestHandle,
  type GuestResult,
  LabUnavailableError,
  LOG_DIR,
  PROJECT_ROOT,
} from "../lab/vm.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import {
  type BrokerConfig,
  type BrokerStats,
  type Bus,
  connect,
  type EndpointStats,
  parseConfig,
} from "../mod.ts";
import { ringControl, RingId } from "../src/ring/layout.ts";
import { fmtNum, fmtSize, si } from "./lib/stats.ts";
import { procCpu } from "./lib/proc.ts";
import type { LatencyUs } from "./lib/report.ts";

// ---- options ----------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    "guest-runtime": { type: "string", default: "bun" },
    out: { type: "string", default: join(PROJECT_ROOT, "bench", "results") },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) {
  console.log(
    "usage: bun bench/guests.ts [--quick] [--guest-runtime bun|deno] [--out DIR]\n" +
      "Boots two lab guests (TCG or KVM), measures vbus guest<->guest and guest<->host throughput\n" +
      "and request/reply latency on the ring and port-stream paths; writes DIR/guests.{md,json}.",
  );
  process.exit(0);
}
const QUICK = opt.quick!;
const GUEST_RT = opt["guest-runtime"] as "bun" | "deno";
if (GUEST_RT !== "bun" && GUEST_RT !== "deno") {
  console.error(`--guest-runtime must be bun or deno, not ${GUEST_RT}`);
  process.exit(2);
}
const OUT_DIR = opt.out!;
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const SIZES = [64, 64 * 1024];
/** Budget of the whole script (boots + cases + teardown); no case starts when it would overrun. */
const BUDGET_MS = QUICK ? 170_000 : 270_000;
const SET = QUICK
  ? { seconds: 1, count: { 64: 50_000, 65536: 2_000 } as Record<number, number>, rrCount: 300, rrSeconds: 2 }
  : { seconds: 3, count: { 64: 300_000, 65536: 20_000 } as Record<number, number>, rrCount: 2_000, rrSeconds: 4 };
const IDLE_MS = 1000;
const T_START = Date.now();
const sourceAtStart = sourceInfo();
const remaining = () => BUDGET_MS - (Date.now() - T_START);
const now = () => performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const say = (s: string) => console.error(`[guests +${((Date.now() - T_START) / 1000).toFixed(1)}s] ${s}`);

// ---- lab availability -------------------------------------------------------------------------

let accel: Awaited<ReturnType<typeof detectAccelerator>>;
let lab: ReturnType<typeof ensureLab>;
try {
  lab = ensureLab();
  accel = await detectAccelerator();
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  console.log(`bench/guests: QEMU guests unavailable here, no results written: ${err.message}`);
  process.exit(0);
}
say(`accelerator ${accel.accelerator} (${accel.reason}); guest kernel ${lab.kernel}`);

// ---- the run's private world ------------------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), "vbus-gbench-"));
const outShare = join(dir, "out");
mkdirSync(outShare);
chmodSync(outShare, 0o777);
const shmFile = (vm: string) => `/dev/shm/vbus-gbench-${process.pid}-${vm}`;
const rawConfig = {
  listen: join(dir, "broker.sock"),
  vms: ["vm1", "vm2"].map((name) => ({
    name,
    socket: join(dir, `${name}.sock`),
    shm: shmFile(name),
    shmSize: 16 << 20,
  })),
};
const configPath = join(dir, "broker.jsonc");
writeFileSync(configPath, `// bench/guests.ts private broker\n${JSON.stringify(rawConfig, null, 2)}\n`);
const config: BrokerConfig = parseConfig(readFileSync(configPath, "utf8"), configPath);

const guests: Record<string, GuestHandle> = {};
const guestResults: Record<string, GuestResult> = {};
let broker: ChildProcess | undefined;
let host: Bus | undefined;
let cleaned = false;

function cleanupSync() {
  if (cleaned) return;
  cleaned = true;
  for (const g of Object.values(guests)) g.kill();
  try {
    broker?.kill("SIGKILL");
  } catch { /* gone */ }
  for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
  rmSync(dir, { recursive: true, force: true });
}
process.on("exit", cleanupSync);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    console.error(`bench/guests: ${sig}: stopping guests and broker, no results written`);
    cleanupSync();
    process.exit(130);
  });
}
// A hard stop for the whole script, whatever hangs.
const hardStop = setTimeout(() => {
  console.error(`bench/guests: over the ${BUDGET_MS + 25_000} ms hard limit; giving up`);
  cleanupSync();
  process.exit(1);
}, BUDGET_MS + 25_000);
(hardStop as unknown as { unref?: () => void }).unref?.();

const runtimeBin = (rt: string) => `./node_modules/.bin/${rt}`;
const guestScript = GUEST_RT === "deno"
  ? `exec ${runtimeBin("deno")} run -A bench/guests/agent.ts`
  : `exec ${runtimeBin("bun")} bench/guests/agent.ts`;

function bootVm(name: string): Promise<GuestHandle> {
  const vm = config.vms.find((v) => v.name === name)!;
  return bootGuest({
    name: `gbench-${name}`,
    deviceArgs: qemuArgs(vm),
    script: guestScript,
    timeoutMs: Math.max(30_000, remaining() - 5_000),
    writableBinds: [outShare],
    env: { VBUS_GBENCH_OUT: outShare, VBUS_LOG: "warn" },
  });
}

function startBroker(): ChildProcess {
  const main = join(PROJECT_ROOT, "src", "cli", "main.ts");
  const bin = join(PROJECT_ROOT, "node_modules", ".bin", RUNTIME);
  const args = RUNTIME === "deno" ? ["run", "-A", main] : [main];
  const child = spawn(bin, [...args, "broker", "--config", configPath], {
    stdio: ["ignore", "ignore", "pipe"],
    cwd: PROJECT_ROOT,
    env: { ...process.env, VBUS_LOG: "warn" },
  });
  mkdirSync(LOG_DIR, { recursive: true });
  const log = createWriteStream(join(LOG_DIR, "gbench-broker.log"));
  child.stderr!.pipe(log);
  return child;
}

async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = "";
  for (;;) {
    for (const [name, g] of Object.entries(guestResults)) {
      throw new Error(`${name} exited while waiting for ${what} (code ${g.code}, ${g.error ?? ""})`);
    }
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (${lastErr})` : ""}`);
    await sleep(150);
  }
}

async function ctl<T = Record<string, unknown>>(vm: string, cmd: Record<string, unknown>, timeout = 5000): Promise<T> {
  const r = await host!.request<T & { ok?: boolean; error?: string }>(`gbench.ctl.${vm}`, cmd, { timeout });
  if (r.data && (r.data as { ok?: boolean }).ok === false) throw new Error(`${vm} ${cmd.op}: ${(r.data as { error?: string }).error}`);
  return r.data;
}

async function stats(): Promise<BrokerStats> {
  return (await host!.request<BrokerStats>("$VBUS.STATS", null, { timeout: 5000 })).data;
}

async function openHost(shm: boolean): Promise<Bus> {
  const b = await connect({ server: config.listen!, name: "gbench-host", shm, timeout: 10_000, reconnect: false });
  b.subscribe<Uint8Array>("gbench.hecho", { callback: (_e, m) => void m.respond(m.data.slice()).catch(() => {}) });
  await b.flush();
  return b;
}

interface Ping {
  me: string;
  runtime: string;
  version: string;
  session: string;
  path: "ring" | "stream" | undefined;
}

// ---- cases ------------------------------------------------------------------------------------

type Path = "ring" | "stream";
type Kind = "g2g" | "g2h" | "rr-g2h" | "rr-h2g" | "rr-g2b";
const FLOW: Record<Kind, string> = {
  g2g: "vm1 → broker → vm2",
  g2h: "vm1 → broker → host client",
  "rr-g2h": "vm1 asks host client (round trip)",
  "rr-h2g": "host client asks vm1 (round trip)",
  "rr-g2b": "vm1 flush() = PING/PONG with the broker only",
};

interface StatDelta {
  path: string;
  pathReason?: string;
  msgsIn: number;
  msgsOut: number;
  ringMsgsIn: number;
  ringMsgsOut: number;
  dropped: number;
}
interface Row {
  id: string;
  kind: Kind;
  flow: string;
  path: Path;
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
  /** vm2's own window (first to last arrival), g2g only. */
  subWindowMsgsPerSec?: number;
  latencyUs?: LatencyUs;
  timeouts?: number;
  /** Round trips not recorded (warm-up). */
  warmup?: number;
  loadavg1: number;
  stats?: Record<string, StatDelta>;
  /** Data doorbells rung during the case per VM ring (vm1Out = vm1 woke the broker, vm2In = the
   * broker woke vm2, ...); ring path only. */
  doorbells?: Record<string, number>;
  /** CPU seconds used during the case by vm1's and vm2's QEMU (the whole guest), the broker
   * and this process (the host client), from /proc (10 ms ticks). */
  cpuS?: Record<string, number>;
  check?: { ok: boolean; detail: string };
}

function delta(before: BrokerStats, after: BrokerStats, who: string): StatDelta {
  const pick = (s: BrokerStats): EndpointStats => who === "host" ? s.host : s.vms.find((v) => v.name === who)!;
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

/**
 * The path a row claims must be what the broker saw: every endpoint involved on `path`, and
 * (ring) the ring counters grew by at least the messages of the case, (stream) not at all.
 */
function verify(path: Path, d: Record<string, StatDelta>, want: { who: string; dir: "in" | "out"; n: number }[]): Row["check"] {
  const bad: string[] = [];
  const parts: string[] = [];
  for (const w of want) {
    const s = d[w.who];
    const ring = w.dir === "in" ? s.ringMsgsIn : s.ringMsgsOut;
    const all = w.dir === "in" ? s.msgsIn : s.msgsOut;
    parts.push(`${w.who} ${s.path}, ${w.dir} ${all} (${ring} via ring)`);
    if (s.path !== path) bad.push(`${w.who} path is ${s.path}${s.pathReason ? ` (${s.pathReason})` : ""}`);
    if (path === "ring" && ring < w.n) bad.push(`${w.who} ringMsgs${w.dir === "in" ? "In" : "Out"} +${ring} < ${w.n}`);
    if (path === "stream" && ring !== 0) bad.push(`${w.who} ring counter moved (+${ring}) on the stream path`);
    if (all < w.n) bad.push(`${w.who} msgs${w.dir === "in" ? "In" : "Out"} +${all} < ${w.n}`);
  }
  const drops = Object.entries(d).filter(([, s]) => s.dropped > 0).map(([k, s]) => `${k} dropped +${s.dropped}`);
  if (drops.length) parts.push(...drops);
  return { ok: bad.length === 0, detail: bad.length ? `MISMATCH: ${bad.join("; ")}` : parts.join(", ") };
}

/**
 * Data doorbells rung so far on each ring of each VM's region (RING_COUNT in the ring control
 * blocks, read from the /dev/shm files without mapping them): how often a producer had to wake a
 * sleeping consumer with a DOORBELL frame over the port. Reset when a session re-initialises the
 * region, so only deltas within one case mean anything.
 */
function doorbells(): Record<string, number> {
  const out: Record<string, number> = {};
  const word = Buffer.alloc(4);
  for (const vm of config.vms) {
    let fd: number | undefined;
    try {
      fd = openSync(vm.shm!, "r");
      for (const [dir, id] of [["Out", RingId.OUTBOUND], ["In", RingId.INBOUND]] as const) {
        readSync(fd, word, 0, 4, ringControl(id).RING_COUNT);
        out[`${vm.name}${dir}`] = word.readUInt32LE(0);
      }
    } catch { /* not there (yet) */ } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  return out;
}
function doorbellDelta(before: Record<string, number>, after: Record<string, number>) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, (after[k] - (before[k] ?? 0)) >>> 0]));
}

/** CPU seconds (user + system, all threads) so far of each process a case involves. */
function cpuNow(): Record<string, number> {
  const pids: Record<string, number | undefined> = {
    vm1: guests.vm1?.pid,
    vm2: guests.vm2?.pid,
    broker: broker?.pid,
    host: process.pid,
  };
  const out: Record<string, number> = {};
  for (const [k, pid] of Object.entries(pids)) {
    const c = pid ? procCpu(pid) : null;
    if (c) out[k] = c.user + c.sys;
  }
  return out;
}

function batchFor(size: number) {
  return Math.max(1, Math.min(1024, Math.floor((256 * 1024) / size)));
}

let caseNo = 0;
async function g2g(path: Path, size: number): Promise<Row> {
  const id = `g2g-${path}-${size}-${++caseNo}`;
  const subject = `gbench.g2g.${caseNo}`;
  const row: Row = { id, kind: "g2g", flow: FLOW.g2g, path, size, ok: false, loadavg1: loadavg()[0] };
  const before = await stats();
  const bellsBefore = doorbells();
  const cpuBefore = cpuNow();
  await ctl("vm2", { op: "sub", id, subject, size });
  const count = SET.count[size];
  const r = await ctl<{
    sent: number;
    t0: number;
    tFlushed: number;
    tReport: number;
    report: { received: number; badSize: number; tFirst: number; tLast: number; tReply: number };
  }>("vm1", {
    op: "pub",
    id,
    subject,
    size,
    count,
    seconds: SET.seconds,
    batch: batchFor(size),
    reportTo: {
      subject: "gbench.ctl.vm2",
      body: { op: "report", id, idleMs: IDLE_MS, maxMs: 15_000 },
      timeoutMs: 20_000,
    },
  }, SET.seconds * 1000 + 60_000);
  const rep = r.report;
  // vm1's clock from its first publish to vm2's answer, minus the time vm2 waited after its last
  // arrival (vm2's clock; a duration, so the two clocks never need to agree).
  const elapsedMs = (r.tReport - r.t0) - (rep.tReply - rep.tLast);
  const after = await stats();
  if (path === "ring") row.doorbells = doorbellDelta(bellsBefore, doorbells());
  const cpuAfter = cpuNow();
  row.cpuS = Object.fromEntries(Object.keys(cpuAfter).map((k) => [k, +(cpuAfter[k] - (cpuBefore[k] ?? 0)).toFixed(2)]));
  const d = { vm1: delta(before, after, "vm1"), vm2: delta(before, after, "vm2") };
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
    subWindowMsgsPerSec: rep.received > 1 ? (rep.received - 1) / ((rep.tLast - rep.tFirst) / 1000) : NaN,
    stats: d,
    check: verify(path, d, [{ who: "vm1", dir: "in", n: r.sent }, { who: "vm2", dir: "out", n: rep.received }]),
  });
  return row;
}

async function g2h(path: Path, size: number): Promise<Row> {
  const id = `g2h-${path}-${size}-${++caseNo}`;
  const subject = `gbench.g2h.${caseNo}`;
  const row: Row = { id, kind: "g2h", flow: FLOW.g2h, path, size, ok: false, loadavg1: loadavg()[0] };
  let received = 0;
  let badSize = 0;
  let tLast = NaN;
  const sub = host!.subscribe<Uint8Array>(subject, {
    callback: (_e, m) => {
      tLast = now();
      received++;
      const n = m.raw.length;
      if (n < size || n > size + 5) badSize++;
    },
  });
  await host!.flush();
  const before = await stats();
  const bellsBefore = doorbells();
  const cpuBefore = cpuNow();
  const tGo = now();
  const r = await ctl<{ sent: number; t0: number; tFlushed: number }>("vm1", {
    op: "pub",
    id,
    subject,
    size,
    count: SET.count[size],
    seconds: SET.seconds,
    batch: batchFor(size),
  }, SET.seconds * 1000 + 60_000);
  // Everything the broker accepted is on its way: wait for it, or for 1 s without progress.
  let last = received;
  let lastChange = now();
  const waitStart = now();
  while (received < r.sent && now() - waitStart < 15_000) {
    await sleep(5);
    if (received !== last) [last, lastChange] = [received, now()];
    else if (now() - lastChange > IDLE_MS) break;
  }
  sub.unsubscribe();
  const after = await stats();
  if (path === "ring") row.doorbells = doorbellDelta(bellsBefore, doorbells());
  const cpuAfter = cpuNow();
  row.cpuS = Object.fromEntries(Object.keys(cpuAfter).map((k) => [k, +(cpuAfter[k] - (cpuBefore[k] ?? 0)).toFixed(2)]));
  const d = { vm1: delta(before, after, "vm1"), host: delta(before, after, "host") };
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
    stats: d,
    check: verify(path, d, [{ who: "vm1", dir: "in", n: r.sent }, { who: "host", dir: "out", n: received }]),
  });
  return row;
}

function latency(xs: number[]): LatencyUs {
  const s = xs.slice().sort((a, b) => a - b);
  const p = (q: number) => s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((q / 100) * s.length) - 1))] : NaN;
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

const warmupFor = (n: number) => Math.min(200, Math.ceil(n / 10));

async function rrG2h(path: Path, size: number, flushOnly = false): Promise<Row> {
  const kind: Kind = flushOnly ? "rr-g2b" : "rr-g2h";
  const id = `${kind}-${path}-${size}-${++caseNo}`;
  const row: Row = { id, kind, flow: FLOW[kind], path, size, ok: false, loadavg1: loadavg()[0] };
  const before = await stats();
  const bellsBefore = doorbells();
  const cpuBefore = cpuNow();
  const r = await ctl<{ n: number; done: number; warmup: number; badSize: number; timeouts: number; elapsedMs: number; latencyUs: LatencyUs }>(
    "vm1",
    { op: "rr", id, subject: "gbench.hecho", size, count: SET.rrCount, seconds: SET.rrSeconds, warmup: warmupFor(SET.rrCount), flushOnly },
    SET.rrSeconds * 1000 + 30_000,
  );
  const after = await stats();
  if (path === "ring") row.doorbells = doorbellDelta(bellsBefore, doorbells());
  const cpuAfter = cpuNow();
  row.cpuS = Object.fromEntries(Object.keys(cpuAfter).map((k) => [k, +(cpuAfter[k] - (cpuBefore[k] ?? 0)).toFixed(2)]));
  const d = { vm1: delta(before, after, "vm1"), host: delta(before, after, "host") };
  const n = r.done;
  Object.assign(row, {
    ok: r.n > 0,
    sent: n,
    delivered: r.n,
    warmup: r.warmup,
    badSize: r.badSize,
    timeouts: r.timeouts,
    durationS: r.elapsedMs / 1000,
    msgsPerSec: n / (r.elapsedMs / 1000),
    latencyUs: r.latencyUs,
    stats: d,
    // A flush is a PING/PONG: no messages, so only the path can be checked.
    check: flushOnly ? verify(path, d, [{ who: "vm1", dir: "in", n: 0 }]) : verify(path, d, [
      { who: "vm1", dir: "in", n: n - r.timeouts },
      { who: "host", dir: "out", n: n - r.timeouts },
      { who: "host", dir: "in", n: n - r.timeouts },
      { who: "vm1", dir: "out", n: n - r.timeouts },
    ]),
  });
  return row;
}

async function rrH2g(path: Path, size: number): Promise<Row> {
  const id = `rr-h2g-${path}-${size}-${++caseNo}`;
  const row: Row = { id, kind: "rr-h2g", flow: FLOW["rr-h2g"], path, size, ok: false, loadavg1: loadavg()[0] };
  const p = new Uint8Array(size).map((_, i) => (i * 131 + 7) & 0xff);
  const warmup = warmupFor(SET.rrCount);
  const lat: number[] = [];
  let timeouts = 0;
  let badSize = 0;
  const before = await stats();
  const bellsBefore = doorbells();
  const cpuBefore = cpuNow();
  const t0 = now();
  const deadline = t0 + SET.rrSeconds * 1000;
  // Warm-up: the first `warmup` round trips, but at most a fifth of the time bound.
  const warmupEnd = t0 + SET.rrSeconds * 200;
  let warm = 0;
  let done = 0;
  while (lat.length < SET.rrCount && now() < deadline) {
    const inWarmup = warm < warmup && now() < warmupEnd;
    const t = now();
    try {
      const r = await host!.request<Uint8Array>("gbench.echo.vm1", p, { timeout: 2000 });
      if (!(r.data instanceof Uint8Array) || r.data.length !== size) badSize++;
      if (!inWarmup) lat.push((now() - t) * 1000);
    } catch {
      timeouts++;
    }
    if (inWarmup) warm++;
    done++;
  }
  const elapsedMs = now() - t0;
  const after = await stats();
  if (path === "ring") row.doorbells = doorbellDelta(bellsBefore, doorbells());
  const cpuAfter = cpuNow();
  row.cpuS = Object.fromEntries(Object.keys(cpuAfter).map((k) => [k, +(cpuAfter[k] - (cpuBefore[k] ?? 0)).toFixed(2)]));
  const d = { vm1: delta(before, after, "vm1"), host: delta(before, after, "host") };
  Object.assign(row, {
    ok: lat.length > 0,
    sent: done,
    delivered: lat.length,
    warmup: warm,
    badSize,
    timeouts,
    durationS: elapsedMs / 1000,
    msgsPerSec: done / (elapsedMs / 1000),
    latencyUs: latency(lat),
    stats: d,
    check: verify(path, d, [
      { who: "host", dir: "in", n: done - timeouts },
      { who: "vm1", dir: "out", n: done - timeouts },
      { who: "vm1", dir: "in", n: done - timeouts },
      { who: "host", dir: "out", n: done - timeouts },
    ]),
  });
  return row;
}

// ---- main -------------------------------------------------------------------------------------

const loadBefore = loadavg();
const rows: Row[] = [];
const problems: string[] = [];
const boot: Record<string, unknown> = {};
let guestInfo: Ping | undefined;
let fatal: string | undefined;
const startedAt = new Date().toISOString();

try {
  say(`booting vm1 and vm2 (${GUEST_RT} in the guests, ivshmem 16 MiB each), broker under ${RUNTIME}`);
  const tBoot = Date.now();
  const [g1, g2] = await Promise.all([bootVm("vm1"), bootVm("vm2")]);
  Object.assign(guests, { vm1: g1, vm2: g2 });
  for (const [name, g] of Object.entries(guests)) g.exited.then((r) => (guestResults[name] = r));
  broker = startBroker();
  broker.on("exit", (code, sig) => {
    if (!cleaned) problems.push(`broker exited early (${code ?? sig}); see ${relative(PROJECT_ROOT, LOG_DIR)}/gbench-broker.log`);
  });
  host = await until("the broker's socket", 30_000, () =>
    existsSync(config.listen!) ? openHost(true) : undefined);
  const readyMs = await Promise.all([g1.ready, g2.ready]);
  const pings = await Promise.all(["vm1", "vm2"].map((vm) =>
    until(`the agent in ${vm}`, Math.min(120_000, remaining() - 60_000), () => ctl<Ping>(vm, { op: "ping" }, 1000))
  ));
  guestInfo = pings[0];
  Object.assign(boot, { vm1BootMs: readyMs[0], vm2BootMs: readyMs[1], agentsAnsweringMs: Date.now() - tBoot });
  say(`guests ready: boot ${readyMs.join(" / ")} ms, agents answering after ${Date.now() - tBoot} ms (${pings.map((p) => `${p.me} ${p.path}`).join(", ")})`);

  for (const path of ["ring", "stream"] as Path[]) {
    if (path === "stream") {
      // Same VMs, same ports: the guest clients reconnect without shared memory (a new HELLO
      // restarts the broker session on the port stream), and so does the host client.
      await Promise.all(["vm1", "vm2"].map((vm) => ctl(vm, { op: "reconnect", shm: false })));
      await host.close();
      host = await openHost(false);
    }
    const paths = await Promise.all(["vm1", "vm2"].map((vm) =>
      until(`${vm} on the ${path} path`, 30_000, async () => {
        const p = await ctl<Ping>(vm, { op: "ping" }, 1000);
        return p.path === path ? p : undefined;
      })
    ));
    if (host.dataPath !== path) throw new Error(`host client is on ${host.dataPath}, not ${path}`);
    say(`${path}: ${paths.map((p) => `${p.me} ${p.path}`).join(", ")}, host ${host.dataPath}`);
    const cases: [Kind, number, () => Promise<Row>][] = [
      ...SIZES.map((s) => ["g2g", s, () => g2g(path, s)] as [Kind, number, () => Promise<Row>]),
      ...SIZES.map((s) => ["g2h", s, () => g2h(path, s)] as [Kind, number, () => Promise<Row>]),
      ["rr-g2h", 64, () => rrG2h(path, 64)],
      ["rr-h2g", 64, () => rrH2g(path, 64)],
      ["rr-g2b", 0, () => rrG2h(path, 0, true)],
    ];
    for (const [kind, size, run] of cases) {
      const need = (kind.startsWith("rr") ? SET.rrSeconds : SET.seconds) * 1000 + 15_000;
      if (remaining() < need + 15_000) {
        rows.push({ id: `${kind}-${path}-${size}`, kind, flow: FLOW[kind], path, size, ok: false, skipped: true, error: "time budget exhausted", loadavg1: loadavg()[0] });
        continue;
      }
      say(`${FLOW[kind]}, ${fmtSize(size)}, ${path}`);
      try {
        const row = await run();
        rows.push(row);
        say(
          `  ${row.latencyUs ? `p50 ${fmtNum(row.latencyUs.p50)} µs p99 ${fmtNum(row.latencyUs.p99)} µs` : `${si(row.msgsPerSec!)} msg/s ${si(row.bytesPerSec!)}B/s, ${row.delivered}/${row.sent}`}; ${row.check?.detail}`,
        );
      } catch (err) {
        const msg = (err as Error).message;
        say(`  failed: ${msg}`);
        rows.push({ id: `${kind}-${path}-${size}`, kind, flow: FLOW[kind], path, size, ok: false, error: msg, loadavg1: loadavg()[0] });
        if (Object.keys(guestResults).length) throw new Error(`a guest exited: ${msg}`);
      }
    }
  }
  await Promise.all(["vm1", "vm2"].map((vm) => ctl(vm, { op: "exit" }, 3000).catch(() => {})));
  const ends = await Promise.race([
    Promise.all(Object.values(guests).map((g) => g.exited)),
    sleep(20_000).then(() => undefined),
  ]);
  if (!ends) problems.push("guests did not power off within 20 s of exit; killed");
  else {
    for (const [i, r] of ends.entries()) {
      Object.assign(boot, { [`vm${i + 1}TotalMs`]: r.totalMs });
      if (r.code !== 0) problems.push(`vm${i + 1} exit code ${r.code} (${r.error ?? ""})`);
    }
  }
} catch (err) {
  fatal = (err as Error).message;
  say(`run failed: ${fatal}`);
  for (const [name, g] of Object.entries(guests)) {
    try {
      const tail = readFileSync(g.consoleLogPath, "utf8").trim().split("\n").slice(-15).join("\n");
      console.error(`--- ${name} console (${g.consoleLogPath}) ---\n${tail}`);
    } catch { /* none */ }
  }
} finally {
  await host?.close().catch(() => {});
  cleanupSync();
}

// ---- report -----------------------------------------------------------------------------------

if (rows.filter((r) => r.ok).length === 0) {
  console.error(`bench/guests: no case ran${fatal ? ` (${fatal})` : ""}; no results written`);
  process.exit(1);
}

function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 20_000 });
  return (r.stdout ?? "").split("\n")[0].trim() || "?";
}
/** Which code was measured: the checkout's commit, and uncommitted changes to what runs. */
function sourceInfo(): { commit: string; dirty: string[] } {
  const git = (args: string[]) => spawnSync("git", ["-C", PROJECT_ROOT, ...args], { encoding: "utf8", timeout: 20_000 });
  const head = git(["rev-parse", "--short", "HEAD"]);
  if (head.status !== 0) return { commit: "unknown (not a git checkout)", dirty: [] };
  const st = git(["status", "--porcelain", "--", "src", "mod.ts", "ffi", "lab", "bench/guests.ts", "bench/guests"]);
  return {
    commit: head.stdout.trim(),
    dirty: (st.stdout ?? "").split("\n").filter((l) => l.trim()).map((l) => l.slice(3)),
  };
}
const sourceEnd = sourceInfo();
const source = {
  ...sourceAtStart,
  changedDuringRun: sourceEnd.commit !== sourceAtStart.commit || sourceEnd.dirty.join() !== sourceAtStart.dirty.join(),
};
const cpuModel = cpus()[0]?.model ?? "?";
const hostRuntime = RUNTIME === "deno"
  ? `deno ${(globalThis as unknown as { Deno: { version: { deno: string } } }).Deno.version.deno}`
  : `bun ${process.versions.bun}`;
const machine = {
  cpuModel,
  cores: cpus().length,
  memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
  kernel: release(),
  loadavgBefore: loadBefore.map((x) => +x.toFixed(2)),
  loadavgAfter: loadavg().map((x) => +x.toFixed(2)),
  qemu: firstLine(lab.qemu, ["--version"]),
  guestKernel: lab.kernel,
  guestMemory: "256M",
  accelerator: accel.accelerator,
  acceleratorReason: accel.reason,
  hostRuntime,
  brokerRuntime: hostRuntime,
  guestRuntime: guestInfo ? `${guestInfo.runtime} ${guestInfo.version}` : GUEST_RT,
};
const command = `node_modules/.bin/${RUNTIME}${RUNTIME === "deno" ? " run -A" : ""} bench/guests.ts${process.argv.slice(2).length ? " " + process.argv.slice(2).join(" ") : ""}`;
const TCG_NOTE = accel.accelerator === "tcg"
  ? "**Accelerator: TCG** (QEMU's software CPU emulation; KVM was not usable here: " + accel.reason +
    "). Everything inside the guests — the JavaScript runtime, the vbus client, the virtio and ivshmem " +
    "drivers — runs emulated, several times slower than on KVM. These numbers are NOT comparable to " +
    "KVM numbers, nor to the host-only benchmark in latest.md; compare rows within this file only."
  : "**Accelerator: KVM** (" + accel.reason + ").";
const settings = {
  quick: QUICK,
  seconds: SET.seconds,
  count: SET.count,
  rrCount: SET.rrCount,
  rrSeconds: SET.rrSeconds,
  rrWarmup: warmupFor(SET.rrCount),
  batch: Object.fromEntries(SIZES.map((s) => [s, batchFor(s)])),
  idleMs: IDLE_MS,
  budgetMs: BUDGET_MS,
  shmSize: 16 << 20,
  guestRuntime: GUEST_RT,
};
const finishedAt = new Date().toISOString();
const json = {
  schema: "vbus-bench-guests/1",
  source,
  startedAt,
  finishedAt,
  tookS: +((Date.now() - T_START) / 1000).toFixed(1),
  command,
  accelerator: accel.accelerator,
  note: TCG_NOTE.replace(/\*\*/g, ""),
  machine,
  settings,
  boot,
  rows,
  problems,
  fatal: fatal ?? null,
};
mkdirSync(OUT_DIR, { recursive: true });
writeFileSync(
  join(OUT_DIR, "guests.json"),
  JSON.stringify(json, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2) + "\n",
);

const acc = accel.accelerator.toUpperCase();
const MB = (bps: number | undefined) => (bps === undefined || !Number.isFinite(bps) ? "–" : fmtNum(bps / 1e6));
const BELL_NAMES: Record<string, string> = { vm1Out: "vm1→broker", vm1In: "broker→vm1", vm2Out: "vm2→broker", vm2In: "broker→vm2" };
const bellCell = (r: Row) => {
  const b = Object.entries(r.doorbells ?? {}).filter(([, n]) => n > 0).map(([k, n]) => `${BELL_NAMES[k] ?? k} ${n}`);
  return r.doorbells ? `; doorbells: ${b.length ? b.join(", ") : "none"}` : "";
};
const cpuCell = (r: Row) => r.cpuS ? ["vm1", "vm2", "broker", "host"].map((k) => r.cpuS![k] === undefined ? "?" : r.cpuS![k].toFixed(2)).join(" / ") : "–";
const pathCell = (r: Row) => r.skipped ? "skipped" : r.error ? `failed: ${r.error}` : r.check ? `${r.check.ok ? "✓" : "✗"} ${r.check.detail}${bellCell(r)}` : "";
const md: string[] = [];
md.push(`# vbus inside real guests (${acc})`, "");
md.push(
  `Started ${startedAt}, took ${json.tookS} s. Command: \`${command}\`. Raw data: \`guests.json\`. ` +
    "Method: the header of `bench/guests.ts`.",
  "",
  TCG_NOTE,
  "",
);
md.push("## Machine", "", "| item | value |", "|---|---|");
const mrow = (k: string, v: unknown) => md.push(`| ${k} | ${String(v).replace(/\|/g, "\\|")} |`);
mrow("accelerator", `${acc} (${accel.reason})`);
mrow("code measured", `${relative(process.cwd(), PROJECT_ROOT) || "."} at ${source.commit}${source.dirty.length ? ` **with uncommitted changes** in ${source.dirty.join(", ")}` : ", clean"}${source.changedDuringRun ? " (**the tree changed during the run**)" : ""}`);
mrow("CPU", `${cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB`);
mrow("host kernel", machine.kernel);
mrow("QEMU", `${machine.qemu}; guests: ${machine.guestMemory} RAM, 1 vCPU, ivshmem 16 MiB, guest kernel ${machine.guestKernel}`);
mrow("runtimes", `host client + broker: ${hostRuntime}; guests: ${machine.guestRuntime}`);
mrow("load average before / after", `${machine.loadavgBefore.join(" ")} / ${machine.loadavgAfter.join(" ")}`);
mrow("boot", `vm1 ${boot.vm1BootMs ?? "?"} ms, vm2 ${boot.vm2BootMs ?? "?"} ms to script start; agents answering after ${boot.agentsAnsweringMs ?? "?"} ms`);
mrow("settings", `quick=${QUICK}; throughput: ≤${SET.seconds} s and ≤${SET.count[64]} (64 B) / ≤${SET.count[65536]} (64 KiB) msgs, flush every ${batchFor(64)} / ${batchFor(65536)}; round trips: ≤${SET.rrSeconds} s and ≤${SET.rrCount} recorded after a warm-up of ${warmupFor(SET.rrCount)} round trips or ${SET.rrSeconds / 5} s, whichever ends first`);
md.push("");
md.push(
  "Paths: **ring** = both guests have ivshmem and their clients (and the host client) use the shared-memory rings; " +
    "**stream** = the same VMs, every client reconnected with `shm: false`, so frames go over the virtio-serial port " +
    "(host client: the broker's unix socket). The last column is what the broker's own stats (`$VBUS.STATS`) say " +
    "for the endpoints involved during that case: their `path`, and how many messages came in / went out during the " +
    "case (`in N (R via ring)`, counter deltas, including the case's own control requests); ✓ = every endpoint is on the " +
    "row's path and the ring counters account for every message (ring) or did not move (stream). Doorbells (ring rows) = " +
    "data doorbells rung during the case (RING_COUNT of each ring of the VMs' regions): how often a producer woke a " +
    "sleeping consumer with a DOORBELL frame over the port; the host client's own region is not counted. Load = the host's " +
    "1-minute load average when the case started (other jobs shared this 2-core machine).",
  "",
);
md.push("## Throughput (binary payloads, one publisher, one subscriber)", "");
md.push(
  "Delivered msg/s = messages received / time from the first publish to the last arrival (one clock per row: vm1's for " +
    "vm1 → vm2, the host's for vm1 → host). MB/s = payload bytes, 10^6. Publisher msg/s = sent / time until the " +
    "broker confirmed the last flush. s = the delivery window (first publish to last arrival). CPU s = CPU seconds " +
    "used during the case by vm1's QEMU and vm2's QEMU (each the whole guest: vCPU and I/O threads), the broker " +
    "process and the benchmark process (host client); a busy TCG guest shows up here as host CPU.",
  "",
);
md.push("| flow | payload | path | delivered msg/s | MB/s | sent | delivered | lost | publisher msg/s | s | CPU s vm1/vm2/broker/host | load | broker stats |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows.filter((r) => r.kind === "g2g" || r.kind === "g2h")) {
  md.push(
    `| ${r.flow} | ${fmtSize(r.size)} | ${r.path} | ${r.ok ? si(r.msgsPerSec!) : "–"} | ${r.ok ? MB(r.bytesPerSec) : "–"} | ${r.sent ?? "–"} | ${r.delivered ?? "–"} | ${r.lost ?? "–"} | ${r.ok ? si(r.pubMsgsPerSec!) : "–"} | ${r.ok ? fmtNum(r.durationS!) : "–"} | ${cpuCell(r)} | ${fmtNum(r.loadavg1)} | ${pathCell(r)} |`,
  );
}
md.push("", "## Request/reply round trips (64 B, sequential, one in flight)", "");
md.push(
  "Latency from `performance.now()` of the side that asks (guest clock for \"vm1 asks\", host clock for \"host asks\"), " +
    "with `bus.request()`; the other side answers with a copy of the payload. Warm-up excluded. The flush() row " +
    "is a PING/PONG between vm1 and the broker alone (no host client, no payload): the guest's share of a round trip.",
  "",
);
md.push("| flow | path | round trips | p50 µs | p90 µs | p99 µs | max µs | round trips/s | CPU s vm1/vm2/broker/host | load | broker stats |", "|---|---|---|---|---|---|---|---|---|---|---|");
for (const r of rows.filter((r) => r.kind.startsWith("rr"))) {
  const l = r.latencyUs;
  md.push(
    `| ${r.flow}${r.kind === "rr-g2b" ? " (no payload)" : ""} | ${r.path} | ${l?.n ?? "–"}${r.timeouts ? ` (${r.timeouts} timeouts)` : ""} | ${l ? fmtNum(l.p50) : "–"} | ${l ? fmtNum(l.p90) : "–"} | ${l ? fmtNum(l.p99) : "–"} | ${l ? fmtNum(l.max) : "–"} | ${r.ok ? si(r.msgsPerSec!) : "–"} | ${cpuCell(r)} | ${fmtNum(r.loadavg1)} | ${pathCell(r)} |`,
  );
}
const ratioRows: string[] = [];
for (const kind of ["g2g", "g2h"] as Kind[]) {
  for (const size of SIZES) {
    const ring = rows.find((r) => r.kind === kind && r.size === size && r.path === "ring" && r.ok);
    const stream = rows.find((r) => r.kind === kind && r.size === size && r.path === "stream" && r.ok);
    if (ring && stream) ratioRows.push(`| ${FLOW[kind]} | ${fmtSize(size)} | ${fmtNum(ring.msgsPerSec! / stream.msgsPerSec!)} |`);
  }
}
for (const kind of ["rr-g2h", "rr-h2g", "rr-g2b"] as Kind[]) {
  const ring = rows.find((r) => r.kind === kind && r.path === "ring" && r.ok);
  const stream = rows.find((r) => r.kind === kind && r.path === "stream" && r.ok);
  if (ring && stream) ratioRows.push(`| ${FLOW[kind]} | ${ring.size ? fmtSize(ring.size) : "–"} | ${fmtNum(stream.latencyUs!.p50 / ring.latencyUs!.p50)} (p50) |`);
}
if (ratioRows.length) {
  md.push("", "## Ring vs stream (same run)", "", "Throughput: ring msg/s ÷ stream msg/s; latency: stream p50 ÷ ring p50. Above 1 = the ring is better. One run each: on a shared 2-core machine a single ratio can move by tens of percent.", "");
  md.push("| flow | payload | ring ÷ stream |", "|---|---|---|", ...ratioRows);
}
const allProblems = [
  ...problems,
  ...rows.filter((r) => r.error).map((r) => `${r.id}: ${r.error}`),
  ...rows.filter((r) => r.check && !r.check.ok).map((r) => `${r.id}: ${r.check!.detail}`),
  ...rows.filter((r) => (r.lost ?? 0) > 0).map((r) => `${r.id}: ${r.lost} of ${r.sent} messages not delivered`),
  ...rows.filter((r) => (r.badSize ?? 0) > 0).map((r) => `${r.id}: ${r.badSize} messages of the wrong size`),
  ...rows.filter((r) => (r.timeouts ?? 0) > 0).map((r) =>
    `${r.id}: ${r.timeouts} request(s) got no reply within 2 s (counted as timeouts, not in the percentiles; ` +
    `broker counters: ${r.check?.detail ?? "?"})`
  ),
  ...(fatal ? [`run aborted: ${fatal}`] : []),
];
md.push("", "## Problems", "", ...(allProblems.length ? allProblems.map((p) => `- ${p}`) : ["None."]), "");
writeFileSync(join(OUT_DIR, "guests.md"), md.join("\n"));
say(`wrote ${join(OUT_DIR, "guests.md")} and guests.json (${rows.filter((r) => r.ok).length}/${rows.length} cases ok)`);
clearTimeout(hardStop);
process.exit(fatal ? 1 : 0);

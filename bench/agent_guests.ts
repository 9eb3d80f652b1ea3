/**
 * What `vbus agent` costs, in a real QEMU guest (issue 10): one lab guest (lab/vm.ts, booted from
 * exactly `qemuArgs(vm)` of a private broker config, `agentSlots` 8), a `vbus broker --config`
 * child and a host client here. Cases, each run on the same guest:
 *
 * - `direct`: one guest process opens the port and the ring itself (no agent), as before issue 10;
 *   run first and again last (the agent stopped), so a drift in the shared machine's load shows;
 * - `agent N`: `vbus agent` owns the port, N = 1, 2, 4, 8 separate guest processes connect through
 *   it (each its own ring slot).
 *
 * Shapes: `pub`: every guest process publishes SIZE-byte messages as fast as it can (batches, a
 * flush each, bounded by count and seconds), a host subscriber counts them (aggregate msgs/s from
 * its first to its last message, host clock); `sub`: the host publishes, every guest process is
 * subscribed and must receive all of them (aggregate delivered msgs/s, guest clock, first to last
 * across processes). Per case: aggregate and per-process msgs/s, lost messages, the broker's drop
 * counter, host CPU of QEMU (the whole guest) and the broker, each guest process's own CPU, and the
 * agent's CPU from inside the guest (/proc/AGENTPID/stat read by the guest processes).
 *
 * The guest runs one shell loop that sources the command files the host writes on a writable 9p
 * share (start processes, start the agent); the guest processes (bench/guests/agent_worker.ts)
 * take their rounds from files there too and append results as JSON lines, so no control
 * traffic crosses the bus being measured. Every wait is bounded.
 *
 *   node_modules/.bin/bun bench/agent_guests.ts [--quick] [--out DIR]
 *
 * Writes DIR/agent_guests.{md,json} (default bench/results). Exits 0 without results when the lab
 * cannot boot guests here (says why).
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
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
import { type BrokerConfig, type BrokerStats, type Bus, connect, parseConfig } from "../mod.ts";
import { fmtNum, fmtSize, median, si } from "./lib/stats.ts";
import { procCpu } from "./lib/proc.ts";
import { batchFor } from "./guests/cases.ts";

// ---- options ----------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    out: { type: "string", default: join(PROJECT_ROOT, "bench", "results") },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) {
  console.log(
    "usage: bun bench/agent_guests.ts [--quick] [--out DIR]\n" +
      "Boots one lab guest and measures N = 1, 2, 4, 8 processes through `vbus agent` against one\n" +
      "process on the port directly; writes DIR/agent_guests.{md,json}.",
  );
  process.exit(0);
}
const QUICK = opt.quick!;
const OUT_DIR = opt.out!;
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
// --quick (the CI test) stops at 2: eight Bun processes take 30-40 s to start under TCG.
const NS = QUICK ? [1, 2] : [1, 2, 4, 8];
const SIZES = QUICK ? [64] : [64, 1024];
const REPEATS = QUICK ? 1 : 3;
/** Messages per guest process per pub round; messages the host publishes per sub round (N <= 2). */
const PUB_COUNT: Record<number, number> = QUICK ? { 64: 10_000 } : { 64: 60_000, 1024: 40_000 };
const SUB_COUNT: Record<number, number> = QUICK ? { 64: 5_000 } : { 64: 30_000, 1024: 20_000 };
const PUB_SECONDS = QUICK ? 3 : 5;
/** One unrecorded pub and sub round per size before a group's measured rounds. */
const WARMUP = !QUICK;
const IDLE_SECONDS = QUICK ? 2 : 5;
const BUDGET_MS = QUICK ? 300_000 : 1_500_000;
const T_START = Date.now();
const remaining = () => BUDGET_MS - (Date.now() - T_START);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const say = (s: string) =>
  console.error(`[agent_guests +${((Date.now() - T_START) / 1000).toFixed(1)}s] ${s}`);

// ---- lab availability -------------------------------------------------------------------------

let accel: Awaited<ReturnType<typeof detectAccelerator>>;
let lab: ReturnType<typeof ensureLab>;
try {
  lab = ensureLab();
  accel = await detectAccelerator();
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  console.log(
    `bench/agent_guests: QEMU guests unavailable here, no results written: ${err.message}`,
  );
  process.exit(0);
}
say(`accelerator ${accel.accelerator} (${accel.reason}); guest kernel ${lab.kernel}`);

// ---- the run's private world ------------------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), "vbus-agentbench-"));
const share = join(dir, "out");
mkdirSync(share);
chmodSync(share, 0o777);
const rawConfig = {
  listen: join(dir, "broker.sock"),
  vms: [{
    name: "vm1",
    socket: join(dir, "vm1.sock"),
    shm: `/dev/shm/vbus-agentbench-${process.pid}-vm1`,
    // 8 slots of planSlots(32 MiB, 8): rings of 1 MiB each way per process
    shmSize: 32 << 20,
    agentSlots: 8,
  }],
};
const configPath = join(dir, "broker.jsonc");
writeFileSync(configPath, `// bench/agent_guests.ts\n${JSON.stringify(rawConfig, null, 2)}\n`);
const config: BrokerConfig = parseConfig(readFileSync(configPath, "utf8"), configPath);

let guest: GuestHandle | undefined;
let guestEnd: GuestResult | undefined;
let broker: ChildProcess | undefined;
let host: Bus | undefined;
let cleaned = false;
function cleanupSync() {
  if (cleaned) return;
  cleaned = true;
  guest?.kill();
  try {
    broker?.kill("SIGKILL");
  } catch { /* gone */ }
  for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
  try {
    // the guest's logs outlive the run's private directory, for a look after a failure
    mkdirSync(LOG_DIR, { recursive: true });
    for (const f of readdirSync(share).filter((f) => f.endsWith(".log"))) {
      copyFileSync(join(share, f), join(LOG_DIR, `agentbench-guest-${f}`));
    }
  } catch { /* none */ }
  rmSync(dir, { recursive: true, force: true });
}
process.on("exit", cleanupSync);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    console.error(`bench/agent_guests: ${sig}: stopping, no results written`);
    cleanupSync();
    process.exit(130);
  });
}
const hardStop = setTimeout(() => {
  console.error(`bench/agent_guests: over the ${BUDGET_MS + 30_000} ms hard limit; giving up`);
  cleanupSync();
  process.exit(1);
}, BUDGET_MS + 30_000);
(hardStop as unknown as { unref?: () => void }).unref?.();

/**
 * The guest's whole script: source OUT/cmd-K.sh for K = 0, 1, ... as the host writes them, mark
 * each done. `workers TAG N` starts N guest processes; `agent` starts `vbus agent` and points
 * the processes started after it at it; `reap` waits for the processes started so far.
 */
const GUEST_SCRIPT = `
export VBUS_LOG=warn
B=./node_modules/.bin/bun; W=bench/guests/agent_worker.ts; PIDS=
workers() { j=0; while [ $j -lt $2 ]; do TAG=$1 IDX=$j $B $W > "$OUT/$1-w$j.log" 2>&1 & PIDS="$PIDS $!"; j=$((j+1)); done; }
reap() { [ -n "$PIDS" ] && wait $PIDS; PIDS=; }
agent() {
  $B src/cli/main.ts agent --socket /run/vbus-agent.sock --slots 8 > "$OUT/agent.log" 2>&1 &
  AP=$!; echo $AP > "$OUT/agent.pid"
  i=0; while [ ! -S /run/vbus-agent.sock ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
  export VBUS_AGENT=/run/vbus-agent.sock VBUS_BENCH_AGENT_PID=$AP
}
noagent() {
  kill $AP; i=0; while kill -0 $AP 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  if kill -0 $AP 2>/dev/null; then echo "SIGKILL after 10 s" > "$OUT/agent-stop.txt"; kill -9 $AP; else echo "exited on SIGTERM after $((i*100)) ms" > "$OUT/agent-stop.txt"; fi
  wait $AP; unset VBUS_AGENT VBUS_BENCH_AGENT_PID
}
k=0; STOP=
while [ $k -lt 500 ] && [ -z "$STOP" ]; do
  i=0; while [ ! -e "$OUT/cmd-$k.sh" ] && [ $i -lt 6000 ]; do sleep 0.1; i=$((i+1)); done
  [ -e "$OUT/cmd-$k.sh" ] || break
  . "$OUT/cmd-$k.sh"
  : > "$OUT/cmd-$k.done"
  k=$((k+1))
done
`;

let nextCmd = 0;
/** Run `sh` in the guest's loop and wait (bounded) until it has finished (`timeoutMs` 0: don't). */
async function guestCmd(sh: string, timeoutMs: number) {
  const k = nextCmd++;
  writeFileSync(join(share, `cmd-${k}.sh.tmp`), sh + "\n");
  // rename-free: write then copy, so the guest never sources half a file
  writeFileSync(join(share, `cmd-${k}.sh`), readFileSync(join(share, `cmd-${k}.sh.tmp`)));
  if (timeoutMs === 0) return;
  await until(
    `guest command ${k} (${sh})`,
    timeoutMs,
    () => existsSync(join(share, `cmd-${k}.done`)),
  );
}

function lines(file: string): Record<string, unknown>[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return []; // a line being written
    }
  });
}

function diag(tag: string, n: number): string {
  const tail = (f: string) =>
    existsSync(join(share, f)) ? readFileSync(join(share, f), "utf8").slice(-1500) : "(none)";
  return ["agent.log", ...Array.from({ length: n }, (_, j) => `${tag}-w${j}.log`)]
    .map((f) => `--- ${f}\n${tail(f)}`).join("\n");
}

async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => T | undefined | false,
  why: () => string = () => "",
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (guestEnd) {
      throw new Error(
        `the guest exited while waiting for ${what} (code ${guestEnd.code}, ${
          guestEnd.error ?? ""
        })`,
      );
    }
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${why()}`);
    }
    await sleep(100);
  }
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
  child.stderr!.pipe(createWriteStream(join(LOG_DIR, "agentbench-broker.log")));
  return child;
}

const hostCpu = () => {
  const q = guest?.pid ? procCpu(guest.pid) : null;
  const b = broker?.pid ? procCpu(broker.pid) : null;
  return { qemu: q ? q.user + q.sys : NaN, broker: b ? b.user + b.sys : NaN };
};
const vmDropped = async () =>
  (await host!.request<BrokerStats>("$VBUS.STATS", null, { timeout: 5000 })).data.vms
    .find((v) => v.name === "vm1")!.dropped;

// ---- cases ------------------------------------------------------------------------------------

/** One measured round. */
interface Row {
  shape: "pub" | "sub";
  mode: "direct" | "agent";
  /** Which direct run: before the agent started, or after it stopped. */
  phase: string;
  n: number;
  size: number;
  rep: number;
  ok: boolean;
  error?: string;
  sent: number;
  delivered: number;
  lost: number;
  dropped: number;
  durationS: number;
  aggMsgsPerSec: number;
  perProcMsgsPerSec: number;
  /** Guest process CPU, summed over the N processes (their own process.cpuUsage). */
  procsCpuS: number;
  /** The agent's CPU (from /proc in the guest); null when direct. */
  agentCpuS: number | null;
  qemuCpuS: number;
  brokerCpuS: number;
  loadavg1: number;
}

interface Group {
  tag: string;
  n: number;
  mode: "direct" | "agent";
  phase: string;
}
const round: Record<string, number> = {};

function writeRound(g: Group, r: Record<string, unknown>): number {
  const k = round[g.tag] = (round[g.tag] ?? -1) + 1;
  const f = join(share, `${g.tag}-round-${k}.json`);
  writeFileSync(f + ".tmp", JSON.stringify(r));
  writeFileSync(f, readFileSync(f + ".tmp"));
  return k;
}

function results(g: Group, k: number, pred: (l: Record<string, unknown>) => boolean) {
  const got = Array.from(
    { length: g.n },
    (_, j) => lines(join(share, `${g.tag}-w${j}.jsonl`)).find((l) => l.round === k && pred(l)),
  );
  return got.every((x) => x) ? got as Record<string, unknown>[] : undefined;
}

function agentCpu(res: Record<string, unknown>[]): number | null {
  const a0 = res.map((r) => r.agentTicks0).filter((x): x is number => typeof x === "number");
  const a1 = res.map((r) => r.agentTicks1).filter((x): x is number => typeof x === "number");
  if (!a0.length || !a1.length) return null;
  return (Math.max(...a1) - Math.min(...a0)) / 100;
}

function roundError(res: Record<string, unknown>[]): string | undefined {
  const e = res.filter((r) => r.error).map((r) => String(r.error));
  return e.length ? e.join("; ") : undefined;
}

async function pubRound(g: Group, size: number, rep: number): Promise<Row> {
  const subject = `ab.${g.tag}.${rep}.${size}`;
  let delivered = 0;
  let tFirst = 0;
  let tLast = 0;
  let badSize = 0;
  const s = host!.subscribe<Uint8Array>(`${subject}.>`, {
    callback: (_e, m) => {
      const t = performance.now();
      if (delivered === 0) tFirst = t;
      tLast = t;
      delivered++;
      if (m.raw.length < size || m.raw.length > size + 5) badSize++;
    },
  });
  await host!.flush();
  const drop0 = await vmDropped();
  const cpu0 = hostCpu();
  const load = loadavg()[0];
  const k = writeRound(g, {
    op: "pub",
    subject,
    size,
    count: PUB_COUNT[size],
    seconds: PUB_SECONDS,
  });
  const res = await until(
    `${g.tag} pub round ${k}`,
    PUB_SECONDS * 1000 + 120_000,
    () => results(g, k, (l) => "sent" in l || "error" in l),
    () => diag(g.tag, g.n),
  );
  const sent = res.reduce((a, r) => a + Number(r.sent ?? 0), 0);
  let last = delivered;
  let lastChange = Date.now();
  await until(`${sent} messages at the host`, 60_000, () => {
    if (delivered !== last) [last, lastChange] = [delivered, Date.now()];
    return delivered >= sent || Date.now() - lastChange > 3000;
  });
  const cpu1 = hostCpu();
  await s.unsubscribe();
  const dropped = (await vmDropped()) - drop0;
  const durationS = (tLast - tFirst) / 1000;
  const error = roundError(res) ?? (badSize ? `${badSize} messages of the wrong size` : undefined);
  return roundRow("pub", g, size, rep, { sent, delivered, dropped, durationS, error, res }, {
    cpu0,
    cpu1,
    load,
  });
}

async function subRound(g: Group, size: number, rep: number): Promise<Row> {
  const subject = `ab.${g.tag}.s.${rep}.${size}`;
  // each of the N processes receives every message: N above 2 get fewer, so a round's total
  // stays near 2 x SUB_COUNT and its length near constant
  const count = Math.round(SUB_COUNT[size] * Math.min(1, 2 / g.n));
  const k = writeRound(g, {
    op: "sub",
    subject,
    size,
    count,
    idleMs: 5000,
    maxMs: 180_000,
  });
  await until(
    `${g.tag} subscribed (round ${k})`,
    60_000,
    () => results(g, k, (l) => "subscribed" in l || "error" in l),
    () => diag(g.tag, g.n),
  );
  const drop0 = await vmDropped();
  const cpu0 = hostCpu();
  const load = loadavg()[0];
  const p = new Uint8Array(size).fill(7);
  const batch = batchFor(size);
  let pending: Promise<void> | undefined;
  for (let sent = 0; sent < count;) {
    const n = Math.min(batch, count - sent);
    for (let i = 0; i < n; i++) void host!.publish(subject, p).catch(() => {});
    sent += n;
    const f = host!.flush();
    if (pending) await pending;
    pending = f;
  }
  await pending;
  const res = await until(
    `${g.tag} sub round ${k} results`,
    240_000,
    () => results(g, k, (l) => "received" in l || ("error" in l && !("subscribed" in l))),
    () => diag(g.tag, g.n),
  );
  const cpu1 = hostCpu();
  const dropped = (await vmDropped()) - drop0;
  const delivered = res.reduce((a, r) => a + Number(r.received ?? 0), 0);
  const bad = res.reduce((a, r) => a + Number(r.badSize ?? 0), 0);
  const t0 = Math.min(...res.map((r) => Number(r.tFirst)));
  const t1 = Math.max(...res.map((r) => Number(r.tLast)));
  const durationS = (t1 - t0) / 1000;
  const error = roundError(res) ?? (bad ? `${bad} messages of the wrong size` : undefined);
  return roundRow(
    "sub",
    g,
    size,
    rep,
    { sent: count * g.n, delivered, dropped, durationS, error, res },
    { cpu0, cpu1, load },
  );
}

/** What one round measured. */
interface RoundOutcome {
  sent: number;
  delivered: number;
  dropped: number;
  durationS: number;
  error: string | undefined;
  /** The guest processes' result lines. */
  res: Record<string, unknown>[];
}

/** A round's row, the same for both shapes (`at`: host CPU before and after, load). */
function roundRow(
  shape: "pub" | "sub",
  g: Group,
  size: number,
  rep: number,
  o: RoundOutcome,
  at: { cpu0: ReturnType<typeof hostCpu>; cpu1: ReturnType<typeof hostCpu>; load: number },
): Row {
  const agg = o.delivered / o.durationS;
  return {
    shape,
    mode: g.mode,
    phase: g.phase,
    n: g.n,
    size,
    rep,
    ok: !o.error && o.delivered === o.sent && o.sent > 0,
    ...(o.error ? { error: o.error } : {}),
    sent: o.sent,
    delivered: o.delivered,
    lost: o.sent - o.delivered,
    dropped: o.dropped,
    durationS: o.durationS,
    aggMsgsPerSec: agg,
    perProcMsgsPerSec: agg / g.n,
    procsCpuS: o.res.reduce((a, r) => a + Number(r.cpuUs ?? 0), 0) / 1e6,
    agentCpuS: agentCpu(o.res),
    qemuCpuS: at.cpu1.qemu - at.cpu0.qemu,
    brokerCpuS: at.cpu1.broker - at.cpu0.broker,
    loadavg1: at.load,
  };
}

/** The agent's CPU with N processes connected and nothing sent. */
interface IdleRow {
  tag: string;
  n: number;
  seconds: number;
  agentCpuS: number | null;
  qemuCpuS: number;
}

async function idleRound(g: Group): Promise<IdleRow> {
  const cpu0 = hostCpu();
  const k = writeRound(g, { op: "idle", seconds: IDLE_SECONDS });
  const res = await until(
    `${g.tag} idle round ${k}`,
    IDLE_SECONDS * 1000 + 60_000,
    () => results(g, k, (l) => "t1" in l || "error" in l),
    () => diag(g.tag, g.n),
  );
  const cpu1 = hostCpu();
  const row = {
    tag: g.tag,
    n: g.n,
    seconds: Math.max(...res.map((r) => Number(r.t1))) / 1000 -
      Math.min(...res.map((r) => Number(r.t0))) / 1000,
    agentCpuS: agentCpu(res),
    qemuCpuS: cpu1.qemu - cpu0.qemu,
  };
  say(
    `  ${g.tag} idle ${row.seconds.toFixed(1)} s: agent ${row.agentCpuS} s, qemu ${
      row.qemuCpuS.toFixed(2)
    } s`,
  );
  return row;
}

const idle: IdleRow[] = [];
const rows: Row[] = [];
const problems: string[] = [];
const startMs: Record<string, number> = {};

/** Start the group's processes, run its rounds, stop them. */
async function runGroup(g: Group) {
  const t = Date.now();
  await guestCmd(`workers ${g.tag} ${g.n}`, 30_000);
  const ready = await until(
    `${g.n} guest processes (${g.tag}) ready`,
    60_000 + 30_000 * g.n,
    () => {
      const r = Array.from(
        { length: g.n },
        (_, j) => lines(join(share, `${g.tag}-w${j}.jsonl`)).find((l) => "ready" in l),
      );
      return r.every((x) => x) ? r : undefined;
    },
    () => diag(g.tag, g.n),
  );
  startMs[g.tag] = Date.now() - t;
  const paths = ready.map((r) => r!.dataPath);
  if (paths.some((p) => p !== "ring")) throw new Error(`${g.tag}: not all on the ring: ${paths}`);
  say(`${g.tag}: ${g.n} ${g.mode} processes ready on the ring after ${startMs[g.tag]} ms`);
  if (g.mode === "agent") idle.push(await idleRound(g));
  if (WARMUP) {
    // not recorded: the processes' JIT and the broker's sessions warm, as in every later round
    for (const size of SIZES) {
      await pubRound(g, size, -1);
      await subRound(g, size, -1);
    }
  }
  for (let rep = 0; rep < REPEATS; rep++) {
    for (const size of SIZES) {
      for (const shape of ["pub", "sub"] as const) {
        if (remaining() < 90_000) {
          problems.push(`time budget exhausted before ${g.tag} ${shape} ${size} #${rep}`);
          continue;
        }
        const row = shape === "pub" ? await pubRound(g, size, rep) : await subRound(g, size, rep);
        rows.push(row);
        say(
          `  ${g.tag} ${shape} ${fmtSize(size)} #${rep}: ${si(row.aggMsgsPerSec)} msg/s (${
            si(row.perProcMsgsPerSec)
          }/process), ${row.delivered}/${row.sent}, dropped ${row.dropped}, agent ${
            row.agentCpuS ?? "-"
          } s, qemu ${row.qemuCpuS.toFixed(2)} s${row.error ? `; ERROR ${row.error}` : ""}`,
        );
      }
    }
  }
  writeRound(g, { op: "exit" });
  await guestCmd("reap", 60_000);
}

// ---- main -------------------------------------------------------------------------------------

const loadBefore = loadavg();
const startedAt = new Date().toISOString();
let fatal: string | undefined;
let bootMs = 0;
let agentStop = "";
try {
  say(`booting vm1 (1536M, ivshmem 32 MiB, agentSlots 8), broker under ${RUNTIME}`);
  const vm = config.vms[0];
  guest = await bootGuest({
    name: "agentbench-vm1",
    deviceArgs: qemuArgs(vm),
    script: GUEST_SCRIPT,
    timeoutMs: Math.max(30_000, remaining() - 5_000),
    writableBinds: [share],
    env: { OUT: share },
    memory: "1536M",
  });
  guest.exited.then((r) => (guestEnd = r));
  broker = startBroker();
  host = await until("the broker's socket", 30_000, () => existsSync(config.listen!) || undefined)
    .then(() =>
      connect({
        server: config.listen!,
        name: "agentbench-host",
        timeout: 10_000,
        reconnect: false,
      })
    );
  bootMs = await guest.ready;
  say(`guest up after ${bootMs} ms`);

  await runGroup({ tag: "d0", n: 1, mode: "direct", phase: "before" });
  await guestCmd("agent", 150_000);
  for (const n of NS) await runGroup({ tag: `n${n}`, n, mode: "agent", phase: "agent" });
  await guestCmd("noagent", 30_000);
  agentStop = readFileSync(join(share, "agent-stop.txt"), "utf8").trim();
  say(`agent stopped: ${agentStop}`);
  if (agentStop.startsWith("SIGKILL")) {
    problems.push(`vbus agent did not exit on SIGTERM: ${agentStop}`);
  }
  await runGroup({ tag: "d1", n: 1, mode: "direct", phase: "after" });
  await guestCmd("STOP=1", 0); // the guest powers off after it: no .done to wait for
  const end = await Promise.race([guest.exited, sleep(20_000).then(() => undefined)]);
  if (!end) problems.push("the guest did not power off within 20 s; killed");
  else if (end.code !== 0) problems.push(`guest exit code ${end.code} (${end.error ?? ""})`);
} catch (err) {
  fatal = (err as Error).message;
  say(`run failed: ${fatal}`);
  if (guest) {
    try {
      const tail = readFileSync(guest.consoleLogPath, "utf8").trim().split("\n").slice(-15);
      console.error(`--- console (${guest.consoleLogPath}) ---\n${tail.join("\n")}`);
    } catch { /* none */ }
  }
} finally {
  await host?.close().catch(() => {});
  cleanupSync();
}
const loadAfter = loadavg();

if (rows.length === 0) {
  console.error(`bench/agent_guests: no case ran${fatal ? ` (${fatal})` : ""}; no results written`);
  process.exit(1);
}

// ---- report -----------------------------------------------------------------------------------

interface Summary {
  shape: string;
  mode: string;
  n: number;
  size: number;
  runs: number;
  aggMsgsPerSec: number;
  perProcMsgsPerSec: number;
  /** Per-process msgs/s over the direct process's (both direct runs' median). */
  perProcVsDirect: number;
  aggVsDirect: number;
  agentCpuS: number | null;
  /** Agent CPU per delivered message, µs. */
  agentUsPerMsg: number | null;
  qemuUsPerMsg: number;
  procsUsPerMsg: number;
  lost: number;
  dropped: number;
}

const summaries: Summary[] = [];
for (const shape of ["pub", "sub"]) {
  for (const size of SIZES) {
    const direct = rows.filter((r) =>
      r.ok && r.shape === shape && r.size === size && r.mode === "direct"
    );
    const dPer = median(direct.map((r) => r.perProcMsgsPerSec));
    for (const n of [0, ...NS]) {
      const mine = rows.filter((r) =>
        r.shape === shape && r.size === size &&
        (n === 0 ? r.mode === "direct" : r.mode === "agent" && r.n === n)
      );
      const ok = mine.filter((r) => r.ok);
      if (!mine.length) continue;
      const agentS = ok.map((r) => r.agentCpuS).filter((x): x is number => x !== null);
      const per = median(ok.map((r) => r.perProcMsgsPerSec));
      summaries.push({
        shape,
        mode: n === 0 ? "direct" : "agent",
        n: n || 1,
        size,
        runs: ok.length,
        aggMsgsPerSec: median(ok.map((r) => r.aggMsgsPerSec)),
        perProcMsgsPerSec: per,
        perProcVsDirect: per / dPer,
        aggVsDirect: median(ok.map((r) => r.aggMsgsPerSec)) / dPer,
        agentCpuS: agentS.length ? median(agentS) : null,
        agentUsPerMsg: agentS.length
          ? median(ok.map((r) => (r.agentCpuS! * 1e6) / r.delivered))
          : null,
        qemuUsPerMsg: median(ok.map((r) => (r.qemuCpuS * 1e6) / r.delivered)),
        procsUsPerMsg: median(ok.map((r) => (r.procsCpuS * 1e6) / r.delivered)),
        lost: mine.reduce((a, r) => a + r.lost, 0),
        dropped: mine.reduce((a, r) => a + r.dropped, 0),
      });
    }
  }
}

const meta = {
  command: `node_modules/.bin/${RUNTIME} bench/agent_guests.ts ${process.argv.slice(2).join(" ")}`
    .trim(),
  startedAt,
  tookS: (Date.now() - T_START) / 1000,
  runtime: RUNTIME,
  accelerator: accel.accelerator,
  acceleratorReason: accel.reason,
  guestKernel: lab.kernel,
  hostCpus: (await import("node:os")).cpus().length,
  loadBefore,
  loadAfter,
  bootMs,
  processStartMs: startMs,
  agentStop,
  settings: {
    quick: QUICK,
    ns: NS,
    sizes: SIZES,
    repeats: REPEATS,
    PUB_COUNT,
    SUB_COUNT,
    PUB_SECONDS,
  },
  problems: [...problems, ...(fatal ? [`run aborted: ${fatal}`] : [])],
};
mkdirSync(OUT_DIR, { recursive: true });
writeFileSync(
  join(OUT_DIR, "agent_guests.json"),
  JSON.stringify({ meta, summaries, idle, rows }, null, 2) + "\n",
);
const f2 = (x: number | null) => (x === null || !Number.isFinite(x) ? "–" : fmtNum(x));
const md = [
  "# vbus agent in a real guest: N processes through one agent vs one process on the port",
  "",
  `\`${meta.command}\` — ${startedAt}, ${meta.hostCpus} host cores, ${accel.accelerator} ` +
  `(${accel.reason}), guest: 1 vCPU, 1536M; load average before ${
    loadBefore.map((x) => x.toFixed(2)).join(" ")
  }, after ${
    loadAfter.map((x) => x.toFixed(2)).join(" ")
  }; ${REPEATS} run(s) per case, medians; took ${meta.tookS.toFixed(0)} s.`,
  "",
  "pub: each guest process publishes, a host subscriber counts (host clock). sub: the host " +
  "publishes, every guest process receives all (guest clock). direct = one process on the port " +
  "without agent (run before the agent started and after it stopped). vs direct = per-process " +
  "msgs/s over the direct process's. CPU per message: µs per delivered message.",
  "",
  "| shape | size | mode | N | runs | aggregate msg/s | per process msg/s | per process vs direct | agent CPU s | agent µs/msg | guest procs µs/msg | QEMU µs/msg | lost | dropped |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ...summaries.map((s) =>
    `| ${s.shape} | ${fmtSize(s.size)} | ${s.mode} | ${s.n} | ${s.runs} | ${
      si(s.aggMsgsPerSec)
    } | ${si(s.perProcMsgsPerSec)} | ${f2(s.perProcVsDirect)} | ${f2(s.agentCpuS)} | ${
      f2(s.agentUsPerMsg)
    } | ${f2(s.procsUsPerMsg)} | ${f2(s.qemuUsPerMsg)} | ${s.lost} | ${s.dropped} |`
  ),
  "",
  `Agent idle (N processes connected, nothing sent): ${
    idle.map((r) =>
      `N=${r.n} ${f2(r.agentCpuS)} s agent CPU in ${r.seconds.toFixed(1)} s (QEMU ${
        r.qemuCpuS.toFixed(2)
      } s)`
    ).join("; ")
  }.`,
  "",
  `Guest process start (Bun under ${accel.accelerator}), ms per group: ${
    Object.entries(startMs).map(([k, v]) => `${k} ${v}`).join(", ")
  }. Boot ${bootMs} ms.`,
  ...(meta.problems.length ? ["", "Problems:", ...meta.problems.map((p) => `- ${p}`)] : []),
  "",
  "Every round: bench/results/agent_guests.json (`rows`).",
  "",
].join("\n");
writeFileSync(join(OUT_DIR, "agent_guests.md"), md);
say(
  `wrote ${join(OUT_DIR, "agent_guests.md")} and .json (${
    rows.filter((r) => r.ok).length
  }/${rows.length} rounds ok)`,
);
clearTimeout(hardStop);
process.exit(fatal || rows.some((r) => !r.ok) ? 1 : 0);

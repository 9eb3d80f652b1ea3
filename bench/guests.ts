/**
 * vbus against TCP/IP in real guests (issue 12): boots two micro-VMs with the lab (lab/vm.ts),
 * each with vbus's devices (`qemuArgs(vm)` of a private broker config: virtio-serial + ivshmem)
 * AND a confined virtio-net NIC (lab/net.ts: QEMU user networking, `restrict=on`, forwards to
 * host 127.0.0.1 only), and measures, in ONE run, with the same guests and the same shapes:
 *
 * - `vbus-ring`: vbus on the shared-memory rings; `vbus-port`: vbus on the port stream alone
 *   (same VMs, clients reconnected with `shm: false`); broker = `vbus broker --config`;
 * - `nats`: the official JS client in the guests, Debian's nats-server on the host (127.0.0.1),
 *   reached over virtio-net;
 * - `tcp`: raw TCP over virtio-net with the host benchmark's framing and relay
 *   (bench/lib/frame.ts, bench/systems/_relay.ts);
 * - `vsock`: the same framing over AF_VSOCK, where the host has /dev/vhost-vsock (else reported
 *   as not run, with the reason).
 *
 * Shapes: vm1 -> middle -> vm2 and vm1 -> middle -> host client (throughput), vm1 asks the host
 * client and vm1 asks vm2 (request/reply p50/p99); vbus also: the host asks vm1, and vm1's bare
 * PING/PONG with the broker. Payloads 64 B, 1 KiB, 64 KiB (--quick: 64 B, 64 KiB; round trips
 * 64 B). Cases run interleaved (one shape and size for every system, then the next), so a change
 * in the shared machine's load does not fall on one system alone. CPU per case: each QEMU, the middle process and this process from the host
 * (/proc/PID/stat), and each guest agent from inside (process.cpuUsage). The guests are driven
 * over vbus (bench/guests/agent.ts); cases: bench/guests/cases.ts; report: bench/guests/report.ts
 * -> bench/results/guests.{md,json,svg} (or --out DIR).
 *
 *   node_modules/.bin/bun bench/guests.ts [--quick] [--systems a,b] [--guest-runtime bun|deno] [--out DIR]
 *
 * Exits 0 without writing results when the lab cannot boot guests here (says why).
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
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
import { loadavg, tmpdir } from "node:os";
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
import { FORWARD_ADDR, type GuestForward, vsockProblem } from "../lab/net.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import { type BrokerConfig, type BrokerStats, type Bus, connect, parseConfig } from "../mod.ts";
import { ringControl, RingId } from "../src/ring/layout.ts";
import { fmtNum, fmtSize, si } from "./lib/stats.ts";
import { freePort, procCpu, waitForPort } from "./lib/proc.ts";
import {
  flowOf,
  g2g,
  g2h,
  type GuestSystem,
  type Kind,
  quietly,
  type Row,
  rrG2g,
  rrG2h,
  rrH2g,
  type World,
} from "./guests/cases.ts";
import { startNetServers } from "./guests/servers.ts";
import { closeNats, type NetEndpoint, type NetSystem } from "./guests/net_clients.ts";
import { writeGuestReport } from "./guests/report.ts";

// ---- options ----------------------------------------------------------------------------------

const ALL_SYSTEMS: GuestSystem[] = ["vbus-ring", "vbus-port", "nats", "tcp", "vsock"];
const { values: opt } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    systems: { type: "string", default: ALL_SYSTEMS.join(",") },
    "guest-runtime": { type: "string", default: "bun" },
    out: { type: "string", default: join(PROJECT_ROOT, "bench", "results") },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) {
  console.log(
    "usage: bun bench/guests.ts [--quick] [--systems vbus-ring,vbus-port,nats,tcp,vsock] [--guest-runtime bun|deno] [--out DIR]\n" +
      "Boots two lab guests (TCG or KVM) and measures vbus (rings, port stream) against NATS and raw TCP over\n" +
      "virtio-net (and vsock where the host has /dev/vhost-vsock); writes DIR/guests.{md,json,svg}.",
  );
  process.exit(0);
}
const QUICK = opt.quick!;
const GUEST_RT = opt["guest-runtime"] as "bun" | "deno";
if (GUEST_RT !== "bun" && GUEST_RT !== "deno") {
  console.error(`--guest-runtime must be bun or deno, not ${GUEST_RT}`);
  process.exit(2);
}
const SYSTEMS = opt.systems!.split(",").map((s) => s.trim()).filter(Boolean) as GuestSystem[];
for (const s of SYSTEMS) {
  if (!ALL_SYSTEMS.includes(s)) {
    console.error(`--systems: unknown system "${s}" (known: ${ALL_SYSTEMS.join(", ")})`);
    process.exit(2);
  }
}
const OUT_DIR = opt.out!;
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const SIZES = QUICK ? [64, 65536] : [64, 1024, 65536];
const RR_SIZES = QUICK ? [64] : [64, 1024, 65536];
/** Budget of the whole script (boots + cases + teardown); no case starts when it would overrun. */
const BUDGET_MS = QUICK ? 240_000 : 840_000;
const SET: World["settings"] = QUICK
  ? {
    seconds: 1,
    count: { 64: 30_000, 1024: 20_000, 65536: 1_500 },
    rrCount: 200,
    rrSeconds: 1.5,
    idleMs: 1000,
  }
  : {
    seconds: 3,
    count: { 64: 300_000, 1024: 200_000, 65536: 20_000 },
    rrCount: 2_000,
    rrSeconds: 4,
    idleMs: 1000,
  };
/** Guest ports forwarded to the raw TCP relay, per VM: one per connection (lab/net.ts). */
const TCP_PORTS = 24;
const TCP_PORT0 = 5000;
const NATS_GUEST_PORT = 4222;
const VSOCK_PORT = 5700;
const T_START = Date.now();
const remaining = () => BUDGET_MS - (Date.now() - T_START);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const say = (s: string) =>
  console.error(`[guests +${((Date.now() - T_START) / 1000).toFixed(1)}s] ${s}`);

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

/** Systems not run, and why (reported as such). */
const notRun: Record<string, string> = {};
const vsockWhy = vsockProblem();
if (SYSTEMS.includes("vsock")) {
  if (vsockWhy) notRun.vsock = vsockWhy;
  else if (GUEST_RT !== "deno") {
    notRun.vsock = "the guest side needs Deno (Bun has no AF_VSOCK): --guest-runtime deno";
  }
}
const runs = (s: GuestSystem) => SYSTEMS.includes(s) && !notRun[s];

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
writeFileSync(
  configPath,
  `// bench/guests.ts private broker\n${JSON.stringify(rawConfig, null, 2)}\n`,
);
const config: BrokerConfig = parseConfig(readFileSync(configPath, "utf8"), configPath);

const guests: Record<string, GuestHandle> = {};
const guestResults: Record<string, GuestResult> = {};
let broker: ChildProcess | undefined;
let host: Bus | undefined;
let vsockRelay: ChildProcess | undefined;
let cleaned = false;

function cleanupSync() {
  if (cleaned) return;
  cleaned = true;
  for (const g of Object.values(guests)) g.kill();
  for (const c of [broker, vsockRelay]) {
    try {
      c?.kill("SIGKILL");
    } catch { /* gone */ }
  }
  for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
  rmSync(dir, { recursive: true, force: true });
}
process.on("exit", cleanupSync);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    console.error(`bench/guests: ${sig}: stopping guests and servers, no results written`);
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

// The TCP/IP systems' servers listen before QEMU starts: a guestfwd rule connects at startup.
const servers = await startNetServers({
  runtime: RUNTIME,
  dir,
  want: (["nats", "tcp"] as const).filter((s) => runs(s)),
  log: say,
});
Object.assign(notRun, servers.problems);
let vsockHostPort = 0;
if (runs("vsock")) {
  vsockHostPort = await freePort();
  const bin = join(PROJECT_ROOT, "node_modules", ".bin", "deno");
  vsockRelay = spawn(bin, [
    "run",
    "-A",
    "--unstable-vsock",
    "bench/guests/vsock_relay.ts",
    "vsock",
    String(VSOCK_PORT),
    String(vsockHostPort),
  ], { cwd: PROJECT_ROOT, stdio: ["ignore", "ignore", "inherit"] });
  await waitForPort(vsockHostPort, 15_000);
}

function guestForwards(): GuestForward[] {
  const f: GuestForward[] = [];
  if (servers.nats) f.push({ guestPort: NATS_GUEST_PORT, hostPort: servers.nats.port });
  if (servers.tcp) {
    for (let i = 0; i < TCP_PORTS; i++) {
      f.push({ guestPort: TCP_PORT0 + i, hostPort: servers.tcp.port });
    }
  }
  return f;
}

const guestScript = GUEST_RT === "deno"
  ? `exec ./node_modules/.bin/deno run -A${
    runs("vsock") ? " --unstable-vsock" : ""
  } bench/guests/agent.ts`
  : `exec ./node_modules/.bin/bun bench/guests/agent.ts`;

function bootVm(name: string, cid: number): Promise<GuestHandle> {
  const vm = config.vms.find((v) => v.name === name)!;
  return bootGuest({
    name: `gbench-${name}`,
    deviceArgs: qemuArgs(vm),
    network: { guestForwards: guestForwards() },
    ...(runs("vsock") ? { vsock: { cid } } : {}),
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
    env: { ...process.env, VBUS_LOG: process.env.VBUS_GBENCH_BROKER_LOG ?? "warn" },
  });
  mkdirSync(LOG_DIR, { recursive: true });
  child.stderr!.pipe(createWriteStream(join(LOG_DIR, "gbench-broker.log")));
  return child;
}

async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = "";
  for (;;) {
    for (const [name, g] of Object.entries(guestResults)) {
      throw new Error(
        `${name} exited while waiting for ${what} (code ${g.code}, ${g.error ?? ""})`,
      );
    }
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = (err as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (${lastErr})` : ""}`,
      );
    }
    await sleep(150);
  }
}

async function ctl<T = Record<string, unknown>>(
  vm: string,
  cmd: Record<string, unknown>,
  timeout = 5000,
): Promise<T> {
  const r = await host!.request<T & { ok?: boolean; error?: string }>(`gbench.ctl.${vm}`, cmd, {
    timeout,
  });
  if (r.data && (r.data as { ok?: boolean }).ok === false) {
    throw new Error(`${vm} ${cmd.op}: ${(r.data as { error?: string }).error}`);
  }
  return r.data;
}

async function openHost(shm: boolean): Promise<Bus> {
  const b = await connect({
    server: config.listen!,
    name: "gbench-host",
    shm,
    timeout: 10_000,
    reconnect: false,
  });
  b.subscribe<Uint8Array>("gbench.hecho", {
    callback: (_e, m) => quietly(m.respond(m.data.slice())),
  });
  await b.flush();
  return b;
}

/**
 * Data doorbells rung so far on each ring of each VM's region (RING_COUNT in the ring control
 * blocks, read from the /dev/shm files without mapping them). Reset when a session re-initialises
 * the region, so only deltas within one case mean anything.
 */
function doorbells(): Record<string, number> {
  const out: Record<string, number> = {};
  const word = Buffer.alloc(4);
  for (const vm of config.vms) {
    let fd: number | undefined;
    try {
      fd = openSync(vm.shm!, "r");
      for (const [d, id] of [["Out", RingId.OUTBOUND], ["In", RingId.INBOUND]] as const) {
        readSync(fd, word, 0, 4, ringControl(id).RING_COUNT);
        out[`${vm.name}${d}`] = word.readUInt32LE(0);
      }
    } catch {
      /* not there (yet) */
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  return out;
}

/** CPU seconds (user + system, all threads) so far of each process the cases involve. */
function cpuNow(): Record<string, number> {
  const pids: Record<string, number | undefined> = {
    vm1: guests.vm1?.pid,
    vm2: guests.vm2?.pid,
    broker: broker?.pid,
    nats: servers.nats?.pid,
    relay: servers.tcp?.pid ?? vsockRelay?.pid,
    host: process.pid,
  };
  const out: Record<string, number> = {};
  for (const [k, pid] of Object.entries(pids)) {
    const c = pid ? procCpu(pid) : null;
    if (c) out[k] = c.user + c.sys;
  }
  return out;
}

const nextTcpPort: Record<string, number> = { vm1: 0, vm2: 0 };
const world: World = {
  host: () => host!,
  ctl,
  stats: async () =>
    (await host!.request<BrokerStats>("$VBUS.STATS", null, { timeout: 5000 })).data,
  cpuNow,
  doorbells,
  guestEndpoint(system: NetSystem, vm: string): NetEndpoint {
    if (system === "nats") return { host: FORWARD_ADDR, port: NATS_GUEST_PORT };
    if (system === "vsock") return { cid: 2, port: VSOCK_PORT };
    // One guestfwd rule carries one connection per boot: every TCP connection gets its own port.
    const i = nextTcpPort[vm]++;
    if (i >= TCP_PORTS) {
      throw new Error(`${vm}: all ${TCP_PORTS} forwarded TCP ports are used (raise TCP_PORTS)`);
    }
    return { host: FORWARD_ADDR, port: TCP_PORT0 + i };
  },
  hostEndpoint(system: NetSystem) {
    if (system === "nats") {
      return { system, endpoint: { host: "127.0.0.1", port: servers.nats!.port } };
    }
    if (system === "tcp") {
      return { system, endpoint: { host: "127.0.0.1", port: servers.tcp!.port } };
    }
    // vsock: the guests reach the relay over AF_VSOCK, host clients over its 127.0.0.1 port.
    return { system: "tcp" as const, endpoint: { host: "127.0.0.1", port: vsockHostPort } };
  },
  settings: SET,
};

// ---- main -------------------------------------------------------------------------------------

const loadBefore = loadavg();
const rows: Row[] = [];
const problems: string[] = [];
const boot: Record<string, unknown> = {};
let guestInfo: { runtime: string; version: string } | undefined;
let fatal: string | undefined;
const startedAt = new Date().toISOString();

type Plan = [Kind, number, () => Promise<Row>][];
function plan(system: GuestSystem): Plan {
  const p: Plan = [
    ...SIZES.map((s) => ["g2g", s, () => g2g(world, system, s)] as Plan[number]),
    ...SIZES.map((s) => ["g2h", s, () => g2h(world, system, s)] as Plan[number]),
    ...RR_SIZES.map((s) => ["rr-g2h", s, () => rrG2h(world, system, s)] as Plan[number]),
    ...RR_SIZES.map((s) => ["rr-g2g", s, () => rrG2g(world, system, s)] as Plan[number]),
  ];
  if (system.startsWith("vbus")) {
    p.push(["rr-h2g", 64, () => rrH2g(world, system, 64)], [
      "rr-g2b",
      0,
      () => rrG2h(world, system, 0, true),
    ]);
  }
  return p;
}

type Path = "ring" | "stream";
let currentPath: Path = "ring";

/** Move every vbus client (both agents and the host client) to `path`, checked by the agents. */
async function switchTo(path: Path) {
  if (path === currentPath) return;
  await Promise.all(["vm1", "vm2"].map((vm) => ctl(vm, { op: "reconnect", shm: path === "ring" })));
  await host!.close();
  host = await openHost(path === "ring");
  currentPath = path;
  await onPath(path);
}

/**
 * Run the systems' cases interleaved: each shape and size for every system, then the next, so a
 * change in the shared machine's load hits every system alike rather than one. vbus-ring cases
 * need every vbus client on the rings, the others on the port stream (vbus-port; and the TCP/IP
 * systems, whose agents' vbus control connection then idles on the stream, no ring beside it):
 * within each shape and size the cases of the current path run first, so the path switches once
 * per shape and size.
 */
async function runSystems(systems: GuestSystem[]) {
  const cases = systems.flatMap((system) =>
    plan(system).map(([kind, size, run]) => ({ system, kind, size, run }))
  );
  const keys = [...new Set(cases.map((c) => `${c.kind}/${c.size}`))];
  const pathOf = (s: GuestSystem): Path => (s === "vbus-ring" ? "ring" : "stream");
  for (const key of keys) {
    const group = cases.filter((c) => `${c.kind}/${c.size}` === key);
    group.sort((a, b) =>
      Number(pathOf(b.system) === currentPath) - Number(pathOf(a.system) === currentPath)
    );
    for (const { system, kind, size, run } of group) {
      const need = (kind.startsWith("rr") ? SET.rrSeconds : SET.seconds) * 1000 + 15_000;
      const base = {
        kind,
        flow: flowOf(kind, system),
        system,
        size,
        ok: false,
        loadavg1: loadavg()[0],
      };
      if (remaining() < need + 15_000) {
        rows.push({
          id: `${system}-${kind}-${size}`,
          ...base,
          skipped: true,
          error: "time budget exhausted",
        });
        continue;
      }
      await switchTo(pathOf(system));
      say(`${system}: ${flowOf(kind, system)}, ${fmtSize(size)}`);
      try {
        const row = await run();
        rows.push(row);
        say(
          `  ${
            row.latencyUs
              ? `p50 ${fmtNum(row.latencyUs.p50)} µs p99 ${fmtNum(row.latencyUs.p99)} µs`
              : `${si(row.msgsPerSec!)} msg/s ${
                si(row.bytesPerSec!)
              }B/s, ${row.delivered}/${row.sent}`
          }; ${row.check?.detail}`,
        );
      } catch (err) {
        const msg = (err as Error).message;
        say(`  failed: ${msg}`);
        rows.push({ id: `${system}-${kind}-${size}`, ...base, error: msg });
        if (Object.keys(guestResults).length) throw new Error(`a guest exited: ${msg}`);
      }
    }
  }
}

async function onPath(path: Path) {
  const got = await Promise.all(
    ["vm1", "vm2"].map((vm) =>
      until(`${vm} on the ${path} path`, 30_000, async () => {
        const p = await ctl<{ me: string; path: string }>(vm, { op: "ping" }, 1000);
        return p.path === path ? p : undefined;
      })
    ),
  );
  if (host!.dataPath !== path) throw new Error(`host client is on ${host!.dataPath}, not ${path}`);
  say(`${path}: ${got.map((p) => `${p.me} ${p.path}`).join(", ")}, host ${host!.dataPath}`);
}

try {
  say(
    `booting vm1 and vm2 (${GUEST_RT} in the guests, ivshmem 16 MiB, virtio-net restricted), broker under ${RUNTIME}`,
  );
  const tBoot = Date.now();
  const [g1, g2] = await Promise.all([bootVm("vm1", 3), bootVm("vm2", 4)]);
  Object.assign(guests, { vm1: g1, vm2: g2 });
  for (const [name, g] of Object.entries(guests)) g.exited.then((r) => (guestResults[name] = r));
  broker = startBroker();
  broker.on("exit", (code, sig) => {
    if (!cleaned) {
      problems.push(
        `broker exited early (${code ?? sig}); see ${
          relative(PROJECT_ROOT, LOG_DIR)
        }/gbench-broker.log`,
      );
    }
  });
  host = await until(
    "the broker's socket",
    30_000,
    () => existsSync(config.listen!) ? openHost(true) : undefined,
  );
  const readyMs = await Promise.all([g1.ready, g2.ready]);
  const pings = await Promise.all(
    ["vm1", "vm2"].map((vm) =>
      until(
        `the agent in ${vm}`,
        Math.min(120_000, remaining() - 60_000),
        () =>
          ctl<{ runtime: string; version: string; me: string; path: string }>(
            vm,
            { op: "ping" },
            1000,
          ),
      )
    ),
  );
  guestInfo = pings[0];
  Object.assign(boot, {
    vm1BootMs: readyMs[0],
    vm2BootMs: readyMs[1],
    agentsAnsweringMs: Date.now() - tBoot,
  });
  say(
    `guests ready: boot ${readyMs.join(" / ")} ms, agents answering after ${Date.now() - tBoot} ms`,
  );

  await onPath("ring");
  await runSystems(ALL_SYSTEMS.filter(runs));

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
  await closeNats();
  await servers.stop();
  cleanupSync();
}

if (rows.filter((r) => r.ok).length === 0) {
  console.error(`bench/guests: no case ran${fatal ? ` (${fatal})` : ""}; no results written`);
  process.exit(1);
}
const files = writeGuestReport({
  outDir: OUT_DIR,
  rows,
  problems: [...problems, ...(fatal ? [`run aborted: ${fatal}`] : [])],
  notRun,
  systems: SYSTEMS,
  startedAt,
  tookS: (Date.now() - T_START) / 1000,
  argv: process.argv.slice(2),
  runtime: RUNTIME,
  accel,
  lab,
  loadBefore,
  boot,
  guestRuntime: guestInfo ? `${guestInfo.runtime} ${guestInfo.version}` : GUEST_RT,
  settings: {
    quick: QUICK,
    sizes: SIZES,
    rrSizes: RR_SIZES,
    budgetMs: BUDGET_MS,
    guestRuntime: GUEST_RT,
    ...SET,
  },
  servers: {
    ...(servers.nats ? { nats: servers.nats.describe } : {}),
    ...(servers.tcp ? { tcp: servers.tcp.describe } : {}),
  },
});
say(`wrote ${files.join(", ")} (${rows.filter((r) => r.ok).length}/${rows.length} cases ok)`);
clearTimeout(hardStop);
process.exit(fatal ? 1 : 0);

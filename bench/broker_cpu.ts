/**
 * The broker's CPU per message on the ring path, a figure that survives a noisy machine: a
 * `vbus broker`, one ring subscriber and one ring publisher as three processes; N binary
 * messages of SIZE bytes, 1 publisher -> broker -> 1 subscriber. Reports the broker's CPU
 * seconds (utime + stime from /proc, all threads) per million messages between "go" and the
 * last arrival, msgs/s, the clients' CPU, and the broker's CPU over IDLE seconds with both
 * clients connected and no traffic (as % of one core), before the traffic and after it.
 *
 *   bun bench/broker_cpu.ts [--size 64] [--count 1000000] [--idle 5] [--broker bun|deno] [--runs 1]
 *     [--wake doorbell|futex]  (how the broker wakes the parked clients: DOORBELL frames on
 *                     their sockets, the default, or FUTEX_WAKE)
 *     [--subs N]     (fan-out: N subscribers, each gets every message; CPU figures are then per
 *                     million deliveries, and subRing is the first subscriber's)
 *     [--prof DIR]   (Bun broker: writes its CPU profile as Markdown, broker-cpu.md, into DIR;
 *                     Deno broker: V8's tick log DIR/deno-broker.log, read it with
 *                     `node --prof-process DIR/deno-broker.log`)
 *
 * Wrap it in `flock /tmp/vbus-heavy.lock` on a shared machine. One JSON line per run.
 * Roles (internal): `broker`, `sub`, `pub` are started by the parent with --role.
 * @module
 */
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { RUNTIME_BIN } from "./lib/proc.ts";
import { cpuSeconds, startRole, stdinCommands } from "./lib/role_process.ts";

const { values } = parseArgs({
  options: {
    role: { type: "string" },
    size: { type: "string", default: "64" },
    count: { type: "string", default: "1000000" },
    idle: { type: "string", default: "5" },
    broker: { type: "string", default: "bun" },
    runs: { type: "string", default: "1" },
    subs: { type: "string", default: "1" },
    socket: { type: "string" },
    prof: { type: "string" },
    wake: { type: "string", default: "doorbell" },
  },
});
const size = Number(values.size);
const count = Number(values.count);
const subCount = Number(values.subs);
if (!Number.isInteger(subCount) || subCount < 1) throw new Error(`--subs ${values.subs}: not >= 1`);
const SELF = fileURLToPath(import.meta.url);
/** Messages per awaited publish (the publisher's backpressure point). */
const PUB_BATCH = 1024;

if (values.role === "sub" || values.role === "pub") {
  const next = stdinCommands();
  const { connect } = await import("../mod.ts");
  const wake = values.wake === "futex" ? "futex" : "doorbell";
  const bus = await connect({ server: values.socket!, shm: true, reconnect: false, wake });
  if (bus.dataPath !== "ring") throw new Error(`expected ring, got ${bus.dataPath}`);
  if (values.role === "sub") {
    let got = 0;
    let t0 = 0;
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => (resolveDone = r));
    bus.subscribe<Uint8Array>("cpu.bench", {
      callback: (_e, m) => {
        if (got === 0) t0 = performance.now();
        if ((m.data as Uint8Array).length !== size) throw new Error("bad message");
        if (++got === count) resolveDone();
      },
    });
    await bus.flush();
    process.stdout.write("ready\n");
    await done;
    const seconds = (performance.now() - t0) / 1000;
    process.stdout.write(JSON.stringify({ got, seconds, ring: bus.ringStats }) + "\n");
  } else {
    await bus.flush();
    process.stdout.write("ready\n");
    await next(); // go
    const payload = new Uint8Array(size).fill(7);
    for (let i = 0; i < count; i++) {
      const p = bus.publish("cpu.bench", payload);
      if (i % PUB_BATCH === PUB_BATCH - 1) await p;
    }
    await bus.flush();
    process.stdout.write(JSON.stringify({ ring: bus.ringStats }) + "\nsent\n");
  }
  await next(); // quit
  await bus.close();
  process.exit(0);
}

if (values.role === "broker") {
  const { Broker, parseConfig } = await import("../mod.ts");
  const broker = new Broker(parseConfig(JSON.stringify({ listen: values.socket, vms: [] })));
  await broker.start();
  process.stdout.write("ready\n");
  process.on("SIGTERM", async () => {
    await broker.stop();
    process.exit(0);
  });
  await new Promise(() => {});
}

// Parent.
function start(role: string, runtime: string, socket: string) {
  const args = [
    "--role",
    role,
    "--socket",
    socket,
    "--size",
    String(size),
    "--count",
    String(count),
    "--wake",
    values.wake!,
  ];
  const prof = role === "broker" && values.prof && runtime === "bun"
    ? ["--cpu-prof-md", `--cpu-prof-dir=${values.prof}`, "--cpu-prof-name=broker-cpu.md"]
    : [];
  // Deno: V8's tick log (`node --prof-process DIR/deno-broker.log` reads it).
  const v8prof = role === "broker" && values.prof && runtime === "deno"
    ? [
      `--v8-flags=--prof,--logfile=${
        join(values.prof, "deno-broker.log")
      },--no-logfile-per-isolate`,
    ]
    : [];
  const cmd = runtime === "deno"
    ? ["run", "-A", ...v8prof, SELF, ...args]
    : [...prof, SELF, ...args];
  return startRole(role, RUNTIME_BIN[runtime as keyof typeof RUNTIME_BIN], cmd);
}

/** CPU of `pid` over `seconds` of nothing happening, in % of one core. */
async function idleCpuPct(pid: number, seconds: number): Promise<number> {
  const cpu0 = cpuSeconds(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const wall = (performance.now() - t0) / 1000;
  return +((100 * (cpuSeconds(pid) - cpu0)) / wall).toFixed(2);
}

async function run() {
  const dir = mkdtempSync(join(tmpdir(), "vbus-cpu-"));
  const socket = join(dir, "broker.sock");
  const load = loadavg().map((l) => l.toFixed(2)).join(" ");
  const broker = start("broker", values.broker!, socket);
  try {
    await broker.until("ready");
    const subs: ReturnType<typeof start>[] = [];
    for (let i = 0; i < subCount; i++) {
      const sub = start("sub", "bun", socket);
      await sub.until("ready");
      subs.push(sub);
    }
    const pub = start("pub", "bun", socket);
    await pub.until("ready");
    await new Promise((r) => setTimeout(r, 300)); // let start-up work settle
    const idleBefore = await idleCpuPct(broker.pid, Number(values.idle));
    const cpuOfSubs = () => subs.reduce((a, s) => a + cpuSeconds(s.pid), 0);
    const before = { broker: cpuSeconds(broker.pid), sub: cpuOfSubs(), pub: cpuSeconds(pub.pid) };
    pub.send("go");
    for (const sub of subs) await sub.until("}");
    const after = { broker: cpuSeconds(broker.pid), sub: cpuOfSubs(), pub: cpuSeconds(pub.pid) };
    await pub.until("sent");
    // Idle again after the traffic (what it left behind, e.g. garbage, shows here).
    await new Promise((r) => setTimeout(r, 500));
    const idleAfter = await idleCpuPct(broker.pid, Number(values.idle));
    for (const sub of subs) sub.send("quit");
    pub.send("quit");
    await Promise.all([...subs.map((s) => s.exited), pub.exited]);
    const results = subs.map((s) => JSON.parse(s.output().trim().split("\n").pop()!));
    const result = results[0];
    const pubLines = pub.output().trim().split("\n");
    const pubResult = JSON.parse(pubLines[pubLines.indexOf("sent") - 1]);
    // Per million deliveries (count x subscribers): with one subscriber, per message.
    const delivered = results.reduce((a, r) => a + r.got, 0);
    const millions = delivered / 1e6;
    const perM = (k: keyof typeof before) => +((after[k] - before[k]) / millions).toFixed(3);
    const framesIn = results.reduce((a, r) => a + r.ring.framesIn, 0);
    const batches = results.reduce((a, r) => a + r.ring.batches, 0);
    return {
      date: new Date().toISOString(),
      broker: values.broker,
      size,
      count,
      subs: subCount,
      delivered,
      // Every subscriber's deliveries together, per second of the slowest one.
      msgsPerSec: Math.round(delivered / Math.max(...results.map((r) => r.seconds))),
      subMeanBatch: +(framesIn / Math.max(1, batches)).toFixed(1),
      brokerCpuSPerM: perM("broker"),
      subCpuSPerM: perM("sub"),
      pubCpuSPerM: perM("pub"),
      idleBrokerCpuPct: idleBefore,
      idleAfterTrafficCpuPct: idleAfter,
      loadavgBefore: load,
      subRing: result.ring,
      pubRing: pubResult.ring,
    };
  } finally {
    broker.kill();
    await broker.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

for (let i = 0; i < Number(values.runs); i++) console.log(JSON.stringify(await run()));
process.exit(0);

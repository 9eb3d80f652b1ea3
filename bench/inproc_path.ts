/**
 * The whole ring path in ONE process: a `Broker`, one ring publisher and one ring subscriber
 * share an event loop, so the CPU per message is the sum of the three roles with no scheduler
 * noise between processes, and one runtime's profile covers all of it. The way to compare the
 * runtimes' per-message cost layer by layer (it does not measure throughput between processes:
 * bench/broker_cpu.ts and `npm run bench` do).
 *
 *   bun bench/inproc_path.ts [--size 64] [--count 500000] [--runs 3]
 *   deno run -A bench/inproc_path.ts ...
 *   bun --cpu-prof-md --cpu-prof-dir=DIR bench/inproc_path.ts   (Bun's profile, as Markdown)
 *
 * One JSON line per run: µs of process CPU per message (all roles) and msgs/s.
 * @module
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { Broker, connect, parseConfig } from "../mod.ts";

const { values } = parseArgs({
  options: {
    size: { type: "string", default: "64" },
    count: { type: "string", default: "500000" },
    runs: { type: "string", default: "3" },
  },
});
const size = Number(values.size);
const count = Number(values.count);
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
/** Messages per awaited publish (the publisher's backpressure point, as in broker_cpu.ts). */
const PUB_BATCH = 1024;

const cpuMicros = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

async function run() {
  const dir = mkdtempSync(join(tmpdir(), "vbus-inproc-"));
  const socket = join(dir, "broker.sock");
  const broker = new Broker(parseConfig(JSON.stringify({ listen: socket, vms: [] })));
  await broker.start();
  try {
    const sub = await connect({ server: socket, shm: true, reconnect: false });
    const pub = await connect({ server: socket, shm: true, reconnect: false });
    if (sub.dataPath !== "ring" || pub.dataPath !== "ring") throw new Error("expected rings");
    let got = 0;
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => (resolveDone = r));
    sub.subscribe<Uint8Array>("inproc.bench", {
      callback: (_e, m) => {
        if ((m.data as Uint8Array).length !== size) throw new Error("bad message");
        if (++got === count) resolveDone();
      },
    });
    await sub.flush();
    await pub.flush();
    const payload = new Uint8Array(size).fill(7);
    const cpu0 = cpuMicros();
    const t0 = performance.now();
    for (let i = 0; i < count; i++) {
      const p = pub.publish("inproc.bench", payload);
      if (i % PUB_BATCH === PUB_BATCH - 1) await p;
    }
    await pub.flush();
    const deadline = setTimeout(() => resolveDone(), 120_000);
    await done;
    clearTimeout(deadline);
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuMicros() - cpu0;
    await Promise.all([sub.close(), pub.close()]);
    return {
      runtime: RUNTIME,
      size,
      count,
      delivered: got,
      cpuUsPerMsg: +(cpu / got).toFixed(3),
      msgsPerSec: Math.round(got / seconds),
    };
  } finally {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

for (let i = 0; i < Number(values.runs); i++) console.log(JSON.stringify(await run()));
process.exit(0);

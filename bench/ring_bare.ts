/**
 * The bare ring ceiling: one producer process and one consumer process over a /dev/shm
 * region, no codec, no broker. The producer copies a payload into each claimed slot and
 * stamps a sequence number; the consumer checks the sequence. Both park on futex (consumer
 * waits for data, producer waits for space) after a short spin, as the real bus will.
 *
 * Usage (either runtime runs the orchestrator; children run the runtimes asked for):
 *   node_modules/.bin/bun bench/ring_bare.ts
 *   node_modules/.bin/deno run -A bench/ring_bare.ts --sizes 64,65536 --pairs bun:bun,deno:deno
 * Options: --sizes 64,65536  --pairs PRODUCER:CONSUMER,...  --count N (per size; default
 * 2,000,000 small / 2 GiB worth of large)  --sleep sync|async (Deno: blocking futex or
 * nonblocking; Bun is always blocking)  --region-mib 16  --spin 256  --json
 *
 * @module
 */
import { spawn } from "node:child_process";
import { unlinkSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { futexWait, futexWaitSync, futexWake, mapShared, runtime } from "../ffi/mod.ts";
import { Doorbell, Parker, type SleepFn } from "../src/ring/doorbell.ts";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import { RingConsumer, RingProducer } from "../src/ring/ring.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SELF = fileURLToPath(import.meta.url);

function args(): Map<string, string> {
  const a = process.argv.slice(2);
  const m = new Map<string, string>();
  for (let i = 0; i < a.length; i++) {
    if (a[i].startsWith("--")) {
      const key = a[i].slice(2);
      const v = a[i + 1] !== undefined && !a[i + 1].startsWith("--") ? a[++i] : "true";
      m.set(key, v);
    }
  }
  return m;
}

function sleeper(mode: string): SleepFn {
  if (mode === "async") return futexWait;
  return (w, i, e, ms) => futexWaitSync(w, i, e, ms);
}

async function producer(
  path: string,
  regionBytes: number,
  size: number,
  count: number,
  mode: string,
  spin: number,
) {
  const m = await mapShared(path, regionBytes);
  const region = attachRegion(m.bytes, "guest");
  const p = new RingProducer(m.bytes, region.tx);
  const bell = new Doorbell(m.bytes, region.tx, (w, i) => futexWake(w, i, 1));
  const space = new Parker(m.bytes, region.tx, sleeper(mode), {
    sleeper: "producer",
    spinIterations: spin,
    sliceMs: 20,
  });
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = i & 0xff;
  const bytes = m.bytes;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let fullWaits = 0;
  const t0 = performance.now();
  for (let seq = 0; seq < count;) {
    const at = p.tryClaim(size);
    if (at < 0) {
      bell.notify();
      fullWaits++;
      await space.waitForData(() => p.canClaim(size));
      continue;
    }
    bytes.set(payload, at);
    dv.setUint32(at, seq, true);
    p.commit();
    bell.notify();
    seq++;
  }
  const secs = (performance.now() - t0) / 1000;
  console.log(
    JSON.stringify({
      role: "producer",
      runtime,
      secs,
      rings: bell.rings,
      fullWaits,
      spaceParks: space.parks,
    }),
  );
  m.unmap();
}

async function consumer(
  path: string,
  regionBytes: number,
  size: number,
  count: number,
  mode: string,
  spin: number,
) {
  const m = await mapShared(path, regionBytes);
  const region = attachRegion(m.bytes, "host");
  const c = new RingConsumer(m.bytes, region.rx);
  const parker = new Parker(m.bytes, region.rx, sleeper(mode), {
    spinIterations: spin,
    sliceMs: 20,
  });
  const spaceBell = new Doorbell(m.bytes, region.rx, (w, i) => futexWake(w, i, 1), "producer");
  const dv = new DataView(m.bytes.buffer, m.bytes.byteOffset, m.bytes.byteLength);
  let next = 0, t0 = 0;
  const handler = (_b: Uint8Array, off: number, len: number) => {
    if (len !== size || dv.getUint32(off, true) !== next) {
      throw new Error(`bad record ${next}: len ${len} seq ${dv.getUint32(off, true)}`);
    }
    if (next === 0) t0 = performance.now();
    next++;
  };
  while (next < count) {
    const n = c.poll(handler, 4096);
    if (n > 0) spaceBell.notify();
    else await parker.waitForData(() => c.hasData());
  }
  const secs = (performance.now() - t0) / 1000;
  const msgs = (count - 1) / secs;
  console.log(JSON.stringify({
    role: "consumer",
    runtime,
    secs,
    msgsPerSec: msgs,
    mbPerSec: (msgs * size) / 1e6,
    parks: parker.parks,
    spaceRings: spaceBell.rings,
  }));
  m.unmap();
}

function run(bin: string, argv: string[]): Promise<Record<string, number | string>> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, argv, {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, VBUS_BENCH_CHILD: "1" },
    });
    let out = "";
    child.stdout!.on("data", (d) => (out += d));
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`${bin} ${argv.join(" ")} exited ${code}`));
      resolve(JSON.parse(out.trim().split("\n").pop()!));
    });
  });
}

function childCmd(rt: string, role: string, extra: string[]): [string, string[]] {
  const bin = `${ROOT}node_modules/.bin/${rt}`;
  return rt === "deno"
    ? [bin, ["run", "-A", SELF, "--role", role, ...extra]]
    : [bin, [SELF, "--role", role, ...extra]];
}

async function orchestrate(a: Map<string, string>) {
  const sizes = (a.get("sizes") ?? "64,65536").split(",").map(Number);
  const pairs = (a.get("pairs") ?? "bun:bun,deno:deno,deno:bun,bun:deno").split(",");
  const mode = a.get("sleep") ?? "sync";
  const spin = a.get("spin") ?? "256";
  const regionBytes = Number(a.get("region-mib") ?? 16) << 20;
  const rows: Record<string, unknown>[] = [];
  for (const size of sizes) {
    const count = Number(
      a.get("count") ?? (size <= 1024 ? 2_000_000 : Math.max(1000, Math.floor((2 << 30) / size))),
    );
    for (const pair of pairs) {
      const [prt, crt] = pair.split(":");
      const path = `/dev/shm/vbus-bench-${process.pid}`;
      const m = await mapShared(path, regionBytes, { create: true });
      const region = initRegion(m.bytes);
      const extra = [
        "--path",
        path,
        "--region",
        String(regionBytes),
        "--size",
        String(size),
        "--count",
        String(count),
        "--sleep",
        mode,
        "--spin",
        spin,
      ];
      try {
        const cons = run(...childCmd(crt, "consumer", extra));
        const prod = run(...childCmd(prt, "producer", extra));
        const [c, p] = await Promise.all([cons, prod]);
        const row = {
          size,
          pair: `${prt}->${crt}`,
          count,
          msgsPerSec: Math.round(c.msgsPerSec as number),
          mbPerSec: Math.round(c.mbPerSec as number),
          dataRings: p.rings,
          consumerParks: c.parks,
          producerFullWaits: p.fullWaits,
          spaceRings: c.spaceRings,
          ringCapacity: region.rx.capacity,
        };
        rows.push(row);
        if (!a.has("json")) {
          console.log(
            `${String(size).padStart(6)} B  ${row.pair.padEnd(10)} ${
              String(row.msgsPerSec).padStart(9)
            } msgs/s ` +
              `${
                String(row.mbPerSec).padStart(6)
              } MB/s  rings ${row.dataRings} parks ${row.consumerParks} ` +
              `full-waits ${row.producerFullWaits}`,
          );
        }
      } finally {
        m.unmap();
        unlinkSync(path);
      }
    }
  }
  if (a.has("json")) console.log(JSON.stringify(rows, null, 2));
}

const a = args();
const role = a.get("role");
if (
  (process.env.VBUS_BENCH_CHILD || role !== undefined) && role !== "producer" && role !== "consumer"
) {
  // Guard: a child must never orchestrate (that would spawn children recursively).
  console.error(`ring_bare child started without a valid --role (${role}); refusing`);
  process.exit(2);
}
if (role) {
  const f = role === "producer" ? producer : consumer;
  await f(
    a.get("path")!,
    Number(a.get("region")),
    Number(a.get("size")),
    Number(a.get("count")),
    a.get("sleep") ?? "sync",
    Number(a.get("spin") ?? 256),
  );
} else {
  await orchestrate(a);
}

// Doorbell / parking tests: no lost wake-up within one process (promise doorbell, as over a
// virtio-serial port) and across two processes of different runtimes (futex).
// Run: `deno test -A tests/park_test.ts` / `bun test tests/park_test.ts`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { unlinkSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { futexWait, FutexWaiter, futexWake, mapShared, runtime } from "../ffi/mod.ts";
import type { SleepFn } from "../src/ring/doorbell.ts";
import { Doorbell, Parker } from "../src/ring/doorbell.ts";
import { initRegion } from "../src/ring/region.ts";
import { RingConsumer, RingProducer } from "../src/ring/ring.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const OTHER = runtime === "deno" ? "bun" : "deno";

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("park/unpark within one process: promise doorbell, every message arrives, no lost wake-up", async () => {
  const bytes = new Uint8Array(1 << 16);
  const region = initRegion(bytes, { outboundCapacity: 4096, inboundCapacity: 4096 });
  const producer = new RingProducer(bytes, region.outbound);
  const consumer = new RingConsumer(bytes, region.outbound);
  // A "port": ring() posts a frame; sleep() resolves on the next frame or the timeout.
  let waiter: (() => void) | null = null;
  let frames = 0;
  const bell = new Doorbell(bytes, region.outbound, () => {
    frames++;
    const w = waiter;
    waiter = null;
    // deliver the frame asynchronously, like a port read completing
    setTimeout(() => w?.(), 0);
  });
  let timeouts = 0;
  const parker = new Parker(bytes, region.outbound, (word, index, expected, timeoutMs) => {
    if (Atomics.load(word, index) !== expected) return "not-equal";
    return new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        timeouts++;
        waiter = null;
        resolve();
      }, timeoutMs);
      waiter = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }, { spinIterations: 16, sliceMs: 3000 });

  const N = 20000;
  const rnd = mulberry32(42);
  const msg = new Uint8Array(12);
  const mv = new DataView(msg.buffer);
  const produce = (async () => {
    let seq = 0;
    while (seq < N) {
      const burst = 1 + Math.floor(rnd() * 20);
      for (let i = 0; i < burst && seq < N; i++) {
        mv.setUint32(0, seq, true);
        if (!producer.tryWrite(msg)) break;
        seq++;
      }
      bell.notify();
      // yield to the consumer: sometimes a macrotask, sometimes a microtask
      if (rnd() < 0.5) await new Promise((r) => setTimeout(r, 0));
      else await null;
    }
  })();
  let next = 0;
  const t0 = performance.now();
  while (next < N) {
    const n = consumer.poll((b, off, len) => {
      assert.equal(len, 12);
      assert.equal(new DataView(b.buffer, b.byteOffset).getUint32(off, true), next);
      next++;
    }, 256);
    if (n === 0) await parker.waitForData(() => consumer.hasData(), 10000);
    assert.ok(performance.now() - t0 < 30000, "took too long: lost wake-up?");
  }
  await produce;
  assert.equal(next, N);
  assert.equal(timeouts, 0, "a sleep ran into its timeout while data was pending: lost wake-up");
  assert.ok(parker.parks > 100, `consumer parked only ${parker.parks} times`);
  assert.equal(frames, bell.rings);
  console.log(
    `  in-process: ${N} msgs, ${parker.parks} parks, ${bell.rings} rings / ${bell.notifies} notifies, ` +
      `${parker.spinHits} spin hits, ${(performance.now() - t0).toFixed(0)} ms`,
  );
});

test(`park/unpark across processes: ${OTHER} producer, ${runtime} consumer, futexWait`, async () => {
  await crossProcess("futexWait", () => ({ sleep: futexWait, close: async () => {} }));
});

test(`park/unpark across processes: ${OTHER} producer, ${runtime} consumer, FutexWaiter (Worker)`, async () => {
  const waiter = new FutexWaiter();
  await waiter.ready;
  await crossProcess(
    "FutexWaiter",
    () => ({ sleep: (w, i, e, ms) => waiter.wait(w, i, e, ms), close: () => waiter.close() }),
  );
});

test("FutexWaiter: the event loop keeps running while it sleeps; a wake from a timer ends the wait", async () => {
  const path = `/dev/shm/vbus-test-waiter-${process.pid}`;
  const m = await mapShared(path, 4096, { create: true });
  const words = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 1024);
  const waiter = new FutexWaiter();
  try {
    // A blocking wait could not let this timer run: it would sleep the full 3 s.
    const timer = setTimeout(() => {
      Atomics.add(words, 5, 1);
      futexWake(words, 5, 1);
    }, 20);
    const t0 = performance.now();
    const r = await waiter.wait(words, 5, 0, 3000);
    const ms = performance.now() - t0;
    clearTimeout(timer);
    // "not-equal" when the worker started only after the timer had moved the word on.
    assert.ok(r === "ok" || r === "not-equal", r);
    assert.ok(ms < 2500, `woken after ${ms.toFixed(0)} ms`);
    assert.equal(await waiter.wait(words, 5, 0, 3000), "not-equal", "the word already moved on");
    assert.equal(await waiter.wait(words, 6, 0, 30), "timed-out");
    await assert.rejects(
      Promise.all([waiter.wait(words, 7, 0, 50), waiter.wait(words, 7, 0, 50)]),
      /one wait at a time/,
    );
  } finally {
    await waiter.close();
    m.unmap();
    unlinkSync(path);
  }
  assert.equal(await waiter.wait(words, 5, 1, 10), "not-equal", "a closed waiter never sleeps");
});

type MakeSleeper = (words: Int32Array) => { sleep: SleepFn; close(): Promise<void> };

async function crossProcess(label: string, makeSleeper: MakeSleeper) {
  const path = `/dev/shm/vbus-test-park-${label}-${process.pid}`;
  const m = await mapShared(path, 1 << 20, { create: true });
  const sleeper = makeSleeper(
    new Int32Array(m.bytes.buffer, m.bytes.byteOffset, m.bytes.byteLength >> 2),
  );
  try {
    const region = initRegion(m.bytes, { outboundCapacity: 1 << 16, inboundCapacity: 1 << 16 });
    const consumer = new RingConsumer(m.bytes, region.rx);
    let timeouts = 0;
    let started = false;
    const parker = new Parker(m.bytes, region.rx, async (w, i, e, ms) => {
      const r = await sleeper.sleep(w, i, e, ms);
      if (r === "timed-out" && started) timeouts++;
      return r;
    }, { spinIterations: 64, sliceMs: 2000 });
    const N = 30000;
    const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
    // The child: bursts of 1..32 records, then a random pause of 0..300 us (spinning) so the
    // consumer parks often. Rings through futexWake when the consumer announced it parked.
    const code = `
      import { mapShared, futexWake } from ${url("../ffi/mod.ts")};
      import { attachRegion } from ${url("../src/ring/region.ts")};
      import { RingProducer } from ${url("../src/ring/ring.ts")};
      import { Doorbell } from ${url("../src/ring/doorbell.ts")};
      const m = await mapShared(${JSON.stringify(path)}, 1 << 20);
      const region = attachRegion(m.bytes, "guest");
      const p = new RingProducer(m.bytes, region.tx);
      const bell = new Doorbell(m.bytes, region.tx, (w, i) => futexWake(w, i, 1));
      let a = 7;
      const rnd = () => { a = (a * 1103515245 + 12345) & 0x7fffffff; return a / 0x7fffffff; };
      const dv = new DataView(m.bytes.buffer, m.bytes.byteOffset);
      let seq = 0, fullSpins = 0;
      while (seq < ${N}) {
        const burst = 1 + Math.floor(rnd() * 32);
        for (let i = 0; i < burst && seq < ${N}; i++) {
          const at = p.tryClaim(16);
          if (at < 0) { fullSpins++; break; }
          dv.setUint32(at, seq, true);
          p.commit();
          seq++;
        }
        bell.notify();
        const until = performance.now() + rnd() * 0.3;
        while (performance.now() < until) {}
      }
      console.log(JSON.stringify({ rings: bell.rings, notifies: bell.notifies, fullSpins }));
      m.unmap();
    `;
    const bin = `${ROOT}node_modules/.bin/${OTHER}`;
    const args = OTHER === "deno" ? ["eval", "--ext=ts", code] : ["-e", code];
    const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stdout!.on("data", (d) => (out += d));
    child.stderr!.on("data", (d) => (err += d));
    const exited = new Promise<number>((r) => child.on("close", (c) => r(c ?? -1)));
    const killer = setTimeout(() => child.kill("SIGKILL"), 60000);

    let next = 0;
    const t0 = performance.now();
    try {
      while (next < N) {
        const n = consumer.poll((b, off, len) => {
          if (len !== 16) throw new Error(`bad length ${len}`);
          const v = b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24);
          if (v !== next) throw new Error(`expected ${next}, got ${v}`);
          next++;
          started = true;
        }, 1024);
        if (n === 0) await parker.waitForData(() => consumer.hasData(), 1000);
        if (performance.now() - t0 > 60000) throw new Error(`stalled at ${next}/${N}: ${err}`);
      }
    } finally {
      clearTimeout(killer);
    }
    const code_ = await exited;
    assert.equal(code_, 0, err);
    const stats = JSON.parse(out.trim().split("\n").pop()!);
    assert.equal(next, N);
    assert.equal(
      timeouts,
      0,
      "consumer slept into a timeout while the producer was active: lost wake-up",
    );
    assert.ok(parker.parks > 50, `consumer parked only ${parker.parks} times`);
    console.log(
      `  cross-process (${label}): ${N} msgs, ${parker.parks} parks, ${stats.rings} rings / ${stats.notifies} notifies, ` +
        `${parker.spinHits} spin hits, ${
          (performance.now() - t0).toFixed(0)
        } ms (incl. child start)`,
    );
  } finally {
    await sleeper.close();
    m.unmap();
    unlinkSync(path);
  }
}

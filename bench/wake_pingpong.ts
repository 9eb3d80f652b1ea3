/**
 * What one wake-up costs between two processes, without the bus: ping-pong round trips where
 * each side sleeps until the other wakes it, by each mechanism vbus could use on the host.
 *
 *   socket        a byte over a unix socket (what a DOORBELL frame costs at the bottom)
 *   futex-worker  FUTEX_WAKE, the sleeper's Worker in FUTEX_WAIT, Atomics.waitAsync (FutexWaiter)
 *   futex-async   Deno only: FUTEX_WAIT as a `nonblocking` FFI call
 *   futex-block   FUTEX_WAIT blocking the JS thread (the floor; unusable with an event loop)
 *
 * Both processes run the same runtime. Writes bench/results/wake/pingpong.md.
 *
 *   bun bench/wake_pingpong.ts [--count 5000]
 * @module
 */
import net from "node:net";
import { spawn } from "node:child_process";
import { mkdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";

const { values } = parseArgs({
  options: {
    role: { type: "string" },
    mode: { type: "string" },
    path: { type: "string" },
    count: { type: "string", default: "5000" },
  },
});
const SELF = fileURLToPath(import.meta.url);
const ROOT = join(SELF, "..", "..");
const COUNT = Number(values.count);
const WARMUP = 500;
const STOP = 32; // word index: the echo side exits when it is non-zero

type Mode = "socket" | "futex-worker" | "futex-async" | "futex-block";

/** Round trips measured by the "ping" side; the "pong" side echoes. */
async function futexSide(role: string, mode: Mode, path: string): Promise<number[]> {
  const ffi = await import("../ffi/mod.ts");
  const m = ffi.mapSharedSync(path, 4096, { create: role === "ping" });
  const w = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 64);
  const mine = role === "ping" ? 16 : 0;
  const theirs = role === "ping" ? 0 : 16;
  const waiter = mode === "futex-worker" ? new ffi.FutexWaiter() : null;
  await waiter?.ready;
  const waitChange = async (v: number) => {
    while (Atomics.load(w, mine) === v && Atomics.load(w, STOP) === 0) {
      if (waiter) await waiter.wait(w, mine, v, 100);
      else if (mode === "futex-async") await ffi.futexWait(w, mine, v, 100);
      else ffi.futexWaitSync(w, mine, v, 100);
    }
  };
  const poke = () => {
    Atomics.add(w, theirs, 1);
    ffi.futexWake(w, theirs, 1);
  };
  const samples: number[] = [];
  if (role === "ping") {
    await new Promise((r) => setTimeout(r, 300)); // the pong side is attached
    for (let k = 0; k < WARMUP + COUNT; k++) {
      const v = Atomics.load(w, mine);
      const t0 = performance.now();
      poke();
      await waitChange(v);
      if (k >= WARMUP) samples.push((performance.now() - t0) * 1000);
    }
    Atomics.store(w, STOP, 1);
    poke();
  } else {
    let v = 0;
    for (;;) {
      await waitChange(v);
      if (Atomics.load(w, STOP) !== 0) break;
      v = Atomics.load(w, mine);
      poke();
    }
  }
  await waiter?.close();
  m.unmap();
  return samples;
}

async function socketSide(role: string, path: string): Promise<number[]> {
  if (role === "pong") {
    const c = net.connect(path);
    c.on("data", () => c.write("y"));
    await new Promise<void>((r) => c.on("close", () => r()));
    return [];
  }
  const samples: number[] = [];
  await new Promise<void>((resolve) => {
    const server = net.createServer((s) => {
      let t0 = 0;
      let k = 0;
      s.on("data", () => {
        if (k++ >= WARMUP) samples.push((performance.now() - t0) * 1000);
        if (k === WARMUP + COUNT) {
          s.end();
          server.close();
          resolve();
          return;
        }
        t0 = performance.now();
        s.write("x");
      });
      t0 = performance.now();
      s.write("x");
    });
    server.listen(path, () => process.stdout.write("listening\n"));
  });
  return samples;
}

if (values.role) {
  const mode = values.mode as Mode;
  const samples = mode === "socket"
    ? await socketSide(values.role, values.path!)
    : await futexSide(values.role, mode, values.path!);
  if (values.role === "ping") {
    samples.sort((a, b) => a - b);
    const q = (p: number) => samples[Math.min(samples.length - 1, Math.floor(p * samples.length))];
    process.stdout.write(JSON.stringify({ p50: q(0.5), p90: q(0.9), p99: q(0.99) }) + "\n");
  }
  process.exit(0);
}

// Orchestrator: every mode in both runtimes, one pair of processes each.
const dir = join(tmpdir(), `vbus-wake-${process.pid}`);
mkdirSync(dir, { recursive: true });
const runtimes = {
  bun: join(ROOT, "node_modules/.bin/bun"),
  deno: join(ROOT, "node_modules/.bin/deno"),
};
function run(rt: "bun" | "deno", role: string, mode: Mode, path: string) {
  const args = ["--role", role, "--mode", mode, "--path", path, "--count", String(COUNT)];
  const child = rt === "bun"
    ? spawn(runtimes.bun, [SELF, ...args], { stdio: ["ignore", "pipe", "inherit"] })
    : spawn(runtimes.deno, ["run", "-A", SELF, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout!.on("data", (d) => out += d);
  const exited = new Promise<number>((r) => child.on("close", (c) => r(c ?? -1)));
  return { out: () => out, exited };
}
const rows: string[] = [];
for (const rt of ["bun", "deno"] as const) {
  for (const mode of ["socket", "futex-worker", "futex-async", "futex-block"] as Mode[]) {
    if (mode === "futex-async" && rt !== "deno") continue; // Bun's futexWait blocks: same as futex-block
    const path = mode === "socket" ? join(dir, "pp.sock") : `/dev/shm/vbus-wake-pp-${process.pid}`;
    try {
      unlinkSync(path);
    } catch { /* fresh */ }
    const ping = run(rt, "ping", mode, path);
    if (mode === "socket") {
      while (!ping.out().includes("listening")) await new Promise((r) => setTimeout(r, 10));
    } else await new Promise((r) => setTimeout(r, 100));
    const pong = run(rt, "pong", mode, path);
    await Promise.all([ping.exited, pong.exited]);
    const line = ping.out().trim().split("\n").pop()!;
    const r = JSON.parse(line) as { p50: number; p90: number; p99: number };
    const f = (x: number) => x.toFixed(1);
    rows.push(`| ${rt} | ${mode} | ${f(r.p50)} | ${f(r.p90)} | ${f(r.p99)} |`);
    console.log(rows[rows.length - 1]);
    if (mode !== "socket") rmSync(path, { force: true });
  }
}
rmSync(dir, { recursive: true, force: true });
const md = [
  "# One wake-up between two processes: round trips (two wake-ups each), microseconds",
  "",
  `Command: \`bun bench/wake_pingpong.ts --count ${COUNT}\`, ${
    new Date().toISOString()
  }, ${COUNT} round trips after ${WARMUP} warm-up.`,
  "",
  "| runtime | mechanism | p50 | p90 | p99 |",
  "|---|---|---|---|---|",
  ...rows,
  "",
];
const out = join(ROOT, "bench", "results", "wake");
mkdirSync(out, { recursive: true });
writeFileSync(join(out, "pingpong.md"), md.join("\n"));
console.log(`wrote ${join(out, "pingpong.md")}`);

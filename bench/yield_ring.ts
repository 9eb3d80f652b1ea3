/**
 * What the scheduler does to pollers when there are more busy processes than cores, without
 * the bus: N processes (default 3: a requester, a broker and a replier) pass a token round a
 * ring through one shared word, each waiting for its turn in an event-loop poll, as vbus's
 * ring receive loops do. One round is the token's trip through all of them.
 *
 *   immediate  poll, then setImmediate (yield to the event loop only)
 *   yield      poll, sched_yield (ffi/ `yieldCpu`), poll, then setImmediate
 *
 * On two cores with three processes, `immediate` keeps a waiting process on its core until the
 * time slice ends while the one it waits for is runnable; `yield` hands the core over.
 *
 *   node_modules/.bin/bun bench/yield_ring.ts [--procs 3] [--rounds 2000] [--runtimes bun,deno]
 *
 * Prints one Markdown row per runtime and mode: p50 and p90 of a round, in microseconds. A round
 * in `immediate` mode takes about 8 ms on two cores, so 2000 rounds take 16 s.
 * @module
 */
import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import process from "node:process";
import { setImmediate } from "node:timers";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { mapSharedSync, yieldCpu } from "../ffi/mod.ts";
import { runtimeCommand } from "./lib/proc.ts";

const { values } = parseArgs({
  options: {
    role: { type: "string" },
    mode: { type: "string", default: "immediate" },
    path: { type: "string" },
    procs: { type: "string", default: "3" },
    rounds: { type: "string", default: "2000" },
    runtimes: { type: "string", default: "bun,deno" },
  },
});
const SELF = fileURLToPath(import.meta.url);
const PROCS = Number(values.procs);
const ROUNDS = Number(values.rounds);
if (!Number.isInteger(PROCS) || PROCS < 2 || PROCS > 16) throw new Error("--procs: 2 to 16");
if (!Number.isInteger(ROUNDS) || ROUNDS < 100) throw new Error("--rounds: at least 100");
/** Word indexes in the shared page: the token, and how many processes are ready. */
const TOKEN = 0;
const READY = 1;
/** A round that takes longer than this ends the run (a stuck process must not hang it). */
const ROUND_LIMIT_MS = 5000;

async function member(index: number, mode: string, path: string) {
  const m = mapSharedSync(path, 4096, { create: false });
  const w = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 16);
  const tick = () => new Promise((r) => setImmediate(r));
  const waitFor = async (v: number) => {
    const until = performance.now() + ROUND_LIMIT_MS;
    while (performance.now() < until) {
      if (Atomics.load(w, TOKEN) === v) return;
      if (mode === "yield") {
        yieldCpu();
        if (Atomics.load(w, TOKEN) === v) return;
      }
      await tick();
    }
    throw new Error(`process ${index}: no token ${v} in ${ROUND_LIMIT_MS} ms`);
  };
  Atomics.add(w, READY, 1);
  for (let i = 0; i < 1000 && Atomics.load(w, READY) < PROCS; i++) await tick();
  const rounds = new Float64Array(ROUNDS);
  for (let r = 0; r < ROUNDS; r++) {
    const base = PROCS * r;
    if (index === 0) {
      const t = performance.now();
      Atomics.store(w, TOKEN, base + 1);
      await waitFor(base + PROCS);
      rounds[r] = (performance.now() - t) * 1000;
    } else {
      await waitFor(base + index);
      Atomics.store(w, TOKEN, base + index + 1);
    }
  }
  if (index === 0) {
    rounds.sort();
    const q = (p: number) => rounds[Math.floor(p * (ROUNDS - 1))];
    process.stdout.write(JSON.stringify({ p50: q(0.5), p90: q(0.9) }) + "\n");
  }
  m.unmap();
}

if (values.role !== undefined) {
  await member(Number(values.role), values.mode!, values.path!);
  process.exit(0);
}

console.log(`| runtime | mode | processes | round p50 (µs) | round p90 (µs) |`);
console.log(`|---|---|---|---|---|`);
for (const rt of values.runtimes!.split(",") as ("bun" | "deno")[]) {
  if (rt !== "bun" && rt !== "deno") throw new Error(`--runtimes: bun or deno, not ${rt}`);
  for (const mode of ["immediate", "yield"]) {
    const path = `/dev/shm/vbus-yield-ring-${process.pid}`;
    mapSharedSync(path, 4096, { create: true }).unmap();
    const children = Array.from({ length: PROCS }, (_, i) => {
      const [cmd, args] = runtimeCommand(rt, SELF, [
        ...["--role", String(i), "--mode", mode, "--path", path],
        ...["--procs", String(PROCS), "--rounds", String(ROUNDS)],
      ]);
      const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout!.on("data", (d) => (out += d));
      return new Promise<string>((r) => child.on("close", () => r(out)));
    });
    const outs = await Promise.all(children);
    rmSync(path, { force: true });
    const line = outs[0].trim().split("\n").pop();
    if (!line) throw new Error(`${rt} ${mode}: no result (a process failed)`);
    const r = JSON.parse(line) as { p50: number; p90: number };
    console.log(`| ${rt} | ${mode} | ${PROCS} | ${r.p50.toFixed(2)} | ${r.p90.toFixed(2)} |`);
  }
}

/**
 * What the per-message path's primitives cost in this runtime: a 64-byte `subarray`, an
 * `Atomics.store` + `Atomics.load`, two byte loads and a store, a 64-byte `set`, each over a
 * shared mapping (ffi/mod.ts, /dev/shm), ordinary heap memory and a SharedArrayBuffer. Run it in
 * both runtimes to see whether a difference between them is in the primitives or above them.
 *
 *   node_modules/.bin/bun bench/js_primitives.ts
 *   node_modules/.bin/deno run -A bench/js_primitives.ts
 *
 * Prints one line per memory kind and round (the second round is the warm one), ns per operation.
 * @module
 */
import { rmSync } from "node:fs";
import process from "node:process";
import { mapSharedSync } from "../ffi/mod.ts";

const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const N = 5_000_000;
const SIZE = 1 << 20;
const ns = (t0: number) => ((performance.now() - t0) / N * 1e6).toFixed(1);

function measure(name: string, b: Uint8Array): void {
  const words = new Int32Array(b.buffer, b.byteOffset, 1024);
  const src = new Uint8Array(64).fill(1);
  let sink = 0;
  let t = performance.now();
  for (let i = 0; i < N; i++) sink += b.subarray(i & 1023, (i & 1023) + 64).length;
  const subarray = ns(t);
  t = performance.now();
  for (let i = 0; i < N; i++) {
    Atomics.store(words, i & 63, i);
    sink += Atomics.load(words, (i + 1) & 63);
  }
  const atomics = ns(t);
  t = performance.now();
  for (let i = 0; i < N; i++) {
    sink += b[i & 0xffff] + b[(i * 7) & 0xffff];
    b[(i * 3) & 0xffff] = i;
  }
  const bytes = ns(t);
  t = performance.now();
  for (let i = 0; i < N; i++) b.set(src, (i & 1023) * 64);
  const set = ns(t);
  if (sink === -1) console.log("unreachable: keeps the loops' results alive");
  console.log(
    `${RUNTIME} ${name}: subarray(64) ${subarray} ns, Atomics store+load ${atomics} ns, ` +
      `2 byte loads + 1 store ${bytes} ns, set(64 B) ${set} ns`,
  );
}

const path = `/dev/shm/vbus-js-primitives-${RUNTIME}-${process.pid}`;
const mapping = mapSharedSync(path, SIZE, { create: true });
try {
  const kinds: [string, Uint8Array][] = [
    ["mapped", mapping.bytes],
    ["heap", new Uint8Array(SIZE)],
    ["SharedArrayBuffer", new Uint8Array(new SharedArrayBuffer(SIZE))],
  ];
  for (let round = 0; round < 2; round++) for (const [name, b] of kinds) measure(name, b);
} finally {
  mapping.unmap();
  rmSync(path, { force: true });
}
process.exit(0);

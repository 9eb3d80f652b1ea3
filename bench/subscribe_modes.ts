/**
 * What a delivery costs by how it is received: a subscription callback (reads the ring slot in
 * place) against an iterated subscription (`for await`, whose messages are copied out of the
 * ring to be the application's to keep). One process: a `Broker`, a publisher and a
 * subscriber connected to it in-process (`connect({ broker })`, each on a ring of its own), N
 * binary messages of SIZE bytes; so CPU per message is the whole path, broker included.
 *
 *   node_modules/.bin/bun bench/subscribe_modes.ts [--count 300000] [--size 64] [--rounds 3]
 *   node_modules/.bin/deno run -A bench/subscribe_modes.ts [same options]
 *
 * Rounds alternate the two modes; prints one JSON line per round and the medians.
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { Broker, connect, createLogger, parseConfig } from "../mod.ts";

const { values } = parseArgs({
  options: {
    count: { type: "string", default: "300000" },
    size: { type: "string", default: "64" },
    rounds: { type: "string", default: "3" },
  },
});
const count = Number(values.count), size = Number(values.size), rounds = Number(values.rounds);
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const TIME_BOUND_MS = 60_000;

type Mode = "callback" | "iterator";

async function round(mode: Mode): Promise<{ msgsPerSec: number; cpuUsPerMsg: number }> {
  const broker = new Broker(parseConfig(JSON.stringify({ vms: [] })), {
    logger: createLogger("broker", { level: "warn" }),
  });
  await broker.start();
  const sub = await connect({ broker, reconnect: false });
  const pub = await connect({ broker, reconnect: false });
  let got = 0;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const check = (data: Uint8Array) => {
    if (data.length !== size) throw new Error(`got ${data.length} bytes, sent ${size}`);
    if (++got === count) done();
  };
  if (mode === "callback") {
    sub.subscribe<Uint8Array>("modes", { callback: (_err, m) => check(m.data) });
  } else {
    const s = sub.subscribe<Uint8Array>("modes");
    void (async () => {
      for await (const m of s) {
        check(m.data);
        if (got === count) break;
      }
    })();
  }
  await sub.flush();
  const payload = new Uint8Array(size).fill(7);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const p = pub.publish("modes", payload);
    if ((i & 1023) === 1023) await p;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    finished,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${got} of ${count} in time`)), TIME_BOUND_MS);
    }),
  ]).finally(() => clearTimeout(timer));
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await pub.close();
  await sub.close();
  await broker.stop();
  return { msgsPerSec: count / seconds, cpuUsPerMsg: (cpu.user + cpu.system) / count };
}

const results: Record<Mode, { msgsPerSec: number; cpuUsPerMsg: number }[]> = {
  callback: [],
  iterator: [],
};
for (let r = 0; r < rounds; r++) {
  for (const mode of ["callback", "iterator"] as const) {
    const res = await round(mode);
    results[mode].push(res);
    console.log(JSON.stringify({ runtime: RUNTIME, mode, size, count, round: r + 1, ...res }));
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const mode of ["callback", "iterator"] as const) {
  console.log(JSON.stringify({
    runtime: RUNTIME,
    mode,
    size,
    median: {
      msgsPerSec: Math.round(median(results[mode].map((x) => x.msgsPerSec))),
      cpuUsPerMsg: Number(median(results[mode].map((x) => x.cpuUsPerMsg)).toFixed(3)),
    },
  }));
}
process.exit(0);

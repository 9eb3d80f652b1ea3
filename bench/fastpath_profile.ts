/**
 * Profile the fast path: a `vbus broker`, one subscriber and one publisher as three processes
 * (host clients on shared-memory rings), N binary messages of SIZE bytes, 1 publisher -> 1
 * subscriber. Prints msgs/s, MB/s and the CPU seconds of each process; with --prof, each
 * process writes a Bun CPU profile in Markdown (`--cpu-prof-md`) to bench/results/profiles/.
 *
 *   bun bench/fastpath_profile.ts [--size 64|obj4] [--count 1000000] [--shm true|false] [--prof]
 *
 * `--size obj4` publishes a small structured value (an object of four fields, bench/lib/values.ts)
 * instead of bytes: msgpackr encodes it in place and the subscriber decodes it.
 *
 * Roles (internal): `broker`, `sub`, `pub` are started by the parent with --role.
 * @module
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { ROOT, RUNTIME_BIN } from "./lib/proc.ts";
import { cpuSeconds, startRole } from "./lib/role_process.ts";
import { STRUCTURED } from "./lib/stats.ts";
import { isStructuredValue, payloadBytes, structuredValue } from "./lib/values.ts";

const { values } = parseArgs({
  options: {
    role: { type: "string" },
    size: { type: "string", default: "64" },
    count: { type: "string", default: "1000000" },
    shm: { type: "string", default: "true" },
    socket: { type: "string" },
    prof: { type: "boolean", default: false },
    seconds: { type: "string", default: "20" },
  },
});
const structured = values.size === "obj4";
const size = structured ? STRUCTURED : Number(values.size);
const label = structured ? "obj4" : `${size}B`;
const count = Number(values.count);
const shm = values.shm !== "false";
const SELF = fileURLToPath(import.meta.url);

if (values.role === "sub" || values.role === "pub") {
  const { connect } = await import("../mod.ts");
  const bus = await connect({ server: values.socket!, shm, reconnect: false });
  if (shm && bus.dataPath !== "ring") throw new Error(`expected ring, got ${bus.dataPath}`);
  if (values.role === "sub") {
    let got = 0;
    let t0 = 0;
    const done = new Promise<void>((resolve) =>
      bus.subscribe<Uint8Array>("prof", {
        callback: (_e, m) => {
          if (got === 0) t0 = performance.now();
          if (structured ? !isStructuredValue(m.data) : (m.data as Uint8Array).length !== size) {
            throw new Error("bad message");
          }
          if (++got === count) resolve();
        },
      })
    );
    await bus.flush();
    process.stdout.write("ready\n");
    await done;
    const s = (performance.now() - t0) / 1000;
    process.stdout.write(JSON.stringify({ got, seconds: s }) + "\n");
  } else {
    const payload = new Uint8Array(payloadBytes(size)).fill(7);
    for (let i = 0; i < count; i++) {
      const p = bus.publish("prof", structured ? structuredValue(i) : payload);
      if ((i & 1023) === 1023) await p;
    }
    await bus.flush();
  }
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

// Parent: start the three processes, time the run, collect CPU per process.
const dir = mkdtempSync(join(tmpdir(), "vbus-prof-"));
const socket = join(dir, "broker.sock");
const profDir = join(ROOT, "bench", "results", "profiles");
if (values.prof) mkdirSync(profDir, { recursive: true });
function start(role: string) {
  const flags = values.prof
    ? [
      "--cpu-prof-md",
      `--cpu-prof-dir=${profDir}`,
      `--cpu-prof-name=${role}-${label}-${shm ? "ring" : "stream"}.md`,
    ]
    : [];
  return startRole(role, RUNTIME_BIN.bun, [
    ...flags,
    SELF,
    "--role",
    role,
    "--socket",
    socket,
    "--size",
    String(values.size),
    "--count",
    String(count),
    "--shm",
    String(shm),
  ]);
}
const broker = start("broker");
await broker.until("ready");
const sub = start("sub");
await sub.until("ready");
const t0 = performance.now();
// The publisher sends at once and prints nothing, so nothing waits for a line from it (a
// timer polling for its "ready" once kept this script alive after the report).
const pub = start("pub");
const timer = setTimeout(() => {
  pub.kill();
  sub.kill();
}, Number(values.seconds) * 1000);
const cpu = { broker: 0, sub: 0, pub: 0 };
const sample = setInterval(() => {
  for (const [k, p] of Object.entries({ broker, sub, pub })) {
    const c = cpuSeconds(p.pid);
    if (!Number.isNaN(c)) cpu[k as keyof typeof cpu] = c;
  }
}, 50);
const [pubCode, subCode] = await Promise.all([pub.exited, sub.exited]);
clearInterval(sample);
clearTimeout(timer);
const wall = (performance.now() - t0) / 1000;
broker.kill("SIGTERM");
const killer = setTimeout(() => broker.kill("SIGKILL"), 5000);
await broker.exited;
clearTimeout(killer);
rmSync(dir, { recursive: true, force: true });
const line = sub.output().trim().split("\n").pop()!;
const result = line.startsWith("{") ? JSON.parse(line) : { got: 0, seconds: wall };
const rate = result.got / result.seconds;
const report = {
  path: shm ? "ring" : "stream",
  size: label,
  count,
  delivered: result.got,
  msgsPerSec: Math.round(rate),
  mbPerSec: Math.round((rate * payloadBytes(size)) / 1e6),
  cpuSeconds: cpu,
  exit: { pub: pubCode, sub: subCode },
};
console.log(JSON.stringify(report));
if (values.prof) {
  writeFileSync(
    join(profDir, `summary-${label}-${shm ? "ring" : "stream"}.json`),
    JSON.stringify(report, null, 2),
  );
}
process.exit(0); // as broker_cpu.ts: the report is out, whatever handle a runtime still holds

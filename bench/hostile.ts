/**
 * The hostile-guest bench: every attack of issue 9, one after another, each against a fresh
 * `vbus broker` process, while innocent VMs go on working; it measures what each attack costs
 * them. Per attack: the victims' request/reply round trips (a guest on its rings and a guest on
 * the port stream, one request every 10 ms to a host service, each timed from when it was due),
 * numbered pub/sub streams checked for loss, the broker's RSS before and at peak, whether the
 * broker survived, and what the broker's stats counted for the attacker.
 *
 * Processes: the broker (`--runtime`), the innocent clients (`bench/lib/hostile_legit.ts`), the
 * harness with the attackers (this process; the ring flooder of item 10 runs in its own). One
 * attack at a time: the machine has 2 cores.
 *
 * ```sh
 * node_modules/.bin/bun bench/hostile.ts                          # ~2.5 min, bench/results/hostile/latest.md
 * node_modules/.bin/bun bench/hostile.ts --runtime deno --tag deno  # Deno broker: latest-deno.md
 * node_modules/.bin/bun bench/hostile.ts --only scribble,9 --seconds 3
 * ```
 *
 * Exit code 1 when the broker died, a victim lost a stream message, or an attack could not be
 * run; 0 otherwise.
 *
 * @example
 * ```ts
 * // node_modules/.bin/deno run -A bench/hostile.ts --only ping-flood
 * ```
 * @module
 */
import { spawnSync } from "node:child_process";
import {
  closeSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { type Bus, connect } from "../src/client/bus.ts";
import type { BrokerStats } from "../src/broker/stats.ts";
import { planRegion } from "../src/ring/layout.ts";
import { RawChardev } from "../tests/fixtures/raw_chardev.ts";
import { MiB, RssWatch } from "../tests/fixtures/measure.ts";
import { ROOT, RUNTIME_BIN } from "./lib/proc.ts";
import { BrokerProcess, type Runtime } from "./lib/soak_broker.ts";
import { LegitProcess, type LegitResult } from "./lib/hostile_legit.ts";
import { type Attack, type AttackContext, ATTACKS, BENCH_LIMITS } from "./lib/hostile_attacks.ts";
import {
  type AttackRow,
  type HostileReport,
  renderJson,
  renderMarkdown,
  statsDelta,
  summarizeRtt,
} from "./lib/hostile_report.ts";

const USAGE = `usage: bench/hostile.ts [options]
  --seconds S     length of each attack's measured window (default 5)
  --only a,b      attacks to run, by name or issue-9 item number (the baseline always runs)
  --runtime R     runtime of the broker process: bun (default) or deno
  --out DIR       where latest.md / latest.json go (default bench/results/hostile)
  --tag T         write latest-T.md / latest-T.json instead
  --list          print the attacks and exit
attacks: ${ATTACKS.map((a) => `${a.name} (${a.item})`).join(", ")}`;

/** Each VM's region: small, like the tests' (a 1 MiB inbound ring). */
const SHM_SIZE = 4 * 1024 * 1024;
const PACE_MS = 10;
const STREAM_EVERY_MS = 10;

const cleanups = new Set<() => void>();

function log(line: string) {
  process.stderr.write(line + "\n");
}

function createShmFile(path: string) {
  const fd = openSync(path, "w", 0o600);
  try {
    ftruncateSync(fd, SHM_SIZE);
  } finally {
    closeSync(fd);
  }
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Run one attack against a fresh broker; never throws (a failure becomes the row's error). */
async function runAttack(attack: Attack, seconds: number, runtime: Runtime): Promise<AttackRow> {
  const started = performance.now();
  const dir = mkdtempSync(join(tmpdir(), "vbus-hb-"));
  const listen = join(dir, "broker.sock");
  const shmPrefix = `vbus-hb-${process.pid}-${attack.name}-`;
  const shmOf = (name: string) => `/dev/shm/${shmPrefix}${name}`;
  const socketOf = (name: string) => join(dir, `${name}.sock`);
  const limits = { ...BENCH_LIMITS, ...attack.limits };
  const row: AttackRow = {
    name: attack.name,
    item: attack.item,
    title: attack.title,
    config: [
      ...Object.entries(attack.limits ?? {}).map(([k, v]) => `limits.${k} = ${v}`),
      ...attack.vms.filter((v) => v.permissions).map((v) =>
        `${v.name} permissions ${JSON.stringify(v.permissions)}`
      ),
    ].join(", "),
    ok: false,
    rtt: {},
    lost: 0,
    rssBeforeMiB: 0,
    rssPeakMiB: 0,
    brokerSurvived: false,
    brokerLog: {},
    attacker: {},
    victims: {},
    observed: {},
    wallS: 0,
    load1: 0,
  };
  const peerDevs = new Map<string, RawChardev>();
  const rawDevs = new Map<string, RawChardev>();
  const shmFiles: string[] = [];
  let legit: LegitProcess | undefined;
  let broker: BrokerProcess | undefined;
  let statsBus: Bus | undefined;
  let watch: RssWatch | undefined;
  let state: unknown;
  const killAll = () => {
    broker?.killSync();
    legit?.kill();
  };
  cleanups.add(killAll);
  try {
    const victimVms = [
      { name: "vring", socket: socketOf("vring"), shm: shmOf("vring") },
      { name: "vport", socket: socketOf("vport") },
    ];
    for (const v of [...victimVms, ...attack.vms]) {
      const shm = "shm" in v && (v.shm === true || typeof v.shm === "string");
      if (shm) {
        createShmFile(shmOf(v.name));
        shmFiles.push(shmOf(v.name));
      }
    }
    // Attackers' chardevs listen before the broker starts: it connects to them as to QEMU.
    for (const v of attack.vms) {
      if (v.chardev === "peer") {
        peerDevs.set(v.name, await RawChardev.listen(socketOf(v.name)));
      } else {
        const reads = v.reads ?? true;
        rawDevs.set(
          v.name,
          await RawChardev.listen(socketOf(v.name), { reads, keepMessages: false }),
        );
      }
    }
    legit = LegitProcess.spawn({
      listen,
      vms: victimVms,
      paceMs: PACE_MS,
      streamEveryMs: STREAM_EVERY_MS,
      serviceEvents: attack.serviceEvents,
    });
    await within(legit.listening, 30_000, "the victims' VMs to listen");
    const config = {
      listen,
      limits,
      vms: [
        ...victimVms.map((v) => ({
          name: v.name,
          socket: v.socket,
          ...(v.shm ? { shm: v.shm, shmSize: SHM_SIZE } : {}),
        })),
        ...attack.vms.map((v) => ({
          name: v.name,
          socket: socketOf(v.name),
          ...(v.shm ? { shm: shmOf(v.name), shmSize: SHM_SIZE } : {}),
          ...(v.permissions ? { permissions: v.permissions } : {}),
        })),
      ],
    };
    const configFile = join(dir, "broker.json");
    writeFileSync(configFile, JSON.stringify(config, null, 2));
    broker = new BrokerProcess(runtime, configFile, listen, dir, shmPrefix);
    await broker.start(1, performance.now());
    for (const dev of peerDevs.values()) await dev.nextPeer(1, 30_000);
    for (const dev of rawDevs.values()) await dev.connected(30_000);
    await within(legit.ready, 60_000, "the victims to connect and warm up");
    statsBus = await connect({ server: listen, shm: false, reconnect: false, timeout: 10_000 });
    const stats = async (timeoutMs = 5000) =>
      (await statsBus!.request<BrokerStats>("$VBUS.STATS", null, { timeout: timeoutMs })).data;
    const before = await stats();
    const logBefore = new Map(broker.logCounts);
    watch = new RssWatch(broker.pid!, 50);
    const ctx: AttackContext = {
      listen,
      seconds,
      deadline: Number.POSITIVE_INFINITY,
      shmSize: SHM_SIZE,
      ringCapacity: planRegion(SHM_SIZE).inboundCapacity,
      peerDev: (n) => peerDevs.get(n) ?? fail(`${n} has no peer chardev`),
      rawDev: (n) => rawDevs.get(n) ?? fail(`${n} has no raw chardev`),
      socketPath: socketOf,
      shmPath: shmOf,
      stats: () => stats(),
    };
    state = await within(attack.setup?.(ctx) ?? Promise.resolve(), 60_000, "the attack's setup");
    ctx.deadline = Date.now() + seconds * 1000;
    const measured = legit.measure(seconds);
    const observed = await attack.run(ctx, state).catch((err) => ({
      attackerError: (err as Error).message.slice(0, 200),
    }));
    const result: LegitResult = await measured;
    row.load1 = Math.round(loadavg()[0] * 100) / 100;
    watch.sample();
    row.observed = observed;
    row.legit = roundSamples(result);
    for (const [who, r] of Object.entries(result.rtt)) row.rtt[who] = summarizeRtt(r, PACE_MS);
    row.lost = result.streams.reduce((n, s) => n + s.lost, 0);
    const after = await stats(10_000).catch(() => undefined);
    row.brokerSurvived = broker.pid !== undefined && after !== undefined;
    if (after) {
      const endpoint = (s: BrokerStats, name: string) =>
        name === "host" ? s.host : s.vms.find((v) => v.name === name);
      for (const name of attack.attackers) {
        row.attacker[name] = statsDelta(endpoint(before, name), endpoint(after, name)!);
      }
      for (const name of ["vring", "vport", "host"]) {
        if (attack.attackers.includes(name)) continue;
        row.victims[name] = statsDelta(endpoint(before, name), endpoint(after, name)!);
      }
    }
    for (const [k, v] of broker.logCounts) {
      const d = v - (logBefore.get(k) ?? 0);
      if (d > 0) row.brokerLog[k] = d;
    }
    row.ok = true;
  } catch (err) {
    row.error = (err as Error).message.slice(0, 500);
    row.brokerSurvived = broker?.pid !== undefined;
  } finally {
    if (watch) {
      watch.stop();
      row.rssBeforeMiB = watch.baseline.rss / MiB;
      row.rssPeakMiB = watch.peak.rss / MiB;
    }
    if (broker && broker.pid === undefined) {
      const inc = broker.incarnations[broker.incarnations.length - 1];
      row.brokerEnd = inc?.end;
      row.brokerStderrTail = inc?.stderrTail.slice(-10);
    }
    try {
      await attack.cleanup?.(state);
    } catch { /* the attacker's own leftovers */ }
    await statsBus?.close().catch(() => {});
    await legit?.quit().catch(() => {});
    await broker?.stop().catch(() => {});
    for (const d of peerDevs.values()) await d.close().catch(() => {});
    for (const d of rawDevs.values()) await d.close().catch(() => {});
    for (const f of shmFiles) rmSync(f, { force: true });
    rmSync(dir, { recursive: true, force: true });
    cleanups.delete(killAll);
    row.wallS = (performance.now() - started) / 1000;
  }
  return row;
}

/** Samples rounded to 0.01 ms, so the JSON stays readable. */
function roundSamples(r: LegitResult): LegitResult {
  const rtt = Object.fromEntries(
    Object.entries(r.rtt).map(([k, v]) => [
      k,
      { ...v, samples: v.samples.map((x) => Math.round(x * 100) / 100) },
    ]),
  );
  return { ...r, rtt };
}

function fail(message: string): never {
  throw new Error(message);
}

function version(cmd: string): string {
  try {
    const r = spawnSync(cmd, ["--version"], { encoding: "utf8", timeout: 10_000 });
    return (r.stdout || r.stderr || "").split("\n")[0].trim();
  } catch {
    return "unavailable";
  }
}

/** HEAD of the checkout this runs from, and what in the code under test differs from it. */
function sourceState(): { commit: string; modified: string[] } {
  const git = (args: string[]) =>
    spawnSync("git", ["-C", ROOT, ...args], { encoding: "utf8", timeout: 10_000 }).stdout ?? "";
  const commit = git(["rev-parse", "--short=12", "HEAD"]).trim() || "unknown";
  const modified = git(["status", "--porcelain", "--", "src", "ffi", "tests/fixtures", "bench"])
    .split("\n").map((l) => l.slice(3).trim())
    .filter((f) => f && !f.startsWith("bench/results"));
  return { commit, modified };
}

function thisRuntime(): string {
  const g = globalThis as { Bun?: { version: string }; Deno?: { version: { deno: string } } };
  if (g.Bun) return `bun ${g.Bun.version}`;
  if (g.Deno) return `deno ${g.Deno.version.deno}`;
  return `node ${process.version}`;
}

function selectAttacks(only: string | undefined): Attack[] {
  if (!only) return [...ATTACKS];
  const wanted = only.split(",").map((s) => s.trim()).filter(Boolean);
  for (const w of wanted) {
    if (!ATTACKS.some((a) => a.name === w || a.item === w)) {
      throw new Error(`unknown attack "${w}"\n${USAGE}`);
    }
  }
  return ATTACKS.filter((a) =>
    a.name === "baseline" || wanted.includes(a.name) || wanted.includes(a.item)
  );
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      seconds: { type: "string", default: "5" },
      only: { type: "string" },
      runtime: { type: "string", default: "bun" },
      out: { type: "string", default: join(ROOT, "bench", "results", "hostile") },
      tag: { type: "string" },
      list: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.list) {
    for (const a of ATTACKS) console.log(`${a.item.padEnd(3)} ${a.name.padEnd(15)} ${a.title}`);
    return 0;
  }
  const seconds = Number(values.seconds);
  if (!(seconds > 0 && seconds <= 600)) throw new Error(`--seconds must be in (0, 600]\n${USAGE}`);
  const runtime = values.runtime as Runtime;
  if (runtime !== "bun" && runtime !== "deno") throw new Error(`--runtime bun|deno\n${USAGE}`);
  const attacks = selectAttacks(values.only);
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      for (const c of cleanups) c();
      process.exit(130);
    });
  }

  const t0 = performance.now();
  const loadBefore = loadavg().map((x) => Math.round(x * 100) / 100);
  const rows: AttackRow[] = [];
  for (const [i, attack] of attacks.entries()) {
    log(`[${i + 1}/${attacks.length}] ${attack.item} ${attack.name}: ${attack.title}`);
    const row = await runAttack(attack, seconds, runtime);
    rows.push(row);
    const r = (who: string) => {
      const x = row.rtt[who];
      return x ? `${x.p50.toFixed(1)}/${x.p99.toFixed(1)}/${x.max.toFixed(0)} ms` : "–";
    };
    log(
      `    ring ${r("vring")}, port ${r("vport")}, lost ${row.lost}, RSS ` +
        `${row.rssBeforeMiB.toFixed(0)} -> ${row.rssPeakMiB.toFixed(0)} MiB, broker ` +
        `${row.brokerSurvived ? "up" : "DIED"}${row.error ? `, ERROR ${row.error}` : ""} ` +
        `(${row.wallS.toFixed(1)} s)`,
    );
  }

  const failures: string[] = [];
  for (const row of rows) {
    if (row.error) failures.push(`${row.name}: could not run (${row.error.slice(0, 120)})`);
    if (!row.brokerSurvived) failures.push(`${row.name}: the broker died`);
    if (row.lost > 0) failures.push(`${row.name}: victims lost ${row.lost} stream messages`);
  }
  const memGiB = Math.round((totalmem() / 2 ** 30) * 10) / 10;
  const argv = process.argv.slice(2).join(" ");
  const report: HostileReport = {
    schema: "vbus-hostile/1",
    command: `${"Deno" in globalThis ? "deno run -A" : "bun"} bench/hostile.ts${
      argv ? ` ${argv}` : ""
    }`,
    date: new Date().toISOString(),
    source: sourceState(),
    settings: {
      seconds,
      paceMs: PACE_MS,
      streamEveryMs: STREAM_EVERY_MS,
      brokerRuntime: runtime,
      limits: BENCH_LIMITS,
      shmSize: SHM_SIZE,
    },
    machine: {
      nproc: cpus().length,
      cpuModel: cpus()[0]?.model ?? "unknown",
      kernel: release(),
      memGiB,
      loadBefore,
      loadAfter: loadavg().map((x) => Math.round(x * 100) / 100),
      runtimes: {
        broker: runtime,
        harness: thisRuntime(),
        deno: version(RUNTIME_BIN.deno).replace(/^deno /, ""),
        bun: version(RUNTIME_BIN.bun),
      },
    },
    rows,
    failures,
    totalS: (performance.now() - t0) / 1000,
  };
  const outDir = resolve(values.out!);
  mkdirSync(outDir, { recursive: true });
  const base = values.tag ? `latest-${values.tag}` : "latest";
  const md = renderMarkdown(report);
  writeFileSync(join(outDir, `${base}.md`), md);
  writeFileSync(join(outDir, `${base}.json`), renderJson(report));
  process.stdout.write(md.split("## Details")[0]);
  log(`wrote ${join(outDir, base)}.md and .json (${report.totalS.toFixed(0)} s)`);
  for (const f of failures) log(`FAILED: ${f}`);
  return failures.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    log(`hostile: ${(err as Error).stack ?? err}`);
    for (const c of cleanups) c();
    code = 2;
  }
  // Timers of closed clients must not keep the process alive.
  setTimeout(() => process.exit(code), 300).unref?.();
  process.exitCode = code;
}

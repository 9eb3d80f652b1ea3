// Benchmark orchestrator: runs every (system x runtime pair x workload) case, repeated and
// interleaved, and writes bench/results/latest.{json,md} plus SVG charts.
// Runs under Bun or Deno (node:* modules only). Usually started by `node scripts/bench.mjs`.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  Child,
  type ClientMessage,
  freePort,
  killAllSync,
  onInterrupt,
  procCpu,
  ROOT,
  RUNTIME_BIN,
  runtimeCommand,
  waitForPath,
  waitForPort,
} from "./lib/proc.ts";
import type { BenchSystem, RuntimeName, ServerContext, ServerHandle } from "./lib/system.ts";
import { fmtSize, parseSize, STRUCTURED } from "./lib/stats.ts";
import { payloadBytes } from "./lib/values.ts";
import {
  type CaseRun,
  type LatencyUs,
  type Report,
  summarize,
  writeReports,
} from "./lib/report.ts";

/** bench/client.ts's "done" from a publisher (pub) or, with the latency fields, a requester (req). */
interface PubDone extends ClientMessage {
  sent: number;
  t0: number;
  t1: number;
  elapsedS: number;
  /** pub: messages sent in the warm-up, and seconds published after it */
  warmSent?: number;
  measuredS?: number;
  badSize: number;
  timeouts: number;
  latencyUs: LatencyUs;
}

/** bench/client.ts's "done" from a subscriber (sub). */
interface SubDone extends ClientMessage {
  received: number;
  badSize: number;
  tFirst: number;
  tLast: number;
  reason: string;
  /** received and wall time when the warm-up ended ("mark"); null without one */
  markReceived?: number | null;
  tMark?: number | null;
}

const PLUGIN_SLOTS = ["vbus-ring", "vbus-port", "ring-bare"];
const SYSTEMS_DIR = join(ROOT, "bench", "systems");

const { values: opt } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    systems: { type: "string" },
    sizes: { type: "string" },
    "rr-sizes": { type: "string" },
    shapes: { type: "string" },
    runtimes: { type: "string" },
    runs: { type: "string" },
    out: { type: "string", default: join(ROOT, "bench", "results") },
    seconds: { type: "string" },
    warmup: { type: "string" },
    count: { type: "string" },
    "rr-count": { type: "string" },
    deadline: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

if (opt.help) {
  process.stdout.write(`usage: node scripts/bench.mjs [options]
  --quick              smoke run, whole run < 2 min (1 run, sizes 128,64k, bun+deno, short cases)
  --systems a,b        systems to run (default: every bench/systems/*.ts, plus plug-in slots
                       ${PLUGIN_SLOTS.join(", ")} when their module exists)
  --sizes 16,128,1k    pub/sub payload sizes (default 16,128,1k,64k,1m,obj4; obj4 = an object
                       of four fields, encoded and decoded by each system's client)
  --rr-sizes 64,64k    request/reply payload sizes (default 64,64k)
  --shapes 1:1,1:4,4:1,rr   workload shapes (default all; "rr" = request/reply latency)
  --runtimes deno,bun,mixed runtime of publisher>subscriber ("mixed" = deno>bun; any "a>b")
  --runs N             repetitions of every case, interleaved across systems (default 3, quick 1)
  --seconds S          time bound of each pub/sub case's publishing phase (default 2, quick 0.4)
  --warmup S           seconds of publishing before that phase, not measured (default 1,
                       quick 0.2; 0 = none): every process JIT-warm, as a long-running one is
  --count N            message bound of each pub/sub case (default 10000000, quick 2000000)
  --rr-count N         round trips per latency case (default 20000, quick 2000)
  --deadline S         stop starting new cases after S seconds (default 3600, quick 100)
  --out DIR            output directory (default bench/results)
`);
  process.exit(0);
}

const quick = opt.quick!;
const list = (s: string | undefined, d: string) =>
  (s ?? d).split(",").map((x) => x.trim()).filter(Boolean);
const num = (s: string | undefined, d: number) => {
  const n = s === undefined ? d : Number(s);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`bad number "${s}"`);
  return n;
};

const settings = {
  quick,
  runs: Math.floor(num(opt.runs, quick ? 1 : 3)),
  sizes: list(opt.sizes, quick ? "128,64k" : "16,128,1k,64k,1m,obj4").map(parseSize),
  rrSizes: list(opt["rr-sizes"], "64,64k").map(parseSize).map((s) => {
    if (s === STRUCTURED) throw new Error("--rr-sizes: obj4 is a pub/sub workload only");
    return s;
  }),
  shapes: list(opt.shapes, "1:1,1:4,4:1,rr"),
  runtimes: list(opt.runtimes, quick ? "bun,deno" : "deno,bun,mixed"),
  seconds: num(opt.seconds, quick ? 0.4 : 2),
  warmupS: opt.warmup === "0" ? 0 : num(opt.warmup, quick ? 0.2 : 1),
  count: Math.floor(num(opt.count, quick ? 2_000_000 : 10_000_000)),
  bytesBudget: quick ? 512 * 2 ** 20 : 8 * 2 ** 30,
  rrCount: Math.floor(num(opt["rr-count"], quick ? 2000 : 20000)),
  rrSeconds: quick ? 0.6 : 5,
  idleMs: quick ? 1000 : 3000,
  deadlineS: num(opt.deadline, quick ? 100 : 3600),
  out: opt.out!,
};

for (const s of settings.shapes) {
  if (!["1:1", "1:4", "4:1", "rr"].includes(s)) {
    throw new Error(`unknown shape "${s}" (1:1, 1:4, 4:1, rr)`);
  }
}

interface Pair {
  name: string;
  pub: RuntimeName;
  sub: RuntimeName;
}
const pairs: Pair[] = settings.runtimes.map((r) => {
  const [a, b] = r === "mixed" ? ["deno", "bun"] : r.includes(">") ? r.split(">") : [r, r];
  for (const x of [a, b]) {
    if (x !== "deno" && x !== "bun") throw new Error(`unknown runtime "${x}" (deno, bun)`);
  }
  return { name: a === b ? a : `${a}>${b}`, pub: a as RuntimeName, sub: b as RuntimeName };
});

// ---------------------------------------------------------------- systems
const onDisk = existsSync(SYSTEMS_DIR)
  ? readdirSync(SYSTEMS_DIR).filter((f) => f.endsWith(".ts") && !f.startsWith("_")).map((f) =>
    f.slice(0, -3)
  )
  : [];
// Fixed order (peers first, then the plug-in slots, then anything else alphabetically) so that
// the report's columns do not depend on directory order.
const ORDER = ["nats", "redis", "unix", "tcp", ...PLUGIN_SLOTS];
const rank = (n: string) => (ORDER.includes(n) ? ORDER.indexOf(n) : ORDER.length);
const requested = opt.systems
  ? [...new Set(list(opt.systems, ""))]
  : [...new Set([...onDisk, ...PLUGIN_SLOTS])].sort((a, b) =>
    rank(a) - rank(b) || a.localeCompare(b)
  );
const systems = new Map<string, BenchSystem>();
const systemInfo: Report["systems"] = [];
for (const name of requested) {
  const file = join(SYSTEMS_DIR, `${name}.ts`);
  if (!existsSync(file)) {
    const slot = PLUGIN_SLOTS.includes(name);
    if (!slot && opt.systems) {
      throw new Error(`unknown system "${name}" (have: ${onDisk.join(", ")})`);
    }
    systemInfo.push({
      name,
      describe: "",
      peer: false,
      available: false,
      reason: `bench/systems/${name}.ts not written yet`,
      info: {},
    });
    continue;
  }
  try {
    const sys: BenchSystem = (await import(`./systems/${name}.ts`)).default;
    if (sys.name !== name) throw new Error(`module's name is "${sys.name}", expected "${name}"`);
    const reason = sys.check ? await sys.check() : null;
    const info = reason === null && sys.info ? await sys.info() : {};
    systemInfo.push({
      name,
      describe: sys.describe,
      peer: sys.peer,
      available: reason === null,
      reason,
      info,
    });
    if (reason === null) systems.set(name, sys);
  } catch (e) {
    systemInfo.push({
      name,
      describe: "",
      peer: false,
      available: false,
      reason: `failed to load: ${e}`,
      info: {},
    });
  }
}
for (const s of systemInfo) {
  if (!s.available) process.stderr.write(`bench: skipping ${s.name}: ${s.reason}\n`);
}

// ---------------------------------------------------------------- case list (interleaved)
interface CaseDef {
  id: string;
  run: number;
  system: string;
  pair: Pair;
  kind: "throughput" | "latency";
  shape: string;
  size: number;
  pubs: number;
  subs: number;
}
const workloads: {
  kind: "throughput" | "latency";
  shape: string;
  size: number;
  pubs: number;
  subs: number;
}[] = [];
for (const shape of settings.shapes) {
  if (shape === "rr") {
    for (const size of settings.rrSizes) {
      workloads.push({ kind: "latency", shape, size, pubs: 1, subs: 1 });
    }
  } else {
    const [p, s] = shape.split(":").map(Number);
    for (const size of settings.sizes) {
      workloads.push({ kind: "throughput", shape, size, pubs: p, subs: s });
    }
  }
}
const cases: CaseDef[] = [];
for (let run = 1; run <= settings.runs; run++) {
  for (const w of workloads) {
    for (const pair of pairs) {
      for (const [system, sys] of systems) {
        if (sys.shapes && !sys.shapes.includes(w.shape)) continue; // e.g. an SPSC ring has no fan-out
        const id = `${w.kind}/${w.shape}/${w.size}/${pair.name}/${system}`;
        cases.push({ id, run, system, pair, ...w });
      }
    }
  }
}

// ---------------------------------------------------------------- running one case
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((
      _,
      rej,
    ) => (t = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms))),
  ]);
}

let currentTmp: string | null = null;
async function runCase(c: CaseDef): Promise<CaseRun> {
  const sys = systems.get(c.system)!;
  const tmpDir = mkdtempSync(join(tmpdir(), "vbus-bench-"));
  currentTmp = tmpDir;
  const servers: Child[] = [];
  const clients: { child: Child; role: string }[] = [];
  const result: CaseRun = {
    id: c.id,
    run: c.run,
    system: c.system,
    runtime: c.pair.name,
    kind: c.kind,
    shape: c.shape,
    size: c.size,
    ok: false,
    error: null,
    loadavg1: loadavg()[0],
  };
  let server: ServerHandle | null = null;
  const ctx: ServerContext = {
    runtime: c.pair.pub,
    tmpDir,
    root: ROOT,
    freePort,
    spawn(name, cmd, args, env) {
      const ch = new Child(name, "server", cmd, args, env);
      servers.push(ch);
      return ch;
    },
    spawnScript(name, script, args, env) {
      const [cmd, a] = runtimeCommand(c.pair.pub, script, args);
      const ch = new Child(name, "server", cmd, a, env);
      servers.push(ch);
      return ch;
    },
    waitForPort,
    waitForPath,
    log: (m) => process.stderr.write(`  [${c.system}] ${m}\n`),
  };
  const throughput = c.kind === "throughput";
  const perPub = throughput
    ? Math.max(
      1,
      Math.floor(Math.min(settings.count, settings.bytesBudget / payloadBytes(c.size)) / c.pubs),
    )
    : settings.rrCount;
  const seconds = throughput ? settings.seconds : settings.rrSeconds;
  const hardLimitS = Math.ceil((seconds + settings.warmupS) * 4 + 60);
  const spec = (role: string, id: string, rt: RuntimeName) => ({
    system: c.system,
    role,
    id,
    runtime: rt,
    endpoint: server!.endpoint,
    size: c.size,
    count: perPub,
    seconds,
    batch: Math.max(1, Math.min(1024, Math.floor((256 * 1024) / payloadBytes(c.size)))),
    warmup: throughput ? 0 : Math.min(500, Math.ceil(settings.rrCount / 10)),
    warmupS: throughput ? settings.warmupS : 0,
    idleMs: settings.idleMs,
    hardLimitS,
  });
  const launch = (role: string, id: string, rt: RuntimeName) => {
    const [cmd, args] = runtimeCommand(rt, sys.clientScript ?? "bench/client.ts", [
      JSON.stringify(spec(role, id, rt)),
    ]);
    const child = new Child(id, "client", cmd, args);
    clients.push({ child, role });
    return child;
  };
  try {
    server = await withTimeout(sys.start(ctx), 30000, `${c.system}.start`);
    const subRole = throughput ? "sub" : "rep";
    const pubRole = throughput ? "pub" : "req";
    const subs = Array.from(
      { length: c.subs },
      (_, i) => launch(subRole, `${subRole}-${i}`, c.pair.sub),
    );
    await Promise.all(subs.map((s) => s.next("ready", 30000)));
    const pubs = Array.from(
      { length: c.pubs },
      (_, i) => launch(pubRole, `${pubRole}-${i}`, c.pair.pub),
    );
    await Promise.all(pubs.map((p) => p.next("ready", 30000)));

    const all: { name: string; role: string; pid: number }[] = [
      ...servers.map((s) => ({ name: s.name, role: "server", pid: s.pid })),
      ...clients.map((x) => ({ name: x.child.name, role: x.role, pid: x.child.pid })),
    ];
    let cpu0 = all.map((p) => procCpu(p.pid));
    for (const p of pubs) p.send("go");
    // The measured phase starts when every publisher's warm-up is over: CPU from here, and
    // each subscriber notes what it had received by then.
    const warm = throughput
      ? await Promise.all(
        pubs.map((p) =>
          p.next<ClientMessage & { early?: boolean }>("warm", (settings.warmupS + 60) * 1000)
        ),
      )
      : [];
    const warmed = settings.warmupS > 0 && throughput && warm.every((w) => !w.early);
    if (warmed) {
      cpu0 = all.map((p) => procCpu(p.pid));
      for (const s of subs) s.send("mark");
    }
    const pubDone = await Promise.all(
      pubs.map((p) => p.next<PubDone>("done", (seconds + settings.warmupS + 60) * 1000)),
    );
    const totalSent = pubDone.reduce((a, d) => a + d.sent, 0);
    let subDone: SubDone[] = [];
    if (throughput) {
      for (const s of subs) s.send(`expect ${totalSent}`);
      const first = await Promise.allSettled(
        subs.map((s) => s.next<SubDone>("done", ((seconds + settings.warmupS) * 3 + 20) * 1000)),
      );
      subDone = await Promise.all(first.map((r, i) => {
        if (r.status === "fulfilled") return r.value;
        subs[i].send("stop"); // stalled: report what arrived so far
        return subs[i].next<SubDone>("done", 5000);
      }));
    }
    const cpu1 = all.map((p) => procCpu(p.pid));
    const procs = all.map((p, i) => {
      const a = cpu0[i], b = cpu1[i];
      const cpu = a && b ? b.user - a.user + b.sys - a.sys : NaN;
      return { ...p, cpuS: cpu };
    });
    const cpuTotal = procs.reduce((s, p) => s + p.cpuS, 0);
    const cpuByRole: Record<string, number> = {};
    for (const p of procs) cpuByRole[p.role] = (cpuByRole[p.role] ?? 0) + p.cpuS;
    result.procs = procs;
    result.cpuByRoleS = cpuByRole;
    result.cpuTotalS = cpuTotal;
    result.sent = totalSent;

    if (throughput) {
      const delivered = subDone.reduce((a, d) => a + d.received, 0);
      // Rates over the measured phase (after the warm-up) when there was one; loss over all.
      const marked = warmed && subDone.every((d) => typeof d.tMark === "number");
      const measured = marked
        ? delivered - subDone.reduce((a, d) => a + d.markReceived!, 0)
        : delivered;
      const start = marked
        ? Math.min(...subDone.map((d) => d.tMark!))
        : Math.min(...pubDone.map((d) => d.t0));
      const end = Math.max(...subDone.map((d) => d.tLast || d.tFirst || start));
      const durS = Math.max(1e-6, (end - start) / 1000);
      const pubS = Math.max(...pubDone.map((d) => marked ? d.measuredS! : d.elapsedS));
      const pubSent = marked ? pubDone.reduce((a, d) => a + d.sent - d.warmSent!, 0) : totalSent;
      result.warmupS = marked ? settings.warmupS : 0;
      result.measuredDelivered = measured;
      result.delivered = delivered;
      result.expected = totalSent * c.subs;
      result.lost = result.expected - delivered;
      result.badSize = subDone.reduce((a, d) => a + d.badSize, 0);
      result.durationS = durS;
      result.msgsPerSec = measured / durS;
      result.bytesPerSec = (measured * payloadBytes(c.size)) / durS;
      result.pubMsgsPerSec = pubSent / Math.max(1e-6, pubS);
      result.cpuPerMillionS = measured ? cpuTotal / (measured / 1e6) : NaN;
      result.subReasons = subDone.map((d) => d.reason);
      result.ok = delivered > 0 && result.badSize === 0;
      if (!result.ok) {
        result.error = delivered === 0
          ? "nothing delivered"
          : `${result.badSize} messages of the wrong size`;
      } else if (result.lost > 0) {
        result.error = `${result.lost} of ${result.expected} messages not delivered (${
          subDone.map((d) => d.reason).join(",")
        })`;
      }
      if (result.ok && marked && measured === 0) {
        // Seen with obj4 (a subscriber slower than its publishers): its "mark" was handled only
        // after its last message, so there is nothing to take a warm rate from.
        result.ok = false;
        result.error =
          "no measured phase: the subscriber handled the end of the warm-up only after its last message";
      }
    } else {
      const d = pubDone[0];
      result.latencyUs = d.latencyUs;
      result.delivered = d.latencyUs.n;
      result.durationS = (d.t1 - d.t0) / 1000;
      result.msgsPerSec = d.latencyUs.n / Math.max(1e-6, result.durationS);
      result.cpuPerMillionS = d.latencyUs.n ? cpuTotal / ((2 * d.latencyUs.n) / 1e6) : NaN;
      result.badSize = d.badSize;
      result.ok = d.latencyUs.n > 0 && d.badSize === 0 && d.timeouts === 0;
      if (!result.ok) {
        result.error = d.timeouts
          ? "reply timed out"
          : d.badSize
          ? "wrong reply size"
          : "no round trips";
      }
    }
  } catch (e) {
    result.ok = false;
    result.error = String((e as Error)?.message ?? e).split("\n").slice(0, 6).join(" | ");
  } finally {
    for (const x of clients) x.child.send("quit");
    await Promise.all(clients.map((x) => Promise.race([x.child.exited, sleep(2000)])));
    await Promise.all(clients.map((x) => x.child.kill(500)));
    if (server) {
      try {
        await withTimeout(server.stop(), 5000, `${c.system}.stop`);
      } catch { /* killed below */ }
    }
    await Promise.all(servers.map((s) => s.kill(1000)));
    rmSync(tmpDir, { recursive: true, force: true });
    result.loadavg1After = loadavg()[0];
  }
  return result;
}

// ---------------------------------------------------------------- machine info
function version(cmd: string, args: string[]): string {
  try {
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 10000 });
    return (r.stdout || r.stderr || "").split("\n")[0].trim();
  } catch {
    return "unavailable";
  }
}
const cpuList = cpus();
const machine = {
  cpuModel: cpuList[0]?.model ?? "unknown",
  cores: cpuList.length,
  memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
  kernel: release(),
  loadavgBefore: loadavg().map((x) => Math.round(x * 100) / 100),
  loadavgAfter: [] as number[],
  runtimes: {
    deno: version(RUNTIME_BIN.deno, ["--version"]),
    bun: version(RUNTIME_BIN.bun, ["--version"]),
    orchestrator: process.versions.bun
      ? `bun ${process.versions.bun}`
      : process.versions.deno
      ? `deno ${process.versions.deno}`
      : `node ${process.version}`,
  },
};

// ---------------------------------------------------------------- main loop
const t0 = Date.now();
const startedAt = new Date().toISOString();
const runs: CaseRun[] = [];
let failures = 0;
const isTTY = process.stderr.isTTY;
process.stderr.write(
  `bench: ${cases.length} cases (${systems.size} systems x ${pairs.length} runtime pairs x ${workloads.length} workloads x ${settings.runs} runs), deadline ${settings.deadlineS}s\n`,
);
onInterrupt(() => {
  if (currentTmp) rmSync(currentTmp, { recursive: true, force: true });
  finish(true);
});
for (let i = 0; i < cases.length; i++) {
  const c = cases[i];
  const elapsed = (Date.now() - t0) / 1000;
  const label = `${c.system} ${c.pair.name} ${c.kind === "latency" ? "req/rep" : c.shape} ${
    fmtSize(c.size)
  } run ${c.run}/${settings.runs}`;
  if (elapsed > settings.deadlineS) {
    runs.push({
      id: c.id,
      run: c.run,
      system: c.system,
      runtime: c.pair.name,
      kind: c.kind,
      shape: c.shape,
      size: c.size,
      ok: false,
      error: "skipped: --deadline reached",
      loadavg1: loadavg()[0],
      skipped: true,
    });
    continue;
  }
  const eta = i ? Math.round((elapsed / i) * (cases.length - i)) : 0;
  const line = `[${i + 1}/${cases.length}] ${label}  (${cases.length - i - 1} left, ${
    Math.round(elapsed)
  }s elapsed${i ? `, ~${eta}s to go` : ""})`;
  process.stderr.write(isTTY ? `\r\x1b[K${line}` : `${line}\n`);
  const r = await runCase(c);
  runs.push(r);
  if (!r.ok || r.error) {
    failures += r.ok ? 0 : 1;
    process.stderr.write(
      `${isTTY ? "\n" : ""}  ${r.ok ? "warning" : "FAILED"}: ${label}: ${r.error}\n`,
    );
  }
}
if (isTTY) process.stderr.write("\n");
finish(false);

function finish(interrupted: boolean): void {
  machine.loadavgAfter = loadavg().map((x) => Math.round(x * 100) / 100);
  const report: Report = {
    schema: "vbus-bench/1",
    startedAt,
    finishedAt: new Date().toISOString(),
    durationS: Math.round((Date.now() - t0) / 100) / 10,
    interrupted,
    settings: { ...settings, runtimes: pairs.map((p) => p.name) },
    machine,
    systems: systemInfo,
    runs,
    summary: [],
    ratios: [],
    charts: [],
  };
  summarize(report);
  mkdirSync(settings.out, { recursive: true });
  const written = writeReports(report, settings.out);
  process.stderr.write(
    `bench: ${runs.length} runs${
      interrupted ? ` of ${cases.length} (interrupted)` : ""
    }, ${failures} failed, ${report.durationS}s; wrote ${written.join(", ")}\n`,
  );
  killAllSync();
}
process.exit(failures && failures === runs.length ? 1 : 0);

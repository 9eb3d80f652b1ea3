// Summaries (median, min-max), ratios vs peers, and the files: latest.json, latest.md, *.svg.
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fmtNum, fmtSize, median, si, type Spread, spread } from "./stats.ts";
import { barChart, lineChart } from "./svg.ts";

export interface LatencyUs {
  n: number;
  mean: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** One raw run of one case. */
export interface CaseRun {
  id: string; // kind/shape/size/runtime/system
  run: number;
  system: string;
  runtime: string; // "bun", "deno", "deno>bun" (publisher>subscriber)
  kind: "throughput" | "latency";
  shape: string; // 1:1, 1:4, 4:1, rr
  size: number;
  ok: boolean;
  error: string | null;
  skipped?: boolean;
  loadavg1: number;
  loadavg1After?: number;
  sent?: number;
  delivered?: number;
  expected?: number;
  lost?: number;
  badSize?: number;
  durationS?: number;
  warmupS?: number; // throughput: seconds of publishing before the measured phase (0: none)
  measuredDelivered?: number; // throughput: deliveries in the measured phase (rates count these)
  msgsPerSec?: number; // throughput: delivered msgs/s summed over subscribers; latency: round trips/s
  bytesPerSec?: number;
  pubMsgsPerSec?: number;
  cpuTotalS?: number;
  cpuByRoleS?: Record<string, number>;
  cpuPerMillionS?: number; // CPU seconds of every process / million messages delivered (measured phase)
  procs?: { name: string; role: string; pid: number; cpuS: number }[];
  subReasons?: string[];
  latencyUs?: LatencyUs;
}

export interface CaseSummary {
  key: string; // kind/shape/size/runtime/system
  kind: string;
  shape: string;
  size: number;
  runtime: string;
  system: string;
  runs: number;
  failed: number;
  msgsPerSec: Spread;
  bytesPerSec: Spread;
  cpuPerMillionS: Spread;
  latencyUs?: { p50: Spread; p90: Spread; p99: Spread; p999: Spread; max: Spread };
}

export interface Ratio {
  kind: string;
  shape: string;
  size: number;
  runtime: string;
  system: string;
  peer: string;
  /** throughput: system msg/s / peer msg/s; latency: peer p50 / system p50. >1 = system better.
   *  Median (and min-max) over runs, each ratio taken within one run (same interleaved round). */
  metric: "msgsPerSec" | "p50";
  ratio: Spread;
}

export interface Report {
  schema: "vbus-bench/1";
  startedAt: string;
  finishedAt: string;
  durationS: number;
  /** true when the run was stopped by a signal: only the runs finished so far are included */
  interrupted: boolean;
  settings: Record<string, unknown>;
  machine: {
    cpuModel: string;
    cores: number;
    memoryGiB: number;
    kernel: string;
    loadavgBefore: number[];
    loadavgAfter: number[];
    runtimes: Record<string, string>;
  };
  systems: {
    name: string;
    describe: string;
    peer: boolean;
    available: boolean;
    reason: string | null;
    info: Record<string, string>;
  }[];
  runs: CaseRun[];
  summary: CaseSummary[];
  ratios: Ratio[];
  charts: string[];
}

const wk = (r: { kind: string; shape: string; size: number; runtime: string }) =>
  `${r.kind}/${r.shape}/${r.size}/${r.runtime}`;

export function summarize(rep: Report): void {
  const groups = new Map<string, CaseRun[]>();
  for (const r of rep.runs) {
    if (!groups.has(r.id)) groups.set(r.id, []);
    groups.get(r.id)!.push(r);
  }
  rep.summary = [];
  for (const [key, rs] of groups) {
    const ok = rs.filter((r) => r.ok);
    const f = rs[0];
    const s: CaseSummary = {
      key,
      kind: f.kind,
      shape: f.shape,
      size: f.size,
      runtime: f.runtime,
      system: f.system,
      runs: rs.length,
      failed: rs.length - ok.length,
      msgsPerSec: spread(ok.map((r) => r.msgsPerSec ?? NaN)),
      bytesPerSec: spread(ok.map((r) => r.bytesPerSec ?? NaN)),
      cpuPerMillionS: spread(ok.map((r) => r.cpuPerMillionS ?? NaN)),
    };
    if (f.kind === "latency") {
      const l = (k: keyof LatencyUs) => spread(ok.map((r) => r.latencyUs?.[k] ?? NaN));
      s.latencyUs = { p50: l("p50"), p90: l("p90"), p99: l("p99"), p999: l("p999"), max: l("max") };
    }
    rep.summary.push(s);
  }

  // ratios: every non-peer system vs every peer; with no non-peer system present, every peer
  // vs the first peer (nats when present) so the table still shows the peers side by side.
  const avail = rep.systems.filter((s) => s.available);
  const subjects = avail.filter((s) => !s.peer).map((s) => s.name);
  const peers = avail.filter((s) => s.peer).map((s) => s.name);
  let pairs: [string, string][] = [];
  if (subjects.length) { for (const s of subjects) for (const p of peers) pairs.push([s, p]); }
  else if (peers.length > 1) {
    const ref = peers.includes("nats") ? "nats" : peers[0];
    pairs = peers.filter((p) => p !== ref).map((p) => [p, ref]);
  }
  const byRun = new Map<string, CaseRun>();
  for (const r of rep.runs) if (r.ok) byRun.set(`${wk(r)}/${r.system}#${r.run}`, r);
  const workloads = [...new Map(rep.runs.map((r) => [wk(r), r])).values()];
  rep.ratios = [];
  for (const w of workloads) {
    for (const [s, p] of pairs) {
      const xs: number[] = [];
      const nRuns = Math.max(0, ...rep.runs.map((r) => r.run));
      for (let run = 1; run <= nRuns; run++) {
        const a = byRun.get(`${wk(w)}/${s}#${run}`), b = byRun.get(`${wk(w)}/${p}#${run}`);
        if (!a || !b) continue;
        if (w.kind === "latency") xs.push((b.latencyUs?.p50 ?? NaN) / (a.latencyUs?.p50 ?? NaN));
        else xs.push((a.msgsPerSec ?? NaN) / (b.msgsPerSec ?? NaN));
      }
      rep.ratios.push({
        kind: w.kind,
        shape: w.shape,
        size: w.size,
        runtime: w.runtime,
        system: s,
        peer: p,
        metric: w.kind === "latency" ? "p50" : "msgsPerSec",
        ratio: spread(xs),
      });
    }
  }
}

const cell = (s: Spread, f: (x: number) => string = si) =>
  s.n === 0 ? "–" : s.n === 1 ? f(s.median) : `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
const SHAPES: Record<string, string> = {
  "1:1": "1 publisher : 1 subscriber",
  "1:4": "1 publisher : 4 subscribers (fan-out)",
  "4:1": "4 publishers : 1 subscriber (fan-in)",
};
const fileShape = (s: string) => s.replace(":", "x");

export function writeReports(rep: Report, outDir: string): string[] {
  const settings = rep.settings as {
    sizes: number[];
    rrSizes: number[];
    shapes: string[];
    runtimes: string[];
    runs: number;
  };
  const systems = rep.systems.filter((s) => s.available).map((s) => s.name);
  const find = (kind: string, shape: string, size: number, runtime: string, system: string) =>
    rep.summary.find((s) =>
      s.kind === kind && s.shape === shape && s.size === size && s.runtime === runtime &&
      s.system === system
    );
  const mark = (s: CaseSummary | undefined, f: (s: CaseSummary) => string) =>
    !s ? "–" : s.runs === s.failed ? "FAILED" : f(s) + (s.failed ? ` [${s.failed} failed]` : "");

  // ---- charts (removing old ones first so the set of files matches this run)
  for (const f of readdirSync(outDir)) {
    if (/^(throughput|latency)-.*\.svg$/.test(f)) rmSync(join(outDir, f));
  }
  rep.charts = [];
  const tpShapes = settings.shapes.filter((s) => s !== "rr");
  for (const shape of tpShapes) {
    for (const rt of settings.runtimes) {
      const name = `throughput-${fileShape(shape)}-${rt.replace(">", "-to-")}.svg`;
      const series = systems.map((sys) => ({
        name: sys,
        points: settings.sizes.map((size) => {
          const s = find("throughput", shape, size, rt, sys);
          return s && s.msgsPerSec.n ? s.msgsPerSec : null;
        }),
      }));
      writeFileSync(
        join(outDir, name),
        lineChart(
          `Delivered msg/s, ${shape}, ${rt} (median, min–max)`,
          "messages/s",
          settings.sizes.map(fmtSize),
          series,
        ),
      );
      rep.charts.push(name);
    }
  }
  if (settings.shapes.includes("rr")) {
    for (const size of settings.rrSizes) {
      const name = `latency-${fmtSize(size).replace(" ", "")}.svg`;
      const groups: string[] = [], values: (number | null)[][] = [];
      for (const sys of systems) {
        for (const rt of settings.runtimes) {
          const s = find("latency", "rr", size, rt, sys);
          groups.push(`${sys} ${rt}`);
          values.push(
            s?.latencyUs
              ? [s.latencyUs.p50.median, s.latencyUs.p99.median, s.latencyUs.p999.median].map((
                v,
              ) => (Number.isFinite(v) ? v : null))
              : [null, null, null],
          );
        }
      }
      writeFileSync(
        join(outDir, name),
        barChart(
          `Request/reply round trip, ${fmtSize(size)} (median of runs)`,
          "microseconds",
          groups,
          ["p50", "p99", "p99.9"],
          values,
        ),
      );
      rep.charts.push(name);
    }
  }

  // ---- JSON
  writeFileSync(
    join(outDir, "latest.json"),
    JSON.stringify(rep, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2) +
      "\n",
  );

  // ---- Markdown
  const md: string[] = [];
  const m = rep.machine;
  md.push(`# vbus benchmark: latest run`, "");
  if (rep.interrupted) {
    md.push(`**Interrupted**: only the runs finished before the signal are included.`, "");
  }
  md.push(
    `Started ${rep.startedAt}, took ${rep.durationS} s. ${settings.runs} run(s) of every case, interleaved across systems; cells are the median with the min–max over runs in parentheses.${
      rep.settings.warmupS
        ? ` Pub/sub rates and CPU are over the measured phase, after ${rep.settings.warmupS} s of unmeasured publishing (warm-up).`
        : ""
    } Raw runs: \`latest.json\`. Method: \`bench/README.md\`.`,
    "",
  );
  md.push(`## Machine`, "");
  md.push(`| item | value |`, `|---|---|`);
  md.push(
    `| CPU | ${m.cpuModel} |`,
    `| cores | ${m.cores} |`,
    `| memory | ${m.memoryGiB} GiB |`,
    `| kernel | ${m.kernel} |`,
  );
  md.push(
    `| load average before | ${m.loadavgBefore.join(" ")} |`,
    `| load average after | ${m.loadavgAfter.join(" ")} |`,
  );
  for (const [k, v] of Object.entries(m.runtimes)) md.push(`| ${k} | ${v} |`);
  md.push(
    `| settings | ${
      Object.entries(rep.settings).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`)
        .join(" ")
    } |`,
    "",
  );
  md.push(`## Systems`, "");
  md.push(`| system | peer | status | description |`, `|---|---|---|---|`);
  for (const s of rep.systems) {
    const extra = Object.values(s.info).join("; ");
    md.push(
      `| ${s.name} | ${s.peer ? "yes" : "no"} | ${
        s.available ? "ran" : `skipped: ${s.reason}`
      } | ${s.describe}${extra ? ` (${extra})` : ""} |`,
    );
  }
  md.push("");
  const head = (
    first: string[],
  ) => [
    `| ${[...first, ...systems].join(" | ")} |`,
    `|${[...first, ...systems].map(() => "---").join("|")}|`,
  ];
  for (const shape of tpShapes) {
    md.push(`## Throughput: ${SHAPES[shape] ?? shape}`, "");
    const tables: [string, (s: CaseSummary) => string][] = [
      ["Delivered messages per second (all subscribers together)", (s) => cell(s.msgsPerSec)],
      ["Delivered bytes per second (payload only)", (s) => cell(s.bytesPerSec, (x) => si(x) + "B")],
      [
        "CPU seconds per million delivered messages (every process: publishers, broker/relay, subscribers)",
        (s) => cell(s.cpuPerMillionS, (x) => fmtNum(x)),
      ],
    ];
    for (const [title, f] of tables) {
      md.push(`### ${title}`, "");
      md.push(...head(["size", "runtime"]));
      for (const size of settings.sizes) {
        for (const rt of settings.runtimes) {
          md.push(
            `| ${fmtSize(size)} | ${rt} | ${
              systems.map((sys) => mark(find("throughput", shape, size, rt, sys), f)).join(" | ")
            } |`,
          );
        }
      }
      md.push("");
    }
  }
  if (settings.shapes.includes("rr")) {
    md.push(`## Request/reply round trip (microseconds)`, "");
    md.push(
      `| size | runtime | system | p50 | p90 | p99 | p99.9 | max | round trips/s | CPU s per M msgs |`,
      `|---|---|---|---|---|---|---|---|---|---|`,
    );
    for (const size of settings.rrSizes) {
      for (const rt of settings.runtimes) {
        for (const sys of systems) {
          const s = find("latency", "rr", size, rt, sys);
          const l = s?.latencyUs;
          if (!s || !l || s.runs === s.failed) {
            md.push(
              `| ${fmtSize(size)} | ${rt} | ${sys} | ${
                s ? "FAILED" : "–"
              } | – | – | – | – | – | – |`,
            );
            continue;
          }
          const f = (x: number) => fmtNum(x);
          md.push(
            `| ${fmtSize(size)} | ${rt} | ${sys} | ${cell(l.p50, f)} | ${cell(l.p90, f)} | ${
              cell(l.p99, f)
            } | ${cell(l.p999, f)} | ${cell(l.max, f)} | ${cell(s.msgsPerSec)} | ${
              cell(s.cpuPerMillionS, f)
            } |`,
          );
        }
      }
    }
    md.push("");
  }
  md.push(`## Ratios (from the same runs)`, "");
  md.push(
    `Throughput: system msg/s ÷ peer msg/s. Latency: peer p50 ÷ system p50. Above 1 means the system is better. Each ratio is taken within one interleaved round, then the median (min–max) over rounds.`,
    "",
  );
  const ratioCols = [...new Map(rep.ratios.map((r) => [`${r.system} vs ${r.peer}`, r])).keys()];
  if (ratioCols.length === 0) md.push(`(no pair of systems to compare)`, "");
  else {
    md.push(
      `| workload | size | runtime | ${ratioCols.join(" | ")} |`,
      `|---|---|---|${ratioCols.map(() => "---").join("|")}|`,
    );
    const rows = [
      ...new Map(rep.ratios.map((r) => [`${r.kind}/${r.shape}/${r.size}/${r.runtime}`, r]))
        .values(),
    ];
    for (const w of rows) {
      const cells = ratioCols.map((col) => {
        const r = rep.ratios.find((x) =>
          x.kind === w.kind && x.shape === w.shape && x.size === w.size &&
          x.runtime === w.runtime && `${x.system} vs ${x.peer}` === col
        );
        return r ? cell(r.ratio, (x) => x.toFixed(2)) : "–";
      });
      md.push(
        `| ${w.kind === "latency" ? "req/rep p50" : w.shape} | ${
          fmtSize(w.size)
        } | ${w.runtime} | ${cells.join(" | ")} |`,
      );
    }
    md.push("");
  }
  md.push(`## Problems`, "");
  const bad = rep.runs.filter((r) => r.error);
  if (bad.length === 0) md.push(`None: every run delivered every message.`, "");
  else {
    md.push(`| case | run | status | detail |`, `|---|---|---|---|`);
    for (const r of bad) {
      md.push(
        `| ${r.id} | ${r.run} | ${r.ok ? "partial" : "failed"} | ${r.error!.replace(/\|/g, "/")} |`,
      );
    }
    md.push("");
  }
  md.push(`## Charts`, "");
  for (const c of rep.charts) md.push(`![${c}](${c})`, "");
  writeFileSync(join(outDir, "latest.md"), md.join("\n"));
  return [
    join(outDir, "latest.json"),
    join(outDir, "latest.md"),
    `${rep.charts.length} SVG charts`,
  ];
}

export { median };

/**
 * The hostile bench's results: one row per attack (the victims' round trips and streams, the
 * broker's memory and survival, what the broker's stats say about the attacker), rendered as
 * Markdown and JSON.
 *
 * @example
 * ```ts
 * import { renderMarkdown } from "./hostile_report.ts";
 * console.log(renderMarkdown(report));
 * ```
 * @module
 */
import type { EndpointStats } from "../../src/broker/stats.ts";
import type { LegitResult } from "./hostile_legit.ts";
import type { Observations } from "./hostile_attacks.ts";

/** p50 / p99 / max of one victim's round trips, ms. */
export interface RttSummary {
  n: number;
  p50: number;
  p99: number;
  max: number;
  /**
   * p99 corrected for coordinated omission: each sample longer than the pace also counts the
   * requests the victim would have sent meanwhile (HdrHistogram's expected-interval
   * correction: L - pace, L - 2 pace, ...), so a stall weighs by how long it lasted.
   */
  p99Corrected: number;
  timeouts: number;
  wrong: number;
  errors: Record<string, number>;
}

/** What changed in one endpoint's broker stats over the attack (non-zero fields only). */
export type StatsDelta = Record<string, number | Record<string, number>>;

/** One attack's row. */
export interface AttackRow {
  name: string;
  item: string;
  title: string;
  /** Limits beyond the bench's defaults and attacker permissions, for the reader. */
  config: string;
  ok: boolean;
  /** Why the row could not be measured (the harness failed), if it could not. */
  error?: string;
  rtt: Record<string, RttSummary>;
  /** Numbered stream messages lost, over every stream and subscriber. */
  lost: number;
  legit?: LegitResult;
  rssBeforeMiB: number;
  rssPeakMiB: number;
  /** The broker process was running and answering `$VBUS.STATS` after the attack. */
  brokerSurvived: boolean;
  /** How it ended, if it died. */
  brokerEnd?: string;
  brokerStderrTail?: string[];
  /** Broker log lines (WARN/ERROR) during this attack, by message. */
  brokerLog: Record<string, number>;
  /** Broker stats deltas of the attacker's endpoints. */
  attacker: Record<string, StatsDelta>;
  /** Broker stats deltas of the victims' endpoints (vring, vport, host). */
  victims: Record<string, StatsDelta>;
  /** What the attacker itself saw. */
  observed: Observations;
  /** Wall time of the whole attack (setup, window, drain), s. */
  wallS: number;
  /** The machine's 1-minute load average at the end of the window (other processes count). */
  load1: number;
}

/** The whole run. */
export interface HostileReport {
  schema: "vbus-hostile/1";
  command: string;
  date: string;
  /** The commit the broker and clients ran from, and source files that differed from it. */
  source: { commit: string; modified: string[] };
  settings: {
    seconds: number;
    paceMs: number;
    streamEveryMs: number;
    brokerRuntime: string;
    limits: Record<string, number>;
    shmSize: number;
  };
  machine: {
    nproc: number;
    cpuModel: string;
    kernel: string;
    memGiB: number;
    loadBefore: number[];
    loadAfter: number[];
    runtimes: Record<string, string>;
  };
  rows: AttackRow[];
  /** Every check that failed (empty: exit code 0). */
  failures: string[];
  totalS: number;
}

/** Nearest-rank percentile (0..1). */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

/** `samples` plus, for each longer than `paceMs`, the requests a stall kept from being sent. */
export function correctedSamples(samples: number[], paceMs: number): number[] {
  const out = [...samples];
  for (const s of samples) {
    for (
      let missing = s - paceMs;
      missing >= paceMs && out.length < 10_000_000;
      missing -= paceMs
    ) {
      out.push(missing);
    }
  }
  return out;
}

/** Summarize one victim's round trips (sent one at a time, one due every `paceMs`). */
export function summarizeRtt(r: LegitResult["rtt"][string], paceMs: number): RttSummary {
  return {
    n: r.samples.length,
    p50: percentile(r.samples, 0.5),
    p99: percentile(r.samples, 0.99),
    p99Corrected: percentile(correctedSamples(r.samples, paceMs), 0.99),
    max: r.samples.length ? Math.max(...r.samples) : NaN,
    timeouts: r.timeouts,
    wrong: r.wrong,
    errors: r.errors,
  };
}

const COUNTERS = ["sessions", "msgsIn", "msgsOut", "denied", "dropped", "blocked"] as const;
const RECORDS = ["closed", "errors", "drops"] as const;

/** `after - before` for the counters that say what an endpoint did or suffered. */
export function statsDelta(before: EndpointStats | undefined, after: EndpointStats): StatsDelta {
  const out: StatsDelta = {};
  for (const k of COUNTERS) {
    const d = (after[k] ?? 0) - (before?.[k] ?? 0);
    if (d !== 0) out[k] = d;
  }
  for (const k of RECORDS) {
    const rec: Record<string, number> = {};
    for (const [key, v] of Object.entries(after[k] ?? {})) {
      const d = v - (before?.[k]?.[key] ?? 0);
      if (d !== 0) rec[key] = d;
    }
    if (Object.keys(rec).length) out[k] = rec;
  }
  return out;
}

function fmtMs(x: number): string {
  if (!Number.isFinite(x)) return "–";
  return x < 10 ? x.toFixed(1) : x.toFixed(0);
}

function rec(r: Record<string, number> | undefined, sep = " "): string {
  return Object.entries(r ?? {}).map(([k, v]) => `${k}×${v}`).join(sep);
}

/** The attacker's broker-side account in a few words. */
function attackerCell(row: AttackRow): string {
  const parts: string[] = [];
  for (const [name, d] of Object.entries(row.attacker)) {
    const bits: string[] = [];
    const closed = d.closed as Record<string, number> | undefined;
    const errors = d.errors as Record<string, number> | undefined;
    const drops = d.drops as Record<string, number> | undefined;
    if (closed) bits.push(`closed ${rec(closed)}`);
    if (errors) bits.push(`ERR ${rec(errors)}`);
    if (drops) bits.push(`drops ${rec(drops)}`);
    if (d.denied) bits.push(`denied ${d.denied}`);
    if (d.blocked) bits.push(`blocked ${d.blocked}×`);
    if (name !== "host" && d.msgsIn) bits.push(`${d.msgsIn} msgs in`);
    parts.push(`${name}: ${bits.length ? bits.join("; ") : "nothing counted"}`);
  }
  const headline = row.observed.headline;
  if (typeof headline === "string") parts.push(`attacker: ${headline}`);
  return parts.join("<br>") || "–";
}

/** What the victims noticed besides their round trips, in a few words ("–": nothing). */
function victimCell(row: AttackRow): string {
  const bits: string[] = [];
  const wrong = Object.values(row.rtt).reduce((n, r) => n + r.wrong, 0);
  if (wrong) bits.push(`**${wrong} wrong replies**`);
  for (const c of row.legit?.clients ?? []) {
    const own: string[] = [];
    if (c.pathBefore !== c.pathAfter) own.push(`path ${c.pathBefore} → ${c.pathAfter}`);
    if (c.disconnects) own.push(`**${c.disconnects} disconnects**`);
    if (c.foreign) own.push(`${c.foreign} foreign msgs`);
    if (c.undecodable) own.push(`${c.undecodable} undecodable skipped`);
    if (c.slowConsumer) own.push(`${c.slowConsumer} slow-consumer drops`);
    const d = row.victims[c.name === "svc" ? "host" : c.name];
    const drops = d?.drops as Record<string, number> | undefined;
    if (drops) own.push(`broker dropped ${rec(drops)}`);
    if (d?.closed) own.push(`**closed ${rec(d.closed as Record<string, number>)}**`);
    if (c.name === "svc" && d?.blocked) own.push(`held ${d.blocked}× by a block subscriber`);
    if (own.length) bits.push(`${c.name}: ${own.join(", ")}`);
  }
  return bits.join("<br>") || "–";
}

function rttCell(r: RttSummary | undefined): string {
  if (!r) return "–";
  return `${fmtMs(r.p50)} / ${fmtMs(r.p99)} / ${fmtMs(r.max)}`;
}

/** Markdown: the table, then per-attack details. */
export function renderMarkdown(rep: HostileReport): string {
  const m = rep.machine;
  const out: string[] = [];
  out.push("# vbus hostile guests: victims' traffic under each attack of issue 9", "");
  out.push(`Command: \`${rep.command}\`  `);
  out.push(`Date: ${rep.date}  `);
  out.push(
    `Source: commit ${rep.source.commit}${
      rep.source.modified.length
        ? ` plus uncommitted changes in ${rep.source.modified.join(", ")}`
        : " (src/, ffi/, tests/fixtures/ and bench/ as committed)"
    }  `,
  );
  out.push(
    `Machine: ${m.nproc} cores, ${m.cpuModel}, ${m.memGiB} GiB, Linux ${m.kernel}, load ` +
      `${m.loadBefore.join(" ")} before, ${m.loadAfter.join(" ")} after  `,
  );
  out.push(`Runtimes: ${Object.entries(m.runtimes).map(([k, v]) => `${k} ${v}`).join(", ")}  `);
  const s = rep.settings;
  out.push(
    `Broker: \`vbus broker\` under ${s.brokerRuntime}, a fresh process per attack; limits: ` +
      `defaults except ${rec(s.limits, ", ").replaceAll("×", " = ")}; VM regions ` +
      `${
        s.shmSize / 2 ** 20
      } MiB. Each window ${s.seconds} s; each victim sends one request every ` +
      `${s.paceMs} ms (sample timed from when it was due); streams: one message per ` +
      `${s.streamEveryMs} ms per publisher.`,
    "",
  );
  out.push(
    "| # | attack | ring victim RTT p50 / p99 / max (ms) | port victim RTT p50 / p99 / max (ms) | corrected p99 ring / port (ms) | timeouts | stream lost | broker RSS before → peak (MiB) | broker | load | attacker (broker's stats; what it did) | victims also saw |",
  );
  out.push("|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const row of rep.rows) {
    if (row.error) {
      out.push(
        `| ${row.item} | ${row.name} | – | – | – | – | – | – | ${
          row.brokerSurvived ? "up" : "**died**"
        } | ${row.load1.toFixed(1)} | harness error: ${
          row.error.replaceAll("|", "\\|").slice(0, 200)
        } | – |`,
      );
      continue;
    }
    const timeouts = Object.values(row.rtt).map((r) => r.timeouts).join(" / ");
    const corrected = ["vring", "vport"].map((w) => fmtMs(row.rtt[w]?.p99Corrected ?? NaN))
      .join(" / ");
    out.push(
      `| ${row.item} | ${row.name} | ${rttCell(row.rtt.vring)} | ${rttCell(row.rtt.vport)} | ` +
        `${corrected} | ${timeouts} | ${row.lost === 0 ? "0" : `**${row.lost}**`} | ` +
        `${row.rssBeforeMiB.toFixed(0)} → ${row.rssPeakMiB.toFixed(0)} | ` +
        `${row.brokerSurvived ? "up" : `**died** (${row.brokerEnd ?? "?"})`} | ` +
        `${row.load1.toFixed(1)} | ${attackerCell(row)} | ` +
        `${victimCell(row)} |`,
    );
  }
  out.push("");
  out.push(
    "Columns: RTT = one victim VM's request/reply round trips to the host service during the " +
      "window (ring victim: guest on its shared-memory rings; port victim: guest on the port " +
      "stream), each sample timed from when the request was due; corrected p99 = the same " +
      "samples corrected for coordinated omission (a reply later than the pace also counts " +
      "the requests the victim would have sent meanwhile, so a 2 s stall weighs as 2 s of " +
      "requests, not as one sample); timeouts = requests without a reply within 5 s (ring / port); stream lost = " +
      "numbered messages (service → both VMs, each VM → service) published and never received; " +
      "broker RSS = VmRSS from /proc before the attack's setup and its peak until the end of the " +
      "drain; broker = the process still ran and answered `$VBUS.STATS`; load = the machine's " +
      "1-minute load average at the end of the window (2 cores: above 2, other processes " +
      "competed with the bench for them); attacker = what the " +
      "broker's stats counted for the attacker's endpoints over the attack (sessions closed by " +
      "reason, ERRs sent, drops by reason, denied operations, times a block subscriber held a " +
      "publisher, messages taken in); victims also saw = wrong replies, disconnects, data-path " +
      "changes, messages on their subjects that are not the streams (foreign), undecodable " +
      "payloads (reported by the client and skipped), and what the broker dropped or closed for " +
      "them.",
    "",
  );
  out.push(
    `Total: ${rep.totalS.toFixed(0)} s. ${
      rep.failures.length === 0
        ? "All checks passed."
        : `**Failed checks:** ${rep.failures.join("; ")}`
    }`,
    "",
  );
  out.push("## Details", "");
  for (const row of rep.rows) {
    out.push(`### ${row.item} ${row.name}`, "");
    out.push(`${row.title}. ${row.config ? `Config: ${row.config}.` : ""}`.trim(), "");
    if (row.error) out.push(`Harness error: ${row.error}`, "");
    const lines: string[] = [];
    for (const [who, r] of Object.entries(row.rtt)) {
      lines.push(
        `${who}: ${r.n} round trips, p50 ${fmtMs(r.p50)} ms, p99 ${fmtMs(r.p99)} ms, max ` +
          `${fmtMs(r.max)} ms, corrected p99 ${
            fmtMs(r.p99Corrected)
          } ms, ${r.timeouts} timeouts, ${r.wrong} wrong replies` +
          (Object.keys(r.errors).length ? `, errors ${rec(r.errors)}` : ""),
      );
    }
    if (row.legit) {
      const streams = row.legit.streams.map((x) =>
        `${x.stream} → ${x.subscriber} ${x.received}/${x.sent}${
          x.duplicates ? ` (${x.duplicates} dup)` : ""
        }`
      );
      lines.push(`streams: ${streams.join(", ")}`);
      for (const c of row.legit.clients) {
        const bits: string[] = [];
        if (c.pathBefore !== c.pathAfter) bits.push(`path ${c.pathBefore} → ${c.pathAfter}`);
        if (c.disconnects) bits.push(`${c.disconnects} disconnects`);
        if (c.foreign) bits.push(`${c.foreign} foreign messages`);
        if (c.undecodable) bits.push(`${c.undecodable} undecodable (reported, skipped)`);
        if (c.slowConsumer) bits.push(`${c.slowConsumer} dropped as slow consumer`);
        if (Object.keys(c.errors).length) bits.push(`error events ${rec(c.errors)}`);
        if (Object.keys(c.publishErrors).length) {
          bits.push(`publish errors ${rec(c.publishErrors)}`);
        }
        if (bits.length) lines.push(`${c.name}: ${bits.join(", ")}`);
      }
      if (row.legit.serviceEvents) {
        lines.push(`service published ${row.legit.serviceEvents} events to svc.events`);
      }
      if (row.legit.serviceBadRequests) {
        lines.push(
          `service got ${row.legit.serviceBadRequests} undecodable requests (answered with an error value)`,
        );
      }
    }
    for (const [who, d] of Object.entries(row.victims)) {
      const bad = ["closed", "errors", "drops", "blocked"].filter((k) => d[k]);
      const show = (k: string) =>
        `${k} ${typeof d[k] === "number" ? d[k] : rec(d[k] as Record<string, number>)}`;
      if (bad.length) lines.push(`broker stats for ${who}: ${bad.map(show).join("; ")}`);
    }
    for (const [who, d] of Object.entries(row.attacker)) {
      lines.push(`broker stats for ${who}: ${JSON.stringify(d)}`);
    }
    if (Object.keys(row.observed).length) {
      lines.push(`attacker saw: ${JSON.stringify(row.observed)}`);
    }
    if (Object.keys(row.brokerLog).length) {
      lines.push(
        `broker log: ${Object.entries(row.brokerLog).map(([k, v]) => `${v}× ${k}`).join("; ")}`,
      );
    }
    lines.push(
      `broker RSS ${row.rssBeforeMiB.toFixed(1)} → peak ${row.rssPeakMiB.toFixed(1)} MiB; wall ${
        row.wallS.toFixed(1)
      } s`,
    );
    if (!row.brokerSurvived && row.brokerStderrTail?.length) {
      lines.push(`broker stderr: ${row.brokerStderrTail.slice(-5).join(" / ")}`);
    }
    for (const l of lines) out.push(`- ${l}`);
    out.push("");
  }
  return out.join("\n");
}

/** JSON with non-finite numbers as null. */
export function renderJson(rep: HostileReport): string {
  return JSON.stringify(
    rep,
    (_k, v) => typeof v === "number" && !Number.isFinite(v) ? null : v,
    2,
  ) +
    "\n";
}

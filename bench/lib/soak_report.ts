/**
 * The chaos soak's result: the checks (lost-unreported must be 0, broker RSS flat after the
 * warm-up, ...), the accounting table, resources, chaos events and diagnostics, as Markdown
 * (`latest.md`) and JSON (`latest.json`, schema `vbus-soak/1`).
 *
 * @example
 * ```ts
 * import { renderMarkdown } from "./soak_report.ts";
 * writeFileSync("latest.md", renderMarkdown(result));
 * ```
 * @module
 */
import type { LedgerTotals, LostRange } from "./soak_ledger.ts";
import type { Incarnation, ResourceSample } from "./soak_broker.ts";
import type { DisconnectRecord, RequestCounts } from "./soak_clients.ts";
import type { AttackResult } from "./soak_hostile.ts";

/** One chaos event. */
export interface ChaosEvent {
  n: number;
  kind: string;
  target?: string;
  /** Seconds since the soak started. */
  t: number;
  /** Seconds the event itself took (kill + restart, port down time, attack). */
  durationS: number;
  /** Milliseconds from the end of the event until every client was back and confirmed. */
  recoveredMs: number | null;
  detail?: Record<string, unknown>;
  attack?: AttackResult;
}

/** One check of the run. */
export interface Check {
  name: string;
  ok: boolean;
  /** Fatal checks decide the exit code. */
  fatal: boolean;
  detail: string;
}

/** Everything the soak reports. */
export interface SoakResult {
  schema: "vbus-soak/1";
  command: string;
  date: string;
  machine: {
    nproc: number;
    model: string;
    kernel: string;
    memTotalKiB: number | null;
    loadBefore: string;
    loadAfter: string;
  };
  runtimes: { broker: string; clients: string; deno: string; bun: string };
  settings: Record<string, unknown>;
  durationS: number;
  warmupS: number;
  topology: { name: string; kind: string; path: string; role: string; subscribesTo: string[] }[];
  totals: LedgerTotals;
  perStream: {
    stream: string;
    attempted: number;
    sent: number;
    rejected: Record<string, number>;
    subscribers: {
      name: string;
      required: number;
      delivered: number;
      extra: number;
      notSubscribed: number;
      reported: Record<string, number>;
      unverifiable: number;
      lost: Record<string, number>;
      duplicates: number;
      reordered: number;
    }[];
  }[];
  requests: RequestCounts & { byClient: Record<string, RequestCounts> };
  resources: {
    baselineRssKiB: number | null;
    rssMinKiB: number | null;
    rssMaxKiB: number | null;
    rssMaxAfterWarmupKiB: number | null;
    rssRatio: number | null;
    fdBaseline: number | null;
    fdMaxAfterWarmup: number | null;
    shmFilesMin: number;
    shmFilesMax: number;
    shmStaleMax: number;
    shmLeftAfterStop: number;
    soakRssMinKiB: number | null;
    soakRssMaxKiB: number | null;
    samples: ResourceSample[];
  };
  incarnations: (Incarnation & {
    rssAt5sKiB: number | null;
    rssMaxKiB: number | null;
    fdsMax: number | null;
  })[];
  chaos: ChaosEvent[];
  hostile: {
    sessions: number;
    sessionsClosed: number;
    errors: Record<string, number>;
    negotiationFailures: number;
    lastNegotiationError: string;
    sinkReceived: number;
  };
  clients: {
    name: string;
    sessions: number;
    errors: Record<string, number>;
    slowReports: number;
    inFlightSource: string;
    inFlightReported: number;
    /** `bus.stats` at the end (disconnects, resent, maybeLost, ... as the client counts them). */
    busStats: Record<string, number>;
  }[];
  /** Unexplained disconnects first (at most 300), then up to 100 explained ones. */
  disconnects: (DisconnectRecord & { cause: string })[];
  /** All disconnects of innocent clients by cause. */
  disconnectCounts: Record<string, number>;
  lostRanges: (LostRange & { context: string })[];
  lostRangesDropped: number;
  orderSamples: {
    what: string;
    stream: string;
    subscriber: string;
    seq: number;
    t: number;
    gen: number;
    context: string;
  }[];
  corruptSamples: string[];
  brokerLog: Record<string, number>;
  brokerStats: unknown;
  findings: string[];
  checks: Check[];
  exitCode: number;
}

const fmt = (
  n: number | null | undefined,
) => (n === null || n === undefined ? "–" : n.toLocaleString("en-US"));
const mib = (
  kib: number | null | undefined,
) => (kib === null || kib === undefined ? "–" : `${(kib / 1024).toFixed(1)} MiB`);
const pct = (n: number, of: number) => (of > 0 ? ` (${((100 * n) / of).toFixed(2)} %)` : "");
const obj = (o: Record<string, number>) => {
  const e = Object.entries(o).filter(([, n]) => n > 0);
  return e.length ? e.map(([k, n]) => `${k} ${fmt(n)}`).join(", ") : "none";
};

/** What each reported reason means, for the table. */
export const REASON_TEXT: Record<string, string> = {
  subscriber_session_ended:
    "in flight to a subscriber when its session ended (its `disconnected` event)",
  slow_consumer: "SLOW_CONSUMER: dropped for a slow subscriber (ERR with a count)",
  flood: "FLOOD: rejected from the publisher (ERR with a count)",
  publisher_reported_in_flight: "possibly lost in flight, counted by the publisher's client",
};

/** The Markdown report. */
export function renderMarkdown(r: SoakResult): string {
  const t = r.totals;
  const L: string[] = [];
  L.push(`# vbus chaos soak`, "");
  L.push(`\`${r.command}\``, "");
  L.push(
    `${r.date} · ${r.machine.nproc} cores (${r.machine.model}) · kernel ${r.machine.kernel} · broker ${r.runtimes.broker}, clients ${r.runtimes.clients} · ` +
      `${
        (r.durationS / 60).toFixed(1)
      } min (warm-up ${r.warmupS} s) · load ${r.machine.loadBefore} → ${r.machine.loadAfter}`,
    "",
  );
  L.push(`## Checks`, "");
  L.push(`| check | result | detail |`, `|---|---|---|`);
  for (const c of r.checks) {
    L.push(`| ${c.name}${c.fatal ? "" : " (info)"} | ${c.ok ? "ok" : "**FAIL**"} | ${c.detail} |`);
  }
  L.push("");
  L.push(`## Accounting`, "");
  L.push(
    `Unit: a *copy* = one message x one subscriber of its stream. *Required*: the subscriber had a confirmed subscription (a flush after it resolved) in the broker generation the message was handed to, before the hand-off, and its session had not ended. Definitions: \`bench/lib/soak_ledger.ts\`.`,
    "",
  );
  L.push(`| | count |`, `|---|---:|`);
  L.push(`| publishes attempted | ${fmt(t.attempted)} |`);
  L.push(
    `| publishes rejected (not sent; the promise rejected) | ${
      fmt(Object.values(t.rejected).reduce((a, b) => a + b, 0))
    } (${obj(t.rejected)}) |`,
  );
  L.push(`| **sent** (publish resolved) | **${fmt(t.sent)}** |`);
  if (t.pending || t.neverHandedOff) {
    L.push(
      `| unresolved at the end / never handed to a session | ${fmt(t.pending)} / ${
        fmt(t.neverHandedOff)
      } |`,
    );
  }
  L.push(
    `| copies published while the subscriber was not subscribed (not required) | ${
      fmt(t.notSubscribed)
    } |`,
  );
  L.push(`| **required copies** | **${fmt(t.required)}** |`);
  L.push(
    `| **delivered** (required copies received) | **${fmt(t.delivered)}**${
      pct(t.delivered, t.required)
    } |`,
  );
  L.push(
    `| dropped-and-reported, total | ${fmt(t.reportedTotal)}${pct(t.reportedTotal, t.required)} |`,
  );
  for (const [k, n] of Object.entries(t.reported).sort((a, b) => b[1] - a[1])) {
    L.push(`| &nbsp;&nbsp;${REASON_TEXT[k] ?? k.replace(/^err_/, "ERR ")} | ${fmt(n)} |`);
  }
  L.push(
    `| unverifiable (nobody got it; publisher's session ended; no subscriber ready at its re-send) | ${
      fmt(t.unverifiable)
    } |`,
  );
  L.push(
    `| **lost-unreported** (must be 0) | **${fmt(t.lostTotal)}**${
      t.lostTotal ? ` (${obj(t.lost)})` : ""
    } |`,
  );
  L.push(`| extra copies (received, not required) | ${fmt(t.extra)} |`);
  L.push(
    `| duplicates / reordered / arrived after classification | ${fmt(t.duplicates)} / ${
      fmt(t.reordered)
    } / ${fmt(t.lateAfterClassified)} |`,
  );
  L.push(`| corrupt payloads | ${fmt(t.corrupt)} |`);
  const rq = r.requests;
  L.push(
    `| requests sent / replied / failed (reported) / wrong / hung | ${fmt(rq.sent)} / ${
      fmt(rq.ok)
    } / ${fmt(Object.values(rq.failed).reduce((a, b) => a + b, 0))} (${obj(rq.failed)}) / ${
      fmt(rq.wrong)
    } / ${fmt(rq.pending)} |`,
  );
  const res = r.resources;
  L.push(
    `| broker RSS min / after warm-up / max after warm-up | ${mib(res.rssMinKiB)} / ${
      mib(res.baselineRssKiB)
    } / ${mib(res.rssMaxAfterWarmupKiB)} (${res.rssRatio?.toFixed(2) ?? "–"}x) |`,
  );
  L.push(
    `| broker open fds after warm-up / max | ${fmt(res.fdBaseline)} / ${
      fmt(res.fdMaxAfterWarmup)
    } |`,
  );
  L.push(
    `| /dev/shm files of this soak min / max (stale max; left after stop) | ${res.shmFilesMin} / ${res.shmFilesMax} (${res.shmStaleMax}; ${res.shmLeftAfterStop}) |`,
  );
  L.push(`| soak process RSS min / max | ${mib(res.soakRssMinKiB)} / ${mib(res.soakRssMaxKiB)} |`);
  L.push(`| disconnects of innocent clients, by cause | ${obj(r.disconnectCounts)} |`);
  const kinds: Record<string, number> = {};
  for (const e of r.chaos) kinds[e.kind] = (kinds[e.kind] ?? 0) + 1;
  L.push(`| chaos events | ${r.chaos.length} (${obj(kinds)}) |`);
  const rec = r.chaos.map((e) => e.recoveredMs).filter((x): x is number => x !== null);
  L.push(
    `| recovery after an event: median / max | ${
      rec.length ? `${median(rec)} ms / ${Math.max(...rec)} ms` : "–"
    } |`,
  );
  L.push("");
  if (r.findings.length) {
    L.push(`## Findings`, "");
    for (const f of r.findings) L.push(`- ${f}`);
    L.push("");
  }
  if (r.lostRanges.length) {
    L.push(
      `## Lost-unreported copies (first ${r.lostRanges.length}${
        r.lostRangesDropped ? `, ${r.lostRangesDropped} more ranges not listed` : ""
      })`,
      "",
    );
    L.push(
      `| stream → subscriber | seqs | kind | published at (s) | mode | publisher span | subscriber span | got it | context |`,
      `|---|---|---|---|---|---|---|---|---|`,
    );
    for (const x of r.lostRanges.slice(0, 60)) {
      const ps = x.publisherSpan
        ? `#${x.publisherSpan.index} gen ${x.publisherSpan.gen} ${sec(x.publisherSpan.start)}–${
          sec(x.publisherSpan.end)
        }${x.publisherSpan.endReason ? ` (${x.publisherSpan.endReason})` : ""}`
        : "–";
      const ss = x.subscriberSpan
        ? `#${x.subscriberSpan.index} gen ${x.subscriberSpan.gen} ${sec(x.subscriberSpan.start)}–${
          sec(x.subscriberSpan.end)
        }${x.subscriberSpan.endReason ? ` (${x.subscriberSpan.endReason})` : ""}`
        : "–";
      L.push(
        `| ${x.stream} → ${x.subscriber} | ${x.fromSeq}${
          x.count > 1 ? `–${x.toSeq} (${x.count})` : ""
        } | ${x.kind} | ${sec(x.tFirst)}–${sec(x.tLast)} | ${x.mode} | ${ps} | ${ss} | ${
          x.receivedBy.join(", ") || "nobody"
        } | ${x.context} |`,
      );
    }
    L.push("");
  }
  const unexplained = r.disconnects.filter((d) => d.cause === "unexplained");
  if (unexplained.length) {
    L.push(
      `## Disconnects of innocent clients not caused by chaos aimed at them (${
        r.disconnectCounts.unexplained ?? unexplained.length
      })`,
      "",
    );
    // Grouped by client and the chaos event they happened in: one row each, with the first.
    const groups = new Map<
      string,
      { first: (typeof unexplained)[number]; last: number; n: number }
    >();
    for (const d of unexplained) {
      const key = `${d.client}|${chaosAt(r.chaos, d.t).split(" at ")[0]}`;
      const g = groups.get(key);
      if (g) {
        g.n++;
        g.last = d.t;
      } else groups.set(key, { first: d, last: d.t, n: 1 });
    }
    L.push(
      `| client | count | first – last (s) | first reason | errors just before the first | during |`,
      `|---|---:|---|---|---|---|`,
    );
    for (const { first: d, last, n } of [...groups.values()].slice(0, 40)) {
      L.push(
        `| ${d.client} | ${n} | ${d.t.toFixed(2)} – ${last.toFixed(2)} | ${d.reason} | ${
          d.recentErrors.map((e) => `${e.code}: ${e.message}`).join("; ").slice(0, 240) || "–"
        } | ${chaosAt(r.chaos, d.t)} |`,
      );
    }
    L.push("");
  }
  L.push(`## Per stream`, "");
  L.push(
    `| stream | sent | subscriber | required | delivered | reported | lost | not subscribed | extra |`,
    `|---|---:|---|---:|---:|---|---:|---:|---:|`,
  );
  for (const s of r.perStream) {
    for (const [i, q] of s.subscribers.entries()) {
      const lost = Object.values(q.lost).reduce((a, b) => a + b, 0);
      L.push(
        `| ${i === 0 ? s.stream : ""} | ${i === 0 ? fmt(s.sent) : ""} | ${q.name} | ${
          fmt(q.required)
        } | ${fmt(q.delivered)} | ${obj(q.reported)} | ${lost ? `**${fmt(lost)}**` : "0"} | ${
          fmt(q.notSubscribed)
        } | ${fmt(q.extra)} |`,
      );
    }
  }
  L.push("");
  L.push(`## Broker incarnations`, "");
  L.push(
    `| gen | pid | started (s) | startup | ended (s) | how | RSS at +5 s | RSS max | fds max |`,
    `|---:|---:|---:|---:|---:|---|---:|---:|---:|`,
  );
  for (const i of r.incarnations) {
    L.push(
      `| ${i.gen} | ${i.pid} | ${i.startedAt.toFixed(1)} | ${i.startupMs} ms | ${
        i.endedAt?.toFixed(1) ?? "–"
      } | ${i.crashed ? `**crashed: ${i.end}**` : i.end ?? "–"} | ${mib(i.rssAt5sKiB)} | ${
        mib(i.rssMaxKiB)
      } | ${fmt(i.fdsMax)} |`,
    );
  }
  L.push("");
  L.push(`## Chaos events`, "");
  L.push(
    `| # | at (s) | event | target | took | recovered after | broker's answer |`,
    `|---:|---:|---|---|---:|---:|---|`,
  );
  for (const e of r.chaos) {
    const answer = e.attack
      ? `${e.attack.attempted ? "" : "(no session to attack) "}${
        e.attack.sessionClosed ? "hostile session closed" : "hostile session kept"
      }; ERR ${obj(e.attack.errors)}; ${fmt(e.attack.frames)} frames`
      : e.detail
      ? Object.entries(e.detail).map(([k, v]) => `${k} ${v}`).join(", ")
      : "";
    L.push(
      `| ${e.n} | ${e.t.toFixed(1)} | ${e.kind} | ${e.target ?? ""} | ${
        e.durationS.toFixed(1)
      } s | ${e.recoveredMs === null ? "**not recovered**" : `${e.recoveredMs} ms`} | ${answer} |`,
    );
  }
  L.push("");
  L.push(`## Clients`, "");
  L.push(
    `| client | kind | path | role | subscribes to | sessions | errors received | slow-consumer reports | in-flight loss count from | bus.stats at the end |`,
    `|---|---|---|---|---|---:|---|---:|---|---|`,
  );
  for (const c of r.clients) {
    const topo = r.topology.find((x) => x.name === c.name);
    L.push(
      `| ${c.name} | ${topo?.kind ?? ""} | ${topo?.path ?? ""} | ${topo?.role ?? ""} | ${
        topo?.subscribesTo.join(", ") ?? ""
      } | ${c.sessions} | ${obj(c.errors)} | ${c.slowReports} | ${c.inFlightSource}${
        c.inFlightReported ? ` (${c.inFlightReported})` : ""
      } | ${obj(c.busStats)} |`,
    );
  }
  L.push(
    `| evil (hostile) | vm | ring | hostile | soak.>, hostile.> | ${r.hostile.sessions} (${r.hostile.sessionsClosed} closed by the broker) | ${
      obj(r.hostile.errors)
    } | | | |`,
  );
  L.push("");
  const logs = Object.entries(r.brokerLog).sort((a, b) => b[1] - a[1]).slice(0, 25);
  if (logs.length) {
    L.push(`## Broker warnings and errors (by message)`, "");
    L.push(`| count | line |`, `|---:|---|`);
    for (const [k, n] of logs) L.push(`| ${fmt(n)} | \`${k.replace(/\|/g, "\\|")}\` |`);
    L.push("");
  }
  if (r.orderSamples.length) {
    L.push(`## Duplicates and reordered arrivals (first ${r.orderSamples.length})`, "");
    L.push(
      `| what | stream → subscriber | seq | arrived at (s) | gen | after |`,
      `|---|---|---:|---:|---:|---|`,
    );
    for (const o of r.orderSamples.slice(0, 30)) {
      L.push(
        `| ${o.what} | ${o.stream} → ${o.subscriber} | ${o.seq} | ${
          o.t.toFixed(2)
        } | ${o.gen} | ${o.context} |`,
      );
    }
    L.push("");
  }
  if (r.corruptSamples.length) {
    L.push(`## Corrupt payloads (samples)`, "");
    for (const c of r.corruptSamples) L.push(`- ${c}`);
    L.push("");
  }
  return L.join("\n");
}

/** The most recent chaos event at or before `t` (seconds), as text. */
export function chaosAt(events: ChaosEvent[], t: number): string {
  let last: ChaosEvent | undefined;
  for (const e of events) if (e.t <= t + 0.05) last = e;
  if (!last) return "before any chaos";
  const dt = t - last.t;
  return `#${last.n} ${last.kind}${last.target ? ` ${last.target}` : ""} at ${
    last.t.toFixed(1)
  } s (+${dt.toFixed(2)} s)`;
}

function sec(tSoak: number): string {
  return Number.isFinite(tSoak) ? tSoak.toFixed(2) : "open";
}

/** Median of a non-empty list. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

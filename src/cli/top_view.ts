/**
 * What `vbus top` shows: one screen of text made from two `$VBUS.STATS` answers (rates are the
 * difference over the broker's own clock). VMs in config order, then all host clients together
 * and each of them on its own, then drops by reason and the bridges. Lines are cut to the
 * terminal's width and the session list to its height; names, subjects and client descriptions
 * come from peers, so control characters in them are replaced (a client must not be able to
 * send escape sequences to the operator's terminal).
 *
 * @example
 * ```ts
 * import { renderTop } from "./top_view.ts";
 * // const lines = renderTop({ stats: now }, { stats: before }, { width: 120, height: 40 });
 * // process.stdout.write(lines.join("\n"));
 * ```
 * @module
 */
import type { BrokerStats, EndpointStats } from "../broker/stats.ts";
import type { SessionStats } from "../broker/session_stats.ts";
import type { RingFill } from "../ring/fill.ts";

/** Screen size and what else the header and status line say. */
export interface TopViewOptions {
  width: number;
  height: number;
  /** Refresh interval, for the header. */
  intervalMs?: number;
  /** This `vbus top`'s own session id, marked in the list. */
  self?: string;
  /** A problem to show on the status line (e.g. the broker is unreachable). */
  status?: string;
}

/** One answer to `$VBUS.STATS`. */
export interface TopSample {
  stats: BrokerStats;
}

const COLUMNS: [string, number][] = [
  ["NAME", 28],
  ["PATH", 6],
  ["SUBS", 5],
  ["IN msg/s", 9],
  ["OUT msg/s", 9],
  ["IN B/s", 10],
  ["OUT B/s", 10],
  ["DROPPED", 8],
  ["RING IN", 7],
  ["RING OUT", 8],
  ["BACKLOG", 9],
];

/** The screen's lines (no escape sequences: the caller positions them). */
export function renderTop(
  cur: TopSample,
  prev: TopSample | undefined,
  opts: TopViewOptions,
): string[] {
  const s = cur.stats;
  // Rates over the broker's clock; none across a broker restart.
  const dt = prev && s.uptimeMs > prev.stats.uptimeMs
    ? (s.uptimeMs - prev.stats.uptimeMs) / 1000
    : 0;
  const before = (name: string) =>
    prev?.stats.vms.find((v) => v.name === name) ??
      (name === "host" ? prev?.stats.host : undefined);
  const sessions = s.sessions ?? [];
  const hostSessions = sessions.filter((x) => x.endpoint === "host");
  const connectedVms = s.vms.filter((v) => v.connected).length;
  const bridges = s.bridges ?? [];
  const lines: string[] = [];
  const every = opts.intervalMs ? ` · every ${fmtSeconds(opts.intervalMs)}` : "";
  lines.push(
    `vbus top · broker up ${
      fmtDuration(s.uptimeMs)
    } · VMs ${connectedVms}/${s.vms.length} connected · ` +
      `host clients ${hostSessions.length}` +
      (bridges.length
        ? ` · bridges ${bridges.filter((b) => b.connected).length}/${bridges.length}`
        : "") +
      `${every} · q quits`,
  );
  lines.push("");
  lines.push(COLUMNS.map(([h, w], i) => i === 0 ? h.padEnd(w) : h.padStart(w)).join(" "));
  const rate = (now: number, then: number | undefined) =>
    dt > 0 && then !== undefined ? Math.max(0, now - then) / dt : undefined;
  const endpointRow = (e: EndpointStats, label: string, session?: SessionStats) => {
    const p = before(e.name);
    return row([
      `${e.connected ? "●" : "○"} ${label}`,
      e.path,
      String(e.subscriptions),
      fmtCount(rate(e.msgsIn, p?.msgsIn)),
      fmtCount(rate(e.msgsOut, p?.msgsOut)),
      fmtBytes(rate(e.bytesIn, p?.bytesIn)),
      fmtBytes(rate(e.bytesOut, p?.bytesOut)),
      fmtCount(e.dropped),
      fmtFill(session?.rings?.inbound),
      fmtFill(session?.rings?.outbound),
      session ? fmtBytes(session.backlogBytes) : "",
    ]);
  };
  for (const v of s.vms) {
    lines.push(endpointRow(v, clean(v.name), sessions.find((x) => x.endpoint === v.name)));
  }
  lines.push(endpointRow(s.host, `host (${hostSessions.length})`));
  // Each host client on its own, as many as fit (the rest are counted).
  const reserved = 4 + dropLines(s).length + bridges.length + (opts.status ? 1 : 0);
  const room = Math.max(0, opts.height - lines.length - reserved);
  const prevSessions = new Map((prev?.stats.sessions ?? []).map((x) => [x.id, x]));
  const shown = hostSessions.length > room ? Math.max(0, room - 1) : hostSessions.length;
  for (const x of hostSessions.slice(0, shown)) {
    const p = prevSessions.get(x.id)?.stats;
    const st = x.stats;
    const who = `${x.id || "(before HELLO)"} ${
      x.id === opts.self ? "(this top)" : shortClient(x.client)
    }`;
    lines.push(row([
      `  ${clean(who)}`,
      x.path + (x.wake === "futex" ? "*" : ""),
      String(x.subscriptions),
      fmtCount(st ? rate(st.msgsIn, p?.msgsIn) : undefined),
      fmtCount(st ? rate(st.msgsOut, p?.msgsOut) : undefined),
      fmtBytes(st ? rate(st.bytesIn, p?.bytesIn) : undefined),
      fmtBytes(st ? rate(st.bytesOut, p?.bytesOut) : undefined),
      st ? fmtCount(st.dropped) : "",
      fmtFill(x.rings?.inbound),
      fmtFill(x.rings?.outbound),
      fmtBytes(x.backlogBytes),
    ]));
  }
  if (shown < hostSessions.length) {
    lines.push(`  … ${hostSessions.length - shown} more host clients`);
  }
  lines.push("");
  lines.push(...dropLines(s));
  for (const b of bridges) {
    const pb = prev?.stats.bridges?.find((x) => x.name === b.name);
    lines.push(
      `bridge ${clean(b.name)}: ${
        b.connected ? `connected to ${clean(b.server ?? "?")}` : "disconnected"
      }` +
        ` · out ${fmtCount(rate(b.msgsOut, pb?.msgsOut))} msg/s · in ${
          fmtCount(rate(b.msgsIn, pb?.msgsIn))
        } msg/s` +
        ` · buffered ${b.buffered} · dropped ${b.dropped}` +
        (!b.connected && b.lastError ? ` · ${clean(b.lastError)}` : ""),
    );
  }
  if (opts.status) lines.push(clean(opts.status));
  return lines.slice(0, Math.max(1, opts.height)).map((l) => cut(l, opts.width));
}

/** "drops: vm2 too_large 1, host slow_consumer 5", or "drops: none". */
function dropLines(s: BrokerStats): string[] {
  const parts: string[] = [];
  for (const e of [...s.vms, s.host]) {
    for (const [reason, n] of Object.entries(e.drops)) {
      if (n > 0) parts.push(`${clean(e.name)} ${reason} ${n}`);
    }
  }
  return [`drops: ${parts.length ? parts.join(", ") : "none"}`];
}

function row(cells: string[]): string {
  return cells.map((c, i) => {
    const w = COLUMNS[i][1];
    const text = cut(c, w);
    return i === 0 ? text.padEnd(w) : text.padStart(w);
  }).join(" ");
}

/** Peer-provided text without control characters (C0, DEL, C1). */
function clean(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
}

/** The part of a HELLO's client description worth a column: the app name, else the library. */
function shortClient(client: string): string {
  const words = client.split(" ").filter(Boolean);
  return words.length > 2 ? words.slice(2).join(" ") : words[0] ?? "";
}

function cut(text: string, width: number): string {
  const chars = [...text];
  return chars.length <= width ? text : chars.slice(0, Math.max(0, width - 1)).join("") + "…";
}

function fmtCount(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return "-";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return n >= 100 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
}

function fmtBytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}

function fmtFill(r: RingFill | undefined): string {
  if (!r || r.capacityBytes === 0) return "-";
  const pct = (r.usedBytes / r.capacityBytes) * 100;
  return `${pct > 0 && pct < 1 ? pct.toFixed(1) : Math.round(pct)}%`;
}

function fmtSeconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))}s`;
}

function fmtDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, "0")}h`;
}

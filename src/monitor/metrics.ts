/**
 * The broker's stats in the Prometheus text exposition format (version 0.0.4), served at
 * `/metrics`. Names and labels are stable: every metric is `vbus_…`, counters end in `_total`,
 * sizes are in bytes; labels are `vm` (a VM's name, or `host` for all host-local clients
 * together: no VM may be named "host"), `path` (`stream`, `ring`, `none`), `reason` (drops, and
 * why sessions were closed), `code` (errors), `ring` (`inbound`: broker to peer, `outbound`:
 * peer to broker) and `bridge`. Drop reasons the broker knows are always present (at 0), so a
 * rate over them works from the first scrape.
 *
 * @example
 * ```ts
 * import { prometheusText } from "./metrics.ts";
 * // const text = prometheusText(broker.stats(), { runtime: "bun/1.4.5", version: "0.1.0" });
 * ```
 * @module
 */
import { type BrokerStats, DropReason, type EndpointStats } from "../broker/stats.ts";
import type { SessionStats } from "../broker/session_stats.ts";

/** Content-Type of {@link prometheusText}. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Data paths, as the `path` label of `vbus_data_path`. */
const PATHS = ["stream", "ring", "none"] as const;

/** What the metrics say about the process (`vbus_info`). */
export interface MetricsInfo {
  runtime: string;
  version: string;
}

type Labels = Record<string, string>;
type Kind = "counter" | "gauge";

/** Collects samples by metric name, in the order names were first used. */
class Exposition {
  #families = new Map<string, { help: string; kind: Kind; lines: string[] }>();

  add(name: string, kind: Kind, help: string, labels: Labels, value: number) {
    let family = this.#families.get(name);
    if (!family) this.#families.set(name, family = { help, kind, lines: [] });
    const keys = Object.keys(labels);
    const set = keys.length === 0
      ? ""
      : `{${keys.map((k) => `${k}="${escapeLabel(labels[k])}"`).join(",")}}`;
    family.lines.push(`${name}${set} ${formatValue(value)}`);
  }

  text(): string {
    let out = "";
    for (const [name, f] of this.#families) {
      out += `# HELP ${name} ${escapeHelp(f.help)}\n# TYPE ${name} ${f.kind}\n`;
      for (const line of f.lines) out += line + "\n";
    }
    return out;
  }
}

/** The whole exposition for one stats snapshot. */
export function prometheusText(stats: BrokerStats, info: MetricsInfo): string {
  const m = new Exposition();
  m.add("vbus_info", "gauge", "The broker process: its runtime and vbus version.", {
    runtime: info.runtime,
    version: info.version,
  }, 1);
  m.add(
    "vbus_start_time_seconds",
    "gauge",
    "When the broker started (Unix time).",
    {},
    Date.parse(stats.startedAt) / 1000,
  );
  m.add(
    "vbus_uptime_seconds",
    "gauge",
    "Seconds since the broker started.",
    {},
    stats.uptimeMs / 1000,
  );
  const sessions = stats.sessions ?? [];
  for (const e of [...stats.vms, stats.host]) {
    endpoint(
      m,
      e,
      sessions.filter((s) => s.endpoint === e.name),
    );
  }
  for (const b of stats.bridges ?? []) {
    const l = { bridge: b.name };
    m.add(
      "vbus_bridge_connected",
      "gauge",
      "1 while the bridge is connected to a server.",
      l,
      b.connected ? 1 : 0,
    );
    m.add(
      "vbus_bridge_connects_total",
      "counter",
      "Connections the bridge made (the first and every reconnect).",
      l,
      b.connects,
    );
    m.add(
      "vbus_bridge_disconnects_total",
      "counter",
      "Connections the bridge lost.",
      l,
      b.disconnects,
    );
    m.add(
      "vbus_bridge_messages_sent_total",
      "counter",
      "Messages the bridge handed to the other system.",
      l,
      b.msgsOut,
    );
    m.add(
      "vbus_bridge_sent_bytes_total",
      "counter",
      "Payload bytes the bridge handed to the other system.",
      l,
      b.bytesOut,
    );
    m.add(
      "vbus_bridge_messages_received_total",
      "counter",
      "Messages the bridge took in from the other system.",
      l,
      b.msgsIn,
    );
    m.add(
      "vbus_bridge_received_bytes_total",
      "counter",
      "Payload bytes the bridge took in from the other system.",
      l,
      b.bytesIn,
    );
    m.add(
      "vbus_bridge_buffered_messages",
      "gauge",
      "Messages waiting in the bridge's buffer.",
      l,
      b.buffered,
    );
    m.add(
      "vbus_bridge_buffered_bytes",
      "gauge",
      "Bytes waiting in the bridge's buffer.",
      l,
      b.bufferedBytes,
    );
    for (const [reason, n] of Object.entries(b.drops)) {
      m.add(
        "vbus_bridge_messages_dropped_total",
        "counter",
        "Messages the bridge did not carry, by reason.",
        { ...l, reason },
        n,
      );
    }
    m.add(
      "vbus_bridge_maybe_lost_total",
      "counter",
      "Messages handed to a connection lost before the server confirmed them.",
      l,
      b.maybeLost,
    );
    m.add(
      "vbus_bridge_pending_replies",
      "gauge",
      "Requests in flight across the bridge.",
      l,
      b.pendingReplies,
    );
    m.add(
      "vbus_bridge_subscriptions",
      "gauge",
      "Subscriptions the bridge holds on the other system.",
      l,
      b.subscriptions,
    );
  }
  return m.text();
}

/** One VM's (or all host clients') metrics, with the live sessions on it. */
function endpoint(m: Exposition, e: EndpointStats, sessions: SessionStats[]) {
  const l = { vm: e.name };
  m.add(
    "vbus_connected",
    "gauge",
    "1 while a session is open on the VM (host: any host client).",
    l,
    e.connected ? 1 : 0,
  );
  m.add(
    "vbus_sessions_open",
    "gauge",
    "Sessions open now (a VM has at most one).",
    l,
    sessions.filter((s) => s.state === "open").length,
  );
  m.add("vbus_sessions_started_total", "counter", "Sessions started (each HELLO).", l, e.sessions);
  for (const path of PATHS) {
    m.add(
      "vbus_data_path",
      "gauge",
      "1 for the data path in use now (host: ring if any client uses rings).",
      { ...l, path },
      e.path === path ? 1 : 0,
    );
  }
  m.add(
    "vbus_messages_received_total",
    "counter",
    "Messages published by the VM and accepted.",
    l,
    e.msgsIn,
  );
  m.add(
    "vbus_received_bytes_total",
    "counter",
    "Payload bytes of the messages received.",
    l,
    e.bytesIn,
  );
  m.add("vbus_messages_sent_total", "counter", "Messages delivered to the VM.", l, e.msgsOut);
  m.add("vbus_sent_bytes_total", "counter", "Payload bytes of the messages sent.", l, e.bytesOut);
  m.add(
    "vbus_ring_messages_received_total",
    "counter",
    "Messages that came in through the shared-memory ring.",
    l,
    e.ringMsgsIn,
  );
  m.add(
    "vbus_ring_messages_sent_total",
    "counter",
    "Messages delivered through the shared-memory ring.",
    l,
    e.ringMsgsOut,
  );
  m.add(
    "vbus_ring_messages_queued_total",
    "counter",
    "Messages that waited in the broker's backlog because the ring was full (some may be dropped later).",
    l,
    e.ringMsgsQueued,
  );
  m.add(
    "vbus_ring_records_unretained_total",
    "counter",
    "Ring records from the VM whose messages waited in a backlog beyond the half of its ring the broker retains: not sent again if the broker dies.",
    l,
    e.ringUnretained,
  );
  const reasons = new Set<string>([...Object.values(DropReason), ...Object.keys(e.drops)]);
  for (const reason of reasons) {
    m.add(
      "vbus_messages_dropped_total",
      "counter",
      "Messages not delivered to the VM or not accepted from it, by reason.",
      { ...l, reason },
      e.drops[reason] ?? 0,
    );
  }
  m.add(
    "vbus_denied_total",
    "counter",
    "Publishes and subscribes refused by permissions.",
    l,
    e.denied,
  );
  m.add(
    "vbus_blocked_total",
    "counter",
    "Times the VM's input was paused for a block subscriber behind.",
    l,
    e.blocked,
  );
  m.add(
    "vbus_futex_wakes_total",
    "counter",
    "Parked ring readers woken by FUTEX_WAKE.",
    l,
    e.futexWakes,
  );
  for (const [code, n] of Object.entries(e.errors)) {
    m.add("vbus_errors_total", "counter", "Errors sent to the VM, by code.", { ...l, code }, n);
  }
  for (const [reason, n] of Object.entries(e.closed)) {
    m.add("vbus_sessions_closed_total", "counter", "Sessions the broker closed, by reason.", {
      ...l,
      reason,
    }, n);
  }
  m.add("vbus_subscriptions", "gauge", "Live subscriptions.", l, e.subscriptions);
  let backlogMsgs = 0, backlogBytes = 0, pending = 0;
  const fill = { inbound: { used: 0, capacity: 0 }, outbound: { used: 0, capacity: 0 } };
  for (const s of sessions) {
    backlogMsgs += s.backlogMsgs;
    backlogBytes += s.backlogBytes;
    pending += s.portPendingBytes;
    for (const ring of ["inbound", "outbound"] as const) {
      const r = s.rings?.[ring];
      if (!r) continue;
      fill[ring].used += r.usedBytes;
      fill[ring].capacity += r.capacityBytes;
    }
  }
  m.add(
    "vbus_backlog_messages",
    "gauge",
    "Messages waiting for room in the VM's inbound ring.",
    l,
    backlogMsgs,
  );
  m.add("vbus_backlog_bytes", "gauge", "Memory held by those waiting messages.", l, backlogBytes);
  m.add(
    "vbus_port_pending_bytes",
    "gauge",
    "Bytes written to the VM's port and not yet taken by the kernel.",
    l,
    pending,
  );
  for (const ring of ["inbound", "outbound"] as const) {
    m.add(
      "vbus_ring_used_bytes",
      "gauge",
      "Bytes in the shared-memory ring not yet consumed (inbound: broker to VM).",
      { ...l, ring },
      fill[ring].used,
    );
    m.add(
      "vbus_ring_capacity_bytes",
      "gauge",
      "Size of the shared-memory ring (0 on the stream path).",
      { ...l, ring },
      fill[ring].capacity,
    );
  }
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

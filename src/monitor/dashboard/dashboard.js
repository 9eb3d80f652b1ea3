// The vbus dashboard, served by the broker's monitoring endpoint: plain JS, no build step,
// nothing loaded from elsewhere. It reads the last two minutes of counters from `history`,
// then polls `stats` and `healthz` every second, and draws rates as small inline SVG charts.
// Names, subjects and client descriptions come from VMs and clients: they are only ever set
// as text (textContent), never parsed as HTML.
"use strict";
(() => {
  const POLL_MS = 1000;
  /** Points kept per chart (two minutes at one a second). */
  const KEEP = 121;
  /**
   * Samples closer than this (on the broker's clock) are not kept, and the rate shown is over at
   * least RATE_WINDOW_MS: a poll that lands right after the previous one (a busy browser, a
   * history sample just taken) would otherwise show a rate over a few milliseconds.
   */
  const MIN_GAP_MS = 500;
  const RATE_WINDOW_MS = 1000;
  const FIELDS = ["msgsIn", "msgsOut", "bytesIn", "bytesOut", "dropped"];
  const SVG = "http://www.w3.org/2000/svg";
  /** "vm:<name>" or "bridge:<name>" -> samples [{ t, c: [counters in FIELDS order] }]. */
  const series = new Map();
  /** "<where>/<reason>" -> last { t, n }, for drop rates. */
  const dropLast = new Map();
  let lastUptime = -1;

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      node.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
    }
    return node;
  }

  function fmtCount(n) {
    if (!Number.isFinite(n)) return "–";
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return a >= 100 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1);
  }

  function fmtBytes(n) {
    if (!Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + " " + units[i];
  }

  function fmtDuration(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(s % 60).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h" + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d" + String(h % 24).padStart(2, "0") + "h";
  }

  function counters(e) {
    return FIELDS.map((f) => Number(e[f]) || 0);
  }

  function push(key, t, c) {
    let s = series.get(key);
    if (!s) series.set(key, s = []);
    if (s.length && t - s[s.length - 1].t < MIN_GAP_MS) return;
    s.push({ t, c });
    if (s.length > KEEP) s.shift();
  }

  /** Per-second rates between consecutive samples: [{ t, r: [rates in FIELDS order] }]. */
  function rates(key) {
    const s = series.get(key) ?? [];
    const out = [];
    for (let i = 1; i < s.length; i++) {
      const dt = (s[i].t - s[i - 1].t) / 1000;
      if (dt <= 0) continue;
      out.push({ t: s[i].t, r: s[i].c.map((v, j) => Math.max(0, v - s[i - 1].c[j]) / dt) });
    }
    return out;
  }

  /** Rates of `key` over its last RATE_WINDOW_MS (or all it has); undefined before 2 samples. */
  function latest(key) {
    const s = series.get(key) ?? [];
    if (s.length < 2) return undefined;
    const last = s[s.length - 1];
    let i = s.length - 2;
    while (i > 0 && last.t - s[i].t < RATE_WINDOW_MS) i--;
    const dt = (last.t - s[i].t) / 1000;
    return last.c.map((v, j) => Math.max(0, v - s[i].c[j]) / dt);
  }

  /** A small chart of messages in (and out) per second. */
  function chart(points, label) {
    const w = 260, h = 56, pad = 2;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("role", "img");
    const max = Math.max(1, ...points.flatMap((p) => [p.r[0], p.r[1]]));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${label}: messages per second, in and out (last 2 minutes; max ${
      fmtCount(max)
    }/s)`;
    svg.append(title);
    const grid = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({ x1: 0, x2: w, y1: h - pad, y2: h - pad })) {
      grid.setAttribute(k, String(v));
    }
    grid.setAttribute("class", "axis");
    svg.append(grid);
    const t1 = points.length ? points[points.length - 1].t : 0;
    // The whole history across the chart, but at least 30 s (a new broker's first points).
    const span = Math.max(30_000, points.length ? t1 - points[0].t : 0);
    for (const [idx, cls] of [[0, "line-in"], [1, "line-out"]]) {
      if (points.length < 1) break;
      const coords = points.map((p) => {
        const x = w - ((t1 - p.t) / span) * w;
        const y = h - pad - (p.r[idx] / max) * (h - 2 * pad - 10);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      if (coords.length === 1) coords.unshift(`${w - 4},${coords[0].split(",")[1]}`);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", coords.join(" "));
      line.setAttribute("class", cls);
      svg.append(line);
    }
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", "4");
    text.setAttribute("y", "11");
    text.setAttribute("class", "chart-max");
    text.textContent = `max ${fmtCount(max)}/s`;
    svg.append(text);
    for (const [x, cls, word] of [[w - 44, "legend-in", "in"], [w - 24, "legend-out", "out"]]) {
      const legend = document.createElementNS(SVG, "text");
      legend.setAttribute("x", String(x));
      legend.setAttribute("y", "11");
      legend.setAttribute("class", cls);
      legend.textContent = word;
      svg.append(legend);
    }
    return svg;
  }

  /** A ring's fill as a meter and a percentage, or "–" on the stream path. */
  function fill(ring) {
    if (!ring || !ring.capacityBytes) return el("span", { class: "muted" }, "–");
    const f = ring.usedBytes / ring.capacityBytes;
    return el(
      "span",
      { class: "fill", title: `${fmtBytes(ring.usedBytes)} of ${fmtBytes(ring.capacityBytes)}` },
      el("meter", { min: 0, max: 1, low: 0.5, high: 0.9, optimum: 0, value: f.toFixed(4) }),
      ` ${(f * 100).toFixed(f > 0 && f < 0.01 ? 2 : 0)}%`,
    );
  }

  function dropsText(drops) {
    const parts = Object.entries(drops ?? {}).filter(([, n]) => n > 0);
    return parts.length ? parts.map(([r, n]) => `${r} ${fmtCount(n)}`).join(", ") : "";
  }

  function pathBadge(path, reason) {
    return el("span", { class: `badge path-${path}`, title: reason ?? undefined }, path);
  }

  function row(dt, dd, cls) {
    return [el("dt", {}, dt), el("dd", cls ? { class: cls } : {}, dd)];
  }

  /** A VM's card (also the `host` total): chart, rates, path, fill, drops, its session. */
  function endpointCard(e, session) {
    const key = "vm:" + e.name;
    const r = latest(key);
    const rate = (i) => r ? fmtCount(r[i]) + " msg/s" : "–";
    const bytes = (i) => r ? fmtBytes(r[i]) + "/s" : "–";
    const live = e.connected;
    const dl = el(
      "dl",
      { class: "nums" },
      ...row("in", rate(0), "rate-in"),
      ...row("out", rate(1), "rate-out"),
      ...row("bytes in / out", `${bytes(2)} / ${bytes(3)}`),
      ...row("subscriptions", fmtCount(e.subscriptions), "subs"),
      ...row(
        "dropped",
        fmtCount(e.dropped) + (e.dropped ? ` (${dropsText(e.drops)})` : ""),
        e.dropped ? "dropped bad" : "dropped",
      ),
    );
    if (session) {
      dl.append(
        ...row("ring in", fill(session.rings?.inbound)),
        ...row("ring out", fill(session.rings?.outbound)),
        ...row(
          "backlog",
          `${fmtBytes(session.backlogBytes)} (${fmtCount(session.backlogMsgs)} msgs)`,
        ),
        ...row("session", session.id || "port linked, waiting for the guest's HELLO", "session"),
      );
      if (session.client) dl.append(...row("client", session.client, "session"));
    }
    if (e.pathReason && e.path !== "ring") dl.append(...row("why not ring", e.pathReason, "muted"));
    return el(
      "div",
      { class: "card" + (live ? "" : " off"), "data-endpoint": e.name },
      el(
        "div",
        { class: "card-head" },
        el("span", {
          class: "dot" + (live ? " on" : ""),
          title: live ? "connected" : "not connected",
        }),
        el("b", { class: "name" }, e.name),
        pathBadge(e.path, e.pathReason),
        e.wake ? el("span", { class: "badge" }, e.wake) : null,
      ),
      chart(rates(key), e.name),
      dl,
    );
  }

  function bridgeCard(b) {
    const key = "bridge:" + b.name;
    const r = latest(key);
    const rate = (i) => r ? fmtCount(r[i]) + " msg/s" : "–";
    return el(
      "div",
      { class: "card" + (b.connected ? "" : " off"), "data-bridge": b.name },
      el(
        "div",
        { class: "card-head" },
        el("span", { class: "dot" + (b.connected ? " on" : "") }),
        el("b", { class: "name" }, b.name),
        el("span", { class: "badge" }, b.connected ? "connected" : "disconnected"),
      ),
      chart(rates(key), b.name),
      el(
        "dl",
        { class: "nums" },
        ...row(
          "server",
          b.server ?? "–",
        ),
        ...row("to NATS", rate(1), "rate-out"),
        ...row("from NATS", rate(0), "rate-in"),
        ...row("buffered", `${fmtCount(b.buffered)} msgs, ${fmtBytes(b.bufferedBytes)}`),
        ...row("dropped", fmtCount(b.dropped) + (b.dropped ? ` (${dropsText(b.drops)})` : "")),
        ...row("reconnects", fmtCount(b.reconnects)),
        ...(b.lastError ? row("last error", b.lastError, "bad") : []),
      ),
    );
  }

  function sessionRow(s, t) {
    const key = "session:" + s.id;
    if (s.stats && s.id) push(key, t, counters(s.stats));
    const r = s.id ? latest(key) : undefined;
    const rin = r ? fmtCount(r[0]) : "–", rout = r ? fmtCount(r[1]) : "–";
    const subjects = (s.subjects ?? []).slice(0, 3).map((x) => `${x.subject} (${fmtCount(x.msgs)})`)
      .join(", ");
    return el(
      "tr",
      { "data-session": s.id },
      el("td", {}, s.id || "(before HELLO)"),
      el("td", {}, s.client),
      el("td", {}, pathBadge(s.path), s.wake ? " " + s.wake : ""),
      el("td", { class: "num" }, fmtCount(s.subscriptions)),
      el("td", { class: "num rate-in" }, rin),
      el("td", { class: "num rate-out" }, rout),
      el("td", { class: "num" }, s.stats ? fmtCount(s.stats.dropped) : "–"),
      el("td", {}, fill(s.rings?.inbound)),
      el("td", {}, fill(s.rings?.outbound)),
      el("td", { class: "num" }, fmtBytes(s.backlogBytes)),
      el("td", { class: "subjects" }, subjects),
    );
  }

  function dropRows(stats, t) {
    const rows = [];
    const add = (where, drops) => {
      for (const [reason, n] of Object.entries(drops ?? {})) {
        if (!(n > 0)) continue;
        const key = where + "/" + reason;
        const prev = dropLast.get(key);
        const perSec = prev && t - prev.t >= MIN_GAP_MS
          ? fmtCount(Math.max(0, n - prev.n) / ((t - prev.t) / 1000))
          : "–";
        if (!prev || t - prev.t >= RATE_WINDOW_MS) dropLast.set(key, { t, n });
        rows.push(
          el(
            "tr",
            {},
            el("td", {}, where),
            el("td", {}, reason),
            el("td", { class: "num" }, fmtCount(n)),
            el("td", { class: "num" }, perSec),
          ),
        );
      }
    };
    for (const v of stats.vms) add(v.name, v.drops);
    add("host", stats.host.drops);
    for (const b of stats.bridges ?? []) add("bridge " + b.name, b.drops);
    return rows;
  }

  function render(stats, health) {
    const t = stats.uptimeMs;
    if (t < lastUptime) {
      // The broker restarted: its counters started again from zero.
      series.clear();
      dropLast.clear();
    }
    lastUptime = t;
    for (const e of [...stats.vms, stats.host]) push("vm:" + e.name, t, counters(e));
    for (const b of stats.bridges ?? []) push("bridge:" + b.name, t, counters(b));
    const sessions = stats.sessions ?? [];
    const b = stats.broker ?? {};
    $("broker").textContent = `pid ${b.pid ?? "?"} · ${b.runtime ?? ""} · vbus ${
      b.version ?? "?"
    } · up ${fmtDuration(t)} · ${b.listen ?? "no host socket"}`;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    const ok = health && health.status === "ok";
    const badge = $("health");
    badge.textContent = health ? (ok ? "healthy" : "unavailable") : "no health";
    badge.className = "badge " + (ok ? "good" : "bad");
    const problem = $("problem");
    problem.hidden = ok;
    problem.textContent = ok ? "" : (health?.problems ?? []).join("; ");

    $("vms").replaceChildren(
      ...(stats.vms.length
        ? stats.vms.map((v) => endpointCard(v, sessions.find((s) => s.endpoint === v.name)))
        : [el("p", { class: "muted" }, "No VM is configured.")]),
    );
    $("host").replaceChildren(endpointCard(stats.host));
    const hostSessions = sessions.filter((s) => s.endpoint === "host");
    const body = $("sessions").tBodies[0];
    body.replaceChildren(
      ...(hostSessions.length ? hostSessions.map((s) => sessionRow(s, t)) : [
        el("tr", {}, el("td", { colspan: 11, class: "muted" }, "No host client is connected.")),
      ]),
    );
    for (const key of [...series.keys()]) {
      if (key.startsWith("session:") && !hostSessions.some((s) => key === "session:" + s.id)) {
        series.delete(key); // that client left
      }
    }
    const bridges = stats.bridges ?? [];
    $("bridges-section").hidden = bridges.length === 0;
    $("bridges").replaceChildren(...bridges.map(bridgeCard));
    const drops = dropRows(stats, t);
    $("drops").tBodies[0].replaceChildren(...drops);
    $("drops").hidden = drops.length === 0;
    $("no-drops").hidden = drops.length > 0;
  }

  async function getJson(path) {
    const res = await fetch(path, { cache: "no-store" });
    // /healthz answers 503 with a body when unhealthy: that is an answer too.
    if (!res.ok && res.status !== 503) throw new Error(`${path}: HTTP ${res.status}`);
    return res.json();
  }

  async function loadHistory() {
    try {
      const h = await getJson("history");
      const idx = (h.fields ?? []).map((f) => FIELDS.indexOf(f));
      for (const sample of h.samples ?? []) {
        const pick = (arr) => FIELDS.map((_, j) => Number(arr[idx.indexOf(j)]) || 0);
        for (const [name, arr] of Object.entries(sample.endpoints ?? {})) {
          push("vm:" + name, sample.t, pick(arr));
        }
        for (const [name, arr] of Object.entries(sample.bridges ?? {})) {
          push("bridge:" + name, sample.t, pick(arr));
        }
        for (const [id, arr] of Object.entries(sample.sessions ?? {})) {
          push("session:" + id, sample.t, pick(arr));
        }
      }
    } catch {
      // No history: the charts start now.
    }
  }

  async function poll() {
    try {
      const [stats, health] = await Promise.all([
        getJson("stats"),
        getJson("healthz").catch(() => null),
      ]);
      render(stats, health);
    } catch (err) {
      const badge = $("health");
      badge.textContent = "unreachable";
      badge.className = "badge bad";
      const problem = $("problem");
      problem.hidden = false;
      problem.textContent = `cannot read the broker's stats: ${err.message}`;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  loadHistory().then(poll);
})();

// Tiny dependency-free SVG charts: log-scale line chart with min-max whiskers, and log-scale
// grouped bar chart. Output depends only on the input (no timestamps, no randomness).
import { si } from "./stats.ts";

const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
  "#7f7f7f",
  "#bcbd22",
];
const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const r1 = (x: number) => Math.round(x * 10) / 10;

export interface Point {
  median: number;
  min: number;
  max: number;
}

function logRange(values: number[]): [number, number] {
  const v = values.filter((x) => Number.isFinite(x) && x > 0);
  if (v.length === 0) return [0, 1];
  const lo = Math.floor(Math.log10(Math.min(...v)));
  let hi = Math.ceil(Math.log10(Math.max(...v)));
  if (hi === lo) hi = lo + 1;
  return [lo, hi];
}

function frame(
  title: string,
  yLabel: string,
  w: number,
  h: number,
  m: { l: number; r: number; t: number; b: number },
  lo: number,
  hi: number,
  empty: boolean,
): string[] {
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect x="0" y="0" width="${w}" height="${h}" fill="#ffffff"/>`);
  out.push(
    `<text x="${w / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${
      esc(title)
    }</text>`,
  );
  const ph = h - m.t - m.b;
  for (let d = lo; d <= hi; d++) {
    const y = r1(m.t + ph - ((d - lo) / (hi - lo)) * ph);
    out.push(`<line x1="${m.l}" y1="${y}" x2="${w - m.r}" y2="${y}" stroke="#dddddd"/>`);
    out.push(`<text x="${m.l - 6}" y="${y + 4}" text-anchor="end">${esc(si(10 ** d))}</text>`);
  }
  out.push(
    `<text x="16" y="${m.t + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${
      m.t + ph / 2
    })">${esc(yLabel)} (log scale)</text>`,
  );
  out.push(
    `<rect x="${m.l}" y="${m.t}" width="${
      w - m.l - m.r
    }" height="${ph}" fill="none" stroke="#888888"/>`,
  );
  if (empty) {
    out.push(
      `<text x="${(m.l + w - m.r) / 2}" y="${
        m.t + ph / 2
      }" text-anchor="middle" fill="#888888">no data</text>`,
    );
  }
  return out;
}

/** One line per series over categorical x labels; y on a log scale. */
export function lineChart(
  title: string,
  yLabel: string,
  xLabels: string[],
  series: { name: string; points: (Point | null)[] }[],
): string {
  const w = 760, h = 440, m = { l: 70, r: 180, t: 40, b: 50 };
  const vals = series.flatMap((s) => s.points.flatMap((p) => (p ? [p.min, p.max, p.median] : [])));
  const [lo, hi] = logRange(vals);
  const out = frame(title, yLabel, w, h, m, lo, hi, vals.filter((v) => v > 0).length === 0);
  const pw = w - m.l - m.r, ph = h - m.t - m.b;
  const xs = (i: number) =>
    r1(m.l + (xLabels.length === 1 ? pw / 2 : 30 + (i * (pw - 60)) / (xLabels.length - 1)));
  const ys = (v: number) => r1(m.t + ph - ((Math.log10(v) - lo) / (hi - lo)) * ph);
  xLabels.forEach((l, i) =>
    out.push(`<text x="${xs(i)}" y="${h - m.b + 18}" text-anchor="middle">${esc(l)}</text>`)
  );
  out.push(`<text x="${m.l + pw / 2}" y="${h - 10}" text-anchor="middle">message size</text>`);
  series.forEach((s, k) => {
    const color = PALETTE[k % PALETTE.length];
    const pts = s.points.map((p, i) => (p && p.median > 0 ? `${xs(i)},${ys(p.median)}` : null));
    let seg: string[] = [];
    const flush = () => {
      if (seg.length > 1) {
        out.push(
          `<polyline points="${seg.join(" ")}" fill="none" stroke="${color}" stroke-width="2"/>`,
        );
      }
      seg = [];
    };
    pts.forEach((p) => (p ? seg.push(p) : flush()));
    flush();
    s.points.forEach((p, i) => {
      if (!p || !(p.median > 0)) return;
      if (p.min > 0 && p.max > 0 && p.max > p.min) {
        out.push(
          `<line x1="${xs(i)}" y1="${ys(p.min)}" x2="${xs(i)}" y2="${
            ys(p.max)
          }" stroke="${color}" stroke-width="1.5"/>`,
        );
      }
      out.push(
        `<circle cx="${xs(i)}" cy="${ys(p.median)}" r="3.5" fill="${color}"><title>${
          esc(`${s.name} ${xLabels[i]}: ${si(p.median)} (${si(p.min)}–${si(p.max)})`)
        }</title></circle>`,
      );
    });
    const ly = m.t + 10 + k * 20;
    out.push(
      `<line x1="${w - m.r + 12}" y1="${ly}" x2="${
        w - m.r + 36
      }" y2="${ly}" stroke="${color}" stroke-width="2"/>`,
    );
    out.push(`<text x="${w - m.r + 42}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

/** Groups of bars (e.g. one group per system, one bar per percentile); y on a log scale. */
export function barChart(
  title: string,
  yLabel: string,
  groups: string[],
  barNames: string[],
  values: (number | null)[][],
): string {
  const w = 760, h = 440, m = { l: 70, r: 130, t: 40, b: 90 };
  const vals = values.flat().filter((v): v is number => v !== null && v > 0);
  const [lo, hi] = logRange(vals);
  const out = frame(title, yLabel, w, h, m, lo, hi, vals.length === 0);
  const pw = w - m.l - m.r, ph = h - m.t - m.b;
  const gw = pw / Math.max(1, groups.length);
  const bw = (gw * 0.8) / Math.max(1, barNames.length);
  const ys = (v: number) => r1(m.t + ph - ((Math.log10(v) - lo) / (hi - lo)) * ph);
  groups.forEach((g, gi) => {
    const gx = m.l + gi * gw + gw * 0.1;
    barNames.forEach((b, bi) => {
      const v = values[gi]?.[bi];
      if (v === null || v === undefined || !(v > 0)) return;
      const y = ys(v);
      out.push(
        `<rect x="${r1(gx + bi * bw)}" y="${y}" width="${r1(bw * 0.9)}" height="${
          r1(m.t + ph - y)
        }" fill="${PALETTE[bi % PALETTE.length]}"><title>${
          esc(`${g} ${b}: ${si(v)}`)
        }</title></rect>`,
      );
    });
    const cx = r1(gx + gw * 0.4);
    const ty = h - m.b + 14;
    out.push(
      `<text x="${cx}" y="${ty}" text-anchor="end" transform="rotate(-35 ${cx} ${ty})">${
        esc(g)
      }</text>`,
    );
  });
  barNames.forEach((b, bi) => {
    const ly = m.t + 10 + bi * 20;
    out.push(
      `<rect x="${w - m.r + 12}" y="${ly - 7}" width="14" height="14" fill="${
        PALETTE[bi % PALETTE.length]
      }"/>`,
    );
    out.push(`<text x="${w - m.r + 32}" y="${ly + 4}">${esc(b)}</text>`);
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function spread(xs: number[]): Spread {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

/** 1234567 -> "1.23M", 950 -> "950" */
export function si(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return "–";
  const a = Math.abs(x);
  const units: [number, string][] = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [f, u] of units) if (a >= f) return trim((x / f).toPrecision(digits)) + u;
  return trim(a >= 100 ? x.toFixed(0) : x.toPrecision(digits));
}

function trim(s: string): string {
  return s.includes(".") && !s.includes("e") ? s.replace(/\.?0+$/, "") : s;
}

export function fmtNum(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return "–";
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en-US");
  return trim(x.toPrecision(digits));
}

/** The size code of the "obj4" workload (a four-field object; see values.ts). */
export const STRUCTURED = -4;

export function fmtSize(bytes: number): string {
  if (bytes === STRUCTURED) return "obj4";
  if (bytes >= 1 << 20 && bytes % (1 << 20) === 0) return `${bytes >> 20} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes >> 10} KiB`;
  return `${bytes} B`;
}

export function parseSize(s: string): number {
  if (s.trim().toLowerCase() === "obj4") return STRUCTURED;
  const m = /^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib)?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size "${s}" (examples: 16, 128, 1k, 64k, 1m, obj4)`);
  const n = Number(m[1]);
  const u = (m[2] ?? "b").toLowerCase();
  const f = u.startsWith("k") ? 1024 : u.startsWith("m") ? 1024 * 1024 : 1;
  return Math.round(n * f);
}

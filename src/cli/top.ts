/**
 * `vbus top`: a live view of the broker in the terminal, like `nats top`. It asks for
 * `$VBUS.STATS` through a host connection every `--interval` ms and redraws in place on the
 * alternate screen (the shell's screen comes back when it ends); `q`, Ctrl-C or SIGTERM end it.
 * When stdout is not a terminal it prints one screen (rates over one interval) and exits, so
 * `vbus top | cat` works in scripts and tickets. A broker that goes away is shown on the status
 * line while the connection retries.
 *
 * @example
 * ```ts
 * import { runTop } from "./top.ts";
 * // await runTop({ intervalMs: 1000, connect: { server: "/run/vbus/broker.sock" } });
 * ```
 * @module
 */
import process from "node:process";
import { connect } from "../client/bus.ts";
import type { ConnectOptions } from "../client/options.ts";
import { STATS_SUBJECT } from "../broker/broker.ts";
import type { BrokerStats } from "../broker/stats.ts";
import { renderTop, type TopSample } from "./top_view.ts";

/** Default refresh interval. */
export const DEFAULT_TOP_INTERVAL_MS = 1000;

/** How `vbus top` runs. */
export interface TopOptions {
  intervalMs: number;
  connect: ConnectOptions;
}

const ESC = "\x1b[";
const ENTER_SCREEN = `${ESC}?1049h${ESC}?25l`; // alternate screen, hide the cursor
const LEAVE_SCREEN = `${ESC}?25h${ESC}?1049l`;

/** Run `vbus top`; resolves with the exit code once the user quits. */
export async function runTop(opts: TopOptions): Promise<number> {
  const out = process.stdout;
  const bus = await connect({ ...opts.connect, name: "vbus-top", shm: false, reconnect: true });
  const ask = async (): Promise<BrokerStats> => {
    const timeout = Math.max(2000, opts.intervalMs);
    return (await bus.request<BrokerStats>(STATS_SUBJECT, null, { timeout })).data;
  };
  try {
    if (!out.isTTY) return await printOnce(ask, opts.intervalMs, bus.info?.session);
    return await live(ask, opts.intervalMs, () => bus.info?.session);
  } finally {
    await bus.close();
  }
}

/** Not a terminal: one screen, with rates over one interval. */
async function printOnce(
  ask: () => Promise<BrokerStats>,
  intervalMs: number,
  self: string | undefined,
): Promise<number> {
  const first = await ask();
  await new Promise((r) => setTimeout(r, intervalMs));
  const second = await ask();
  const lines = renderTop({ stats: second }, { stats: first }, {
    width: 160,
    height: 1000,
    intervalMs,
    self,
  });
  process.stdout.write(lines.join("\n").replace(/ · q quits/, "") + "\n");
  return 0;
}

/** The live view on the alternate screen, until q, Ctrl-C or a signal. */
async function live(
  ask: () => Promise<BrokerStats>,
  intervalMs: number,
  self: () => string | undefined,
): Promise<number> {
  const out = process.stdout;
  const stdin = process.stdin;
  let prev: TopSample | undefined, cur: TopSample | undefined;
  let status = "";
  let quit!: () => void;
  const quitting = new Promise<void>((resolve) => quit = resolve);
  const draw = () => {
    const width = out.columns || 80, height = out.rows || 24;
    const lines = cur
      ? renderTop(cur, prev, { width, height, intervalMs, self: self(), status })
      : [status || "vbus top: asking the broker for its stats…"];
    // Home, each line cleared to its end, then the rest of the screen cleared: no flicker.
    out.write(`${ESC}H${lines.map((l) => l + `${ESC}K`).join("\r\n")}${ESC}J`);
  };
  const onKey = (chunk: Uint8Array | string) => {
    const text = typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
    // q, Q, Ctrl-C (raw mode sends it as a byte) or Ctrl-D.
    if (["q", "Q", "\u0003", "\u0004"].some((k) => text.includes(k))) quit();
  };
  const onSignal = () => quit();
  out.write(ENTER_SCREEN);
  const raw = typeof stdin.setRawMode === "function" && stdin.isTTY;
  if (raw) stdin.setRawMode(true);
  stdin.on("data", onKey);
  stdin.resume();
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  out.on("resize", draw);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const tick = async () => {
    try {
      const stats = await ask();
      prev = cur;
      cur = { stats };
      status = "";
    } catch (err) {
      status = `cannot read the broker's stats: ${(err as Error).message} (retrying)`;
    }
    if (stopped) return;
    draw();
    timer = setTimeout(tick, intervalMs);
  };
  try {
    draw();
    void tick();
    await quitting;
  } finally {
    stopped = true;
    if (timer) clearTimeout(timer);
    out.off("resize", draw);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    stdin.off("data", onKey);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
    out.write(LEAVE_SCREEN);
  }
  return 0;
}

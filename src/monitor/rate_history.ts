/**
 * The last two minutes of the broker's counters, one sample a second, so a dashboard opened
 * now draws its charts at once instead of starting empty (`/history`). Each sample keeps, per
 * VM (and `host`, all host clients together), per host client (by session id) and per bridge,
 * the counters a rate is made from; the reader takes differences. Costs one stats snapshot a
 * second while the endpoint is on.
 *
 * @example
 * ```ts
 * import { RateHistory } from "./rate_history.ts";
 * // const history = new RateHistory(() => broker.stats()); history.start();
 * // history.samples()[0].endpoints.vm1; // [msgsIn, msgsOut, bytesIn, bytesOut, dropped]
 * ```
 * @module
 */
import type { BrokerStats } from "../broker/stats.ts";

/** Order of the counters in {@link Sample.endpoints} and {@link Sample.bridges}. */
export const SAMPLE_FIELDS = ["msgsIn", "msgsOut", "bytesIn", "bytesOut", "dropped"] as const;

/** Counters at one moment. */
export interface Sample {
  /** Broker uptime (ms) when taken: the time axis. */
  t: number;
  /** Per VM name (and "host"): counters in {@link SAMPLE_FIELDS} order. */
  endpoints: Record<string, number[]>;
  /** Per bridge name: the same counters. */
  bridges: Record<string, number[]>;
  /** Per live host client (session id): its own counters. */
  sessions: Record<string, number[]>;
}

/** Samples kept (one a second: two minutes). */
export const HISTORY_SAMPLES = 120;
/** Time between samples. */
export const SAMPLE_INTERVAL_MS = 1000;

/** See the module doc. */
export class RateHistory {
  #stats: () => BrokerStats;
  #samples: Sample[] = [];
  #timer?: ReturnType<typeof setInterval>;

  constructor(stats: () => BrokerStats) {
    this.#stats = stats;
  }

  start(): void {
    this.take();
    this.#timer = setInterval(() => this.take(), SAMPLE_INTERVAL_MS);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  /** Take a sample now (the timer does, every second). */
  take(): void {
    this.#samples.push(sampleOf(this.#stats()));
    if (this.#samples.length > HISTORY_SAMPLES) this.#samples.shift();
  }

  /** Oldest first. */
  samples(): readonly Sample[] {
    return this.#samples;
  }
}

/** The counters of one stats snapshot. */
export function sampleOf(stats: BrokerStats): Sample {
  const endpoints: Record<string, number[]> = {};
  for (const e of [...stats.vms, stats.host]) endpoints[e.name] = SAMPLE_FIELDS.map((f) => e[f]);
  const bridges: Record<string, number[]> = {};
  for (const b of stats.bridges ?? []) bridges[b.name] = SAMPLE_FIELDS.map((f) => b[f]);
  const sessions: Record<string, number[]> = {};
  for (const s of stats.sessions ?? []) {
    const own = s.stats;
    if (own && s.id) sessions[s.id] = SAMPLE_FIELDS.map((f) => own[f]);
  }
  return { t: stats.uptimeMs, endpoints, bridges, sessions };
}

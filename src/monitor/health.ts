/**
 * What `/healthz` answers. Healthy means the broker can do its job for clients that come now:
 * it runs (started, not draining or stopping: a load balancer or systemd watchdog should stop
 * sending it work), and its host socket is still the one it listens on (a socket file removed
 * or replaced under it, e.g. by a tmpfiles cleanup or a second broker's start, leaves it
 * running while no host client can connect). VMs that are not connected do not make it
 * unhealthy (a VM may be powered off), nor does a bridge that lost its server (it buffers and
 * reconnects); both are in the answer, as is how late the event loop ran timers lately.
 *
 * @example
 * ```ts
 * import { HealthCheck } from "./health.ts";
 * // const health = new HealthCheck(broker); await health.start();
 * // const report = await health.report(); // { status: "ok", problems: [], … }
 * ```
 * @module
 */
import { lstat } from "node:fs/promises";
import type { BrokerStats } from "../broker/stats.ts";

/** What the health check needs to know about the broker. */
export interface HealthSource {
  /** Started, and neither draining nor stopping. */
  readonly running: boolean;
  /** The host socket path, if the broker listens on one. */
  readonly listen?: string;
  stats(): BrokerStats;
}

/** The `/healthz` answer. */
export interface HealthReport {
  /** "ok" (HTTP 200) or "unavailable" (HTTP 503, with the problems). */
  status: "ok" | "unavailable";
  problems: string[];
  uptimeMs: number;
  vms: { configured: number; connected: number };
  hostClients: number;
  bridges: { name: string; connected: boolean }[];
  /** Longest delay of a timer over the last few seconds (a busy or stalled event loop). */
  eventLoopLagMs: number;
}

/** How often the event loop lag is measured, and over how many measurements it is kept. */
const LAG_TICK_MS = 250;
const LAG_WINDOW = 20;

/** See the module doc. */
export class HealthCheck {
  #source: HealthSource;
  #socketIno?: number;
  #timer?: ReturnType<typeof setInterval>;
  #lags: number[] = [];

  constructor(source: HealthSource) {
    this.#source = source;
  }

  /** Remember which socket file is the broker's, and start measuring event loop lag. */
  async start(): Promise<void> {
    const listen = this.#source.listen;
    if (listen) this.#socketIno = (await lstat(listen).catch(() => undefined))?.ino;
    let last = Date.now();
    this.#timer = setInterval(() => {
      const now = Date.now();
      this.#lags.push(Math.max(0, now - last - LAG_TICK_MS));
      if (this.#lags.length > LAG_WINDOW) this.#lags.shift();
      last = now;
    }, LAG_TICK_MS);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  /** Check now. */
  async report(): Promise<HealthReport> {
    const problems: string[] = [];
    const source = this.#source;
    if (!source.running) {
      problems.push("the broker is not serving (draining, stopping, or not started)");
    }
    const listen = source.listen;
    if (listen && source.running) {
      const st = await lstat(listen).catch(() => undefined);
      if (!st) {
        problems.push(
          `the host socket ${listen} is gone: host clients cannot connect (restart the broker)`,
        );
      } else if (!st.isSocket() || (this.#socketIno !== undefined && st.ino !== this.#socketIno)) {
        problems.push(
          `${listen} is no longer the broker's socket (replaced): ` +
            "host clients do not reach this broker",
        );
      }
    }
    const stats = source.stats();
    return {
      status: problems.length === 0 ? "ok" : "unavailable",
      problems,
      uptimeMs: stats.uptimeMs,
      vms: {
        configured: stats.vms.length,
        connected: stats.vms.filter((v) => v.connected).length,
      },
      hostClients: (stats.sessions ?? []).filter((s) => s.endpoint === "host").length,
      bridges: (stats.bridges ?? []).map((b) => ({ name: b.name, connected: b.connected })),
      eventLoopLagMs: this.#lags.length ? Math.max(...this.#lags) : 0,
    };
  }
}

/**
 * The monitoring endpoint: a small HTTP server (node:http, under Deno and Bun) the broker runs
 * when its config has `"http": "127.0.0.1:8222"`. It serves
 *
 * - `/healthz`: 200 with a small JSON while the broker can serve clients, 503 and the problems
 *   when not (see health.ts);
 * - `/stats`: every counter as JSON (the broker, each VM, each live session including each host
 *   client on its own, subscriptions, ring fill and backlogs, drops by reason, bridges);
 * - `/history`: the last two minutes of counters, one sample a second (rate_history.ts);
 * - `/metrics`: the Prometheus text format (metrics.ts);
 * - `/`: the dashboard (dashboard/: plain HTML, CSS and JS, nothing loaded from elsewhere).
 *
 * Read-only: GET and HEAD only. On a loopback address it answers only requests whose Host is a
 * loopback name, so a web page the operator visits cannot read the stats through DNS
 * rebinding (a name of the attacker's that resolves to 127.0.0.1).
 *
 * @example
 * ```ts
 * import { MonitorServer } from "./monitor_server.ts";
 * // const address = { host: "127.0.0.1", port: 8222, loopback: true };
 * // const server = new MonitorServer(address, broker, log);
 * // const { port } = await server.start(); // GET http://127.0.0.1:8222/healthz
 * ```
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import process from "node:process";
import type { BrokerStats } from "../broker/stats.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import type { Logger } from "../util/log.ts";
import { type DashboardAssets, loadDashboard } from "./dashboard_assets.ts";
import { HealthCheck, type HealthSource } from "./health.ts";
import { formatHostPort, type HttpAddress, isLoopback } from "./http_address.ts";
import { type MetricsInfo, PROMETHEUS_CONTENT_TYPE, prometheusText } from "./metrics.ts";
import { RateHistory, SAMPLE_FIELDS, SAMPLE_INTERVAL_MS } from "./rate_history.ts";
import { runtimeDescription, vbusVersion } from "./process_info.ts";

/** What the endpoint serves from: the broker. */
export interface MonitorSource extends HealthSource {
  stats(): BrokerStats;
}

/** The `/stats` document: the broker's stats and who serves them. */
export interface StatsDocument extends BrokerStats {
  broker: {
    pid: number;
    runtime: string;
    version: string;
    /** The host socket, if any. */
    listen: string | null;
    /** Where this endpoint listens (`host:port`). */
    http: string;
    /** When this document was made (ISO time). */
    now: string;
    running: boolean;
  };
}

/** Paths served, for the 404 message. */
const PATHS = ["/", "/healthz", "/stats", "/history", "/metrics"];

/** See the module doc. */
export class MonitorServer {
  #address: HttpAddress;
  #source: MonitorSource;
  #log: Logger;
  #server?: Server;
  #sockets = new Set<Socket>();
  #health: HealthCheck;
  #history: RateHistory;
  #assets?: DashboardAssets;
  #info: MetricsInfo = { runtime: runtimeDescription(), version: "unknown" };
  #bound?: { host: string; port: number };

  constructor(address: HttpAddress, source: MonitorSource, log: Logger) {
    this.#address = address;
    this.#source = source;
    this.#log = log;
    this.#health = new HealthCheck(source);
    this.#history = new RateHistory(() => source.stats());
  }

  /** Where it listens, once started (the port is the real one when the config said 0). */
  get address(): { host: string; port: number } | undefined {
    return this.#bound;
  }

  /** Listen; rejects with a message naming the address when it cannot. */
  async start(): Promise<{ host: string; port: number }> {
    this.#assets = await loadDashboard();
    this.#info.version = await vbusVersion();
    const { host, port } = this.#address;
    const server = createServer((req, res) => this.#handle(req, res));
    server.on("connection", (socket: Socket) => {
      this.#sockets.add(socket);
      socket.on("close", () => this.#sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err: Error) => {
        reject(
          new VbusError(
            ErrorCode.Port,
            `cannot listen on http ${
              formatHostPort(host, port)
            }: ${err.message} (config key "http")`,
          ),
        );
      });
      server.listen(port, host, () => resolve());
    });
    server.on(
      "error",
      (err: Error) => this.#log.error("http server error", { error: err.message }),
    );
    this.#server = server;
    const a = server.address();
    this.#bound = { host, port: typeof a === "object" && a ? a.port : port };
    await this.#health.start();
    this.#history.start();
    const url = `http://${formatHostPort(host, this.#bound.port)}/`;
    this.#log.info("monitoring endpoint listening", { url });
    if (!this.#address.loopback) {
      this.#log.warn("the monitoring endpoint is reachable from other machines", {
        url,
        why: "whoever reaches it reads VM names, subjects and counters (it never changes anything)",
      });
    }
    return this.#bound;
  }

  /** Stop listening and end open connections. */
  async close(): Promise<void> {
    this.#health.stop();
    this.#history.stop();
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    await closed;
  }

  #handle(req: IncomingMessage, res: ServerResponse) {
    this.#route(req, res).catch((err) => {
      this.#log.error("http request failed", { url: req.url, error: (err as Error).message });
      if (!res.headersSent) send(res, 500, "text/plain; charset=utf-8", "internal error\n");
      else res.destroy();
    });
  }

  async #route(req: IncomingMessage, res: ServerResponse) {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("Allow", "GET, HEAD");
      return send(res, 405, "text/plain; charset=utf-8", "read-only: GET and HEAD only\n");
    }
    if (this.#address.loopback && !loopbackHost(req.headers.host)) {
      return send(
        res,
        403,
        "text/plain; charset=utf-8",
        "this endpoint listens on a loopback address and answers only to a loopback Host " +
          "(127.0.0.1, [::1] or localhost)\n",
      );
    }
    const path = (req.url ?? "/").split("?")[0];
    const assets = this.#assets!;
    switch (path) {
      case "/":
      case "/index.html":
        res.setHeader("Content-Security-Policy", DASHBOARD_CSP);
        res.setHeader("X-Frame-Options", "DENY");
        return send(res, 200, "text/html; charset=utf-8", assets.html);
      case "/dashboard.js":
        return send(res, 200, "text/javascript; charset=utf-8", assets.js);
      case "/dashboard.css":
        return send(res, 200, "text/css; charset=utf-8", assets.css);
      case "/healthz": {
        const report = await this.#health.report();
        return sendJson(res, report.status === "ok" ? 200 : 503, report);
      }
      case "/stats":
        return sendJson(res, 200, this.#document());
      case "/history":
        return sendJson(res, 200, {
          intervalMs: SAMPLE_INTERVAL_MS,
          fields: SAMPLE_FIELDS,
          samples: this.#history.samples(),
        });
      case "/metrics":
        return send(
          res,
          200,
          PROMETHEUS_CONTENT_TYPE,
          prometheusText(this.#source.stats(), this.#info),
        );
    }
    return send(res, 404, "text/plain; charset=utf-8", `not found; paths: ${PATHS.join(" ")}\n`);
  }

  #document(): StatsDocument {
    const stats = this.#source.stats();
    return {
      broker: {
        pid: process.pid,
        runtime: this.#info.runtime,
        version: this.#info.version,
        listen: this.#source.listen ?? null,
        http: formatHostPort(this.#bound!.host, this.#bound!.port),
        now: new Date().toISOString(),
        running: this.#source.running,
      },
      ...stats,
    };
  }
}

/** The dashboard loads only its own files and talks only to this endpoint. */
const DASHBOARD_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; " +
  "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; " +
  "frame-ancestors 'none'";

/** A Host header naming this machine: 127.x.x.x, [::1] or localhost, with any port. */
function loopbackHost(host: string | undefined): boolean {
  if (!host) return false;
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(host);
  const name = bracketed ? bracketed[1] : host.replace(/:\d+$/, "");
  return name.toLowerCase() === "localhost" || isLoopback(name);
}

function sendJson(res: ServerResponse, status: number, body: unknown) {
  send(res, status, "application/json; charset=utf-8", JSON.stringify(body) + "\n");
}

function send(res: ServerResponse, status: number, type: string, body: string) {
  const bytes = new TextEncoder().encode(body);
  res.statusCode = status;
  res.setHeader("Content-Type", type);
  res.setHeader("Content-Length", String(bytes.length));
  res.setHeader("Cache-Control", "no-store");
  res.setHeader("X-Content-Type-Options", "nosniff");
  res.end(res.req?.method === "HEAD" ? undefined : bytes);
}

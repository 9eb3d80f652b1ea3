/**
 * The broker as a service: what `vbus broker` does between start and exit.
 *
 * - **Readiness**: once the broker listens and its VM links run, `READY=1` goes to systemd's
 *   `NOTIFY_SOCKET` when it is set (a unix datagram, sent through libc: see
 *   `ffi/unix_datagram.ts`), so a `Type=notify` unit is "active" only when clients can
 *   connect. Without `NOTIFY_SOCKET` nothing is sent.
 * - **SIGHUP** reloads the config file ({@link Broker.reload}); systemd hears `RELOADING=1`
 *   then `READY=1` with a `STATUS=` line saying what changed or why the new file was refused.
 * - **SIGTERM / SIGINT** drain ({@link Broker.drain}): nothing new is accepted, what is queued
 *   for each session gets `drainTimeoutMs` to reach it, then everything closes and the process
 *   exits 0. A second signal while draining stops at once.
 *
 * @example
 * ```ts
 * import { Broker } from "./broker.ts";
 * import { loadConfig } from "./config.ts";
 * import { serveBroker } from "./lifecycle.ts";
 * const broker = new Broker(await loadConfig("/etc/vbus/broker.jsonc"));
 * const exitCode = await serveBroker(broker); // until SIGTERM
 * ```
 * @module
 */
import process from "node:process";
import type { Broker } from "./broker.ts";
import { createLogger, type Logger } from "../util/log.ts";

/** Environment variable systemd sets for `Type=notify` services. */
export const NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET";

/**
 * Sends service state to systemd (`sd_notify`). Does nothing when `NOTIFY_SOCKET` was not set;
 * a failed send is logged once, never thrown: the broker serves whether systemd hears or not.
 *
 * @example
 * ```ts
 * import { createLogger } from "../util/log.ts";
 * const notifier = new SystemdNotifier(createLogger("broker"));
 * await notifier.send("READY=1", "STATUS=serving 3 VMs");
 * ```
 */
export class SystemdNotifier {
  readonly socket?: string;
  #log: Logger;
  #warned = false;

  constructor(log: Logger, socket: string | undefined = envSocket()) {
    this.#log = log;
    this.socket = socket;
  }

  /** Is there a socket to notify? */
  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** Send the lines (`KEY=value`) as one datagram. Resolves true when sent. */
  async send(...lines: string[]): Promise<boolean> {
    const socket = this.socket;
    if (socket === undefined) return false;
    try {
      if (!socket.startsWith("/") && !socket.startsWith("@")) {
        throw new Error(`${NOTIFY_SOCKET_ENV}=${socket} is not a unix socket path`);
      }
      const { sendDatagram } = await import("../../ffi/unix_datagram.ts");
      await sendDatagram(socket, lines.join("\n"));
      this.#log.debug("told systemd", { socket, message: lines.join(" ") });
      return true;
    } catch (err) {
      if (!this.#warned) {
        this.#warned = true;
        this.#log.warn("cannot notify systemd (the broker runs on regardless)", {
          socket,
          error: (err as Error).message,
          hint:
            "the unit needs Type=notify and the broker run as its main process (NotifyAccess=main)",
        });
      }
      return false;
    }
  }

  /** `RELOADING=1` with the `MONOTONIC_USEC=` systemd asks to come with it. */
  async reloading(): Promise<boolean> {
    if (!this.enabled) return false;
    let now = "";
    try {
      const { monotonicMicros } = await import("../../ffi/unix_datagram.ts");
      now = `MONOTONIC_USEC=${await monotonicMicros()}`;
    } catch { /* sent without it */ }
    return this.send("RELOADING=1", ...(now ? [now] : []));
  }
}

function envSocket(): string | undefined {
  try {
    return process.env[NOTIFY_SOCKET_ENV] || undefined;
  } catch {
    return undefined;
  }
}

/** How {@link serveBroker} runs. */
export interface ServeOptions {
  log?: Logger;
  /** Default: from `NOTIFY_SOCKET`. */
  notifier?: SystemdNotifier;
}

/**
 * Start `broker`, tell systemd it is ready, reload on SIGHUP, drain on SIGTERM/SIGINT.
 * Resolves with the exit code (0 after a drain) once the broker has stopped; rejects when it
 * cannot start.
 *
 * @example
 * ```ts
 * import process from "node:process";
 * import { Broker } from "./broker.ts";
 * import { loadConfig } from "./config.ts";
 * const config = await loadConfig("/etc/vbus/broker.jsonc");
 * process.exitCode = await serveBroker(new Broker(config));
 * ```
 */
export async function serveBroker(broker: Broker, opts: ServeOptions = {}): Promise<number> {
  const log = opts.log ?? createLogger("broker");
  const notifier = opts.notifier ?? new SystemdNotifier(log);
  // Children (none today) must not talk to systemd in the broker's name.
  if (!opts.notifier) {
    try {
      delete process.env[NOTIFY_SOCKET_ENV];
    } catch { /* no env permission */ }
  }
  await broker.start();
  const vmCount = () => broker.config.vms.length;
  await notifier.send("READY=1", `STATUS=serving ${vmCount()} VM(s)`, `MAINPID=${process.pid}`);

  let reloading = Promise.resolve();
  const onHup = () => {
    reloading = reloading.then(async () => {
      await notifier.reloading();
      let status: string;
      try {
        const changes = await broker.reload();
        status = `reloaded: ${changes.join("; ") || "nothing changed"}`;
      } catch (err) {
        // Broker.reload logged it; the old configuration keeps running.
        status = `reload refused, still serving the previous config: ${(err as Error).message}`;
      }
      await notifier.send("READY=1", `STATUS=${status.replace(/\n/g, " ")}`);
    });
  };

  return await new Promise<number>((resolve) => {
    let draining = false;
    const onStop = (signal: string) => {
      if (draining) {
        log.warn("second signal while draining: stopping now", { signal });
        void broker.stop();
        return;
      }
      draining = true;
      void (async () => {
        await notifier.send("STOPPING=1", `STATUS=draining (${signal})`);
        await reloading; // a reload in progress finishes first
        await broker.drain();
        process.off("SIGHUP", onHup);
        process.off("SIGTERM", onTerm);
        process.off("SIGINT", onInt);
        resolve(0);
      })();
    };
    const onTerm = () => onStop("SIGTERM");
    const onInt = () => onStop("SIGINT");
    process.on("SIGHUP", onHup);
    process.on("SIGTERM", onTerm);
    process.on("SIGINT", onInt);
  });
}

/**
 * The broker's unix socket for host-local clients (config `listen`): what happens before a
 * connection becomes a host session. A stale socket left by a crashed broker is replaced, a
 * live one (another broker) refused; with `listenMode`/`listenGroup` the socket is the broker
 * user's alone until it gets its mode. At most `limits.maxHostConnections` connections are
 * served: a newcomer over the limit first evicts the oldest connection that has not said HELLO
 * (idle connections must not lock honest clients out), else it gets one ERR frame and is closed,
 * counted, and logged at most once a second (a connection flood must not become a log flood).
 *
 * @example
 * ```ts
 * import { HostListener } from "./host_listener.ts";
 * import { newEndpointStats } from "./stats.ts";
 * import { createLogger } from "../util/log.ts";
 * import type { Session } from "./session.ts";
 * declare function startHostSession(port: import("../port/port.ts").Port, onEnd: () => void): Session;
 * const listener = await HostListener.open({
 *   path: "/tmp/vbus-example.sock",
 *   maxConnections: () => 64,
 *   stats: newEndpointStats("host"),
 *   log: createLogger("broker", "silent"),
 *   startSession: startHostSession,
 * });
 * await listener.close(); // new connections refused; live sessions stay
 * ```
 * @module
 */
import { createServer, type Server, type Socket } from "node:net";
import { lstat, unlink } from "node:fs/promises";
import process from "node:process";
import type { Session } from "./session.ts";
import type { EndpointStats } from "./stats.ts";
import { applyFileAccess, type FileAccess, modeString } from "./file_access.ts";
import { connectUnix, SocketPort } from "../port/socket_port.ts";
import type { Port } from "../port/port.ts";
import { encodeValue } from "../protocol/codec.ts";
import { encodeFrame } from "../protocol/frame.ts";
import { Op } from "../protocol/ops.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import type { Logger } from "../util/log.ts";

/** `stats.closed` key of host connections refused by `limits.maxHostConnections`. */
export const TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS";
/** `stats.closed` key of host connections closed, before their HELLO, to make room for a new one. */
export const EVICTED_BEFORE_HELLO = "EVICTED_BEFORE_HELLO";

/** What a {@link HostListener} needs from its broker. */
export interface HostListenerOptions {
  /** The socket path (config `listen`). */
  path: string;
  /** Config `listenMode`/`listenOwner`/`listenGroup`, if any. */
  access?: FileAccess;
  /** `limits.maxHostConnections` as configured now (a reload may change it). */
  maxConnections(): number;
  /** Where refusals and evictions are counted (the host clients' base counters). */
  stats: EndpointStats;
  log: Logger;
  /** Make the host session of an accepted connection; `onEnd` when it is gone. */
  startSession(port: Port, onEnd: () => void): Session;
}

/** The host socket; see the module doc. */
export class HostListener {
  #o: HostListenerOptions;
  #server: Server;
  #closed?: Promise<void>;
  #connections = 0;
  // Live sessions of this socket, oldest first (an idle one may be evicted for a newcomer).
  #sessions = new Set<Session>();
  #refusedLoggedAt = 0;
  #refusedSinceLog = 0;

  private constructor(o: HostListenerOptions, server: Server) {
    this.#o = o;
    this.#server = server;
  }

  /** Listen on `o.path`; rejects (listening on nothing) when it cannot. */
  static async open(o: HostListenerOptions): Promise<HostListener> {
    await removeStaleSocket(o.path);
    const server = createServer((socket: Socket) => listener.#accept(socket));
    const listener = new HostListener(o, server);
    await new Promise<void>((resolve, reject) => {
      server.once(
        "error",
        (err) =>
          reject(new VbusError(ErrorCode.Port, `cannot listen on ${o.path}: ${err.message}`)),
      );
      // With a listenMode, the socket is the broker's user's alone until it gets it.
      const umask = o.access ? process.umask(0o177) : undefined;
      try {
        server.listen(o.path, () => resolve());
      } finally {
        if (umask !== undefined) process.umask(umask);
      }
    });
    if (o.access) {
      try {
        applyListenAccess(o.path, o.access, o.log);
      } catch (err) {
        await listener.close();
        throw err;
      }
    }
    server.on("error", (err) => o.log.error("host socket error", { error: err.message }));
    return listener;
  }

  /** Stop listening (once; later calls return the same promise): live sessions stay. */
  close(): Promise<void> {
    return this.#closed ??= new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** {@link close}, then remove the socket file. */
  async closeAndRemove(): Promise<void> {
    await this.close();
    await unlink(this.#o.path).catch(() => {});
  }

  #accept(socket: Socket) {
    const max = this.#o.maxConnections();
    if (this.#connections >= max) {
      // Only sessions that said HELLO count against the newcomer.
      const idle = [...this.#sessions].find((s) => !s.open);
      if (idle) {
        const stats = this.#o.stats;
        stats.closed[EVICTED_BEFORE_HELLO] = (stats.closed[EVICTED_BEFORE_HELLO] ?? 0) + 1;
        idle.close(
          "no HELLO yet, and a new connection needs its place (limits.maxHostConnections)",
        );
      }
    }
    if (this.#connections >= max) {
      this.#refuse(socket, max);
      return;
    }
    this.#connections++;
    const session = this.#o.startSession(
      new SocketPort(socket, `host client on ${this.#o.path}`),
      () => {
        this.#sessions.delete(session);
        this.#connections--;
      },
    );
    this.#sessions.add(session);
  }

  /** One ERR frame, then close: the broker already serves `limits.maxHostConnections`. */
  #refuse(socket: Socket, limit: number) {
    const message =
      `too many host connections: the broker serves at most ${limit} at once (limits.maxHostConnections)`;
    const stats = this.#o.stats;
    stats.errors[ErrorCode.SessionClosed] = (stats.errors[ErrorCode.SessionClosed] ?? 0) + 1;
    stats.closed[TOO_MANY_CONNECTIONS] = (stats.closed[TOO_MANY_CONNECTIONS] ?? 0) + 1;
    socket.on("error", () => socket.destroy());
    const frame = encodeFrame(
      Op.Err,
      encodeValue({ code: ErrorCode.SessionClosed, message, fatal: true }),
    );
    socket.end(frame, () => socket.destroy());
    this.#refusedSinceLog++;
    const now = Date.now();
    if (now - this.#refusedLoggedAt >= 1000) {
      this.#o.log.warn("host connection refused", {
        reason: message,
        refused: this.#refusedSinceLog,
      });
      this.#refusedLoggedAt = now;
      this.#refusedSinceLog = 0;
    }
  }
}

/**
 * Give the host socket its configured mode and owner (at start, and again on a reload), with a
 * warning when every local user may connect. Throws a `PORT` {@link VbusError} when it cannot.
 *
 * @example
 * ```ts
 * import { applyListenAccess } from "./host_listener.ts";
 * import { createLogger } from "../util/log.ts";
 * applyListenAccess("/run/vbus/broker.sock", { mode: 0o660 }, createLogger("broker"));
 * ```
 */
export function applyListenAccess(path: string, access: FileAccess, log: Logger): void {
  try {
    applyFileAccess(path, access, "listen");
  } catch (err) {
    throw new VbusError(ErrorCode.Port, (err as Error).message);
  }
  if (access.mode !== undefined && (access.mode & 0o002) !== 0) {
    log.warn("every local user may connect to the host socket", {
      listen: path,
      listenMode: modeString(access.mode),
      why: "a host client may publish anywhere unless host.permissions restricts it",
    });
  }
}

/** Remove a unix socket file left by a crashed broker; refuse to touch anything else. */
async function removeStaleSocket(path: string) {
  let info;
  try {
    info = await lstat(path);
  } catch {
    return; // nothing there
  }
  if (!info.isSocket()) {
    throw new VbusError(
      ErrorCode.Port,
      `${path} exists and is not a socket; refusing to replace it`,
    );
  }
  try {
    const probe = await connectUnix(path);
    probe.destroy();
    throw new VbusError(ErrorCode.Port, `another broker is listening on ${path}`);
  } catch (err) {
    if (err instanceof VbusError && err.message.startsWith("another broker")) throw err;
    await unlink(path);
  }
}

/**
 * The broker: connects to every configured VM's port (a QEMU chardev unix socket), reconnecting
 * with backoff when a VM or QEMU restarts; listens on a unix socket for host-local clients; and
 * routes messages between all of them. A VM's identity is the port it arrived on.
 *
 * One broker per VM: `start()` takes an exclusive lock per VM (`<socket>.lock`, holding the
 * broker's pid) that dies with the process, so a second broker on the same VMs fails to start
 * instead of fighting over their ports and regions. Host clients get sealed memfd regions that
 * no client can shrink (a shrunk mapping would SIGBUS the broker), made only when their HELLO
 * asks for shared memory; at most `limits.maxHostConnections` host clients are served at once.
 *
 * @example
 * ```ts
 * import { Broker } from "./broker.ts";
 * import { parseConfig } from "./config.ts";
 * const broker = new Broker(parseConfig(`{
 *   "listen": "/tmp/vbus.sock",
 *   "vms": [{ "name": "vm1", "socket": "/tmp/vm1.sock" }]
 * }`));
 * await broker.start();
 * console.log(broker.stats().vms[0].connected);
 * await broker.stop();
 * ```
 * @module
 */
import { createServer, type Server, type Socket } from "node:net";
import type { Stats } from "node:fs";
import { lstat, readdir, unlink } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { randomBytes } from "node:crypto";
import type { BrokerConfig, VmConfig } from "./config.ts";
import { type RouteEntry, Router } from "./router.ts";
import {
  Session,
  type SessionContext,
  type SessionOptions,
  type SessionShm,
  SYSTEM_PREFIX,
} from "./session.ts";
import { type Ffi, loadFfi } from "../shm/negotiation.ts";
import { DEFAULT_SHM_SIZE } from "./config.ts";
import { stat } from "node:fs/promises";
import { type BrokerStats, type EndpointStats, newEndpointStats } from "./stats.ts";
import { connectUnix, SocketPort } from "../port/socket_port.ts";
import { encodeValue } from "../protocol/codec.ts";
import { encodeFrame } from "../protocol/frame.ts";
import { Op } from "../protocol/ops.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { QueueAwareRouter } from "../bridge/queue_router.ts";
import { NatsBridge } from "../bridge/nats_bridge.ts";
import { HostStatsPool } from "./host_stats.ts";
import { MonitorServer } from "../monitor/monitor_server.ts";

/** Subject host clients request to get {@link BrokerStats}. */
export const STATS_SUBJECT = `${SYSTEM_PREFIX}STATS`;
/** A VM session that lived this long resets the reconnect backoff. */
const STABLE_SESSION_MS = 5000;
/**
 * Set by `bin/vbus.mjs` for the runtime it starts: the pid of the wrapper the user started.
 * When that process is gone (killed, even with SIGKILL), the broker stops itself.
 */
export const WRAPPER_PID_ENV = "VBUS_WRAPPER_PID";
/** How often the broker checks that its wrapper process still runs. */
const WRAPPER_CHECK_MS = 500;
/** `stats.closed` key of host connections refused by `limits.maxHostConnections`. */
export const TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS";

/** Broker tuning that is not part of the config file. */
export interface BrokerOptions {
  logger?: Logger;
  /** How often the broker PINGs each session. Default 10 s. */
  pingIntervalMs?: number;
  /** Reconnect backoff towards VM ports. Default 50 ms doubling to 2 s. */
  reconnect?: { initialMs?: number; maxMs?: number };
  /**
   * Give host-local clients that ask for it a shared-memory region each: a sealed memfd that
   * they map through `/proc/<broker pid>/fd/<fd>` (so only the broker's user can), closed when
   * the session ends. Default true.
   */
  hostShm?: boolean;
  /**
   * Where brokers before sealed regions created host-client region files (`vbus-<pid>-…`);
   * the ones of dead brokers are removed at start. Default /dev/shm.
   */
  shmDir?: string;
}

/** A running broker. */
export class Broker {
  readonly config: BrokerConfig;
  /** With a bridge, a router that also keeps queue groups one member wide across hosts. */
  readonly router: Router;
  #log: Logger;
  #ctx: SessionContext;
  #opts: BrokerOptions;
  #server?: Server;
  #running = false;
  #abort = new AbortController();
  #sessions = new Set<Session>();
  // Closed sessions too, until broker stop: their rings must be idle before unmapping.
  #allSessions = new Set<Session>();
  #vmStats = new Map<string, EndpointStats>();
  // Each host client counts into its own stats; the pool's base keeps refusals and what
  // clients that left counted (stats().host is the sum).
  #hostPool = new HostStatsPool();
  #hostStats = this.#hostPool.base;
  #monitor?: MonitorServer;
  #links: Promise<void>[] = [];
  #startedAt = Date.now();
  #vmShm = new Map<string, SessionShm>();
  #mappings: { unmap(): void }[] = [];
  #locks: { release(): void }[] = [];
  #ffi?: Ffi;
  #hostShmCount = 0;
  #hostConnections = 0;
  #refusedLoggedAt = 0;
  #refusedSinceLog = 0;
  #wrapperTimer?: ReturnType<typeof setInterval>;
  #statsEntry?: RouteEntry;
  #bridges: NatsBridge[] = [];
  #sessionNumber = 0;
  // Distinguishes session ids across broker restarts.
  #runId = randomBytes(3).toString("hex");

  constructor(config: BrokerConfig, opts: BrokerOptions = {}) {
    this.config = config;
    this.#opts = opts;
    this.#log = opts.logger ?? createLogger("broker");
    this.router = config.bridge?.nats ? new QueueAwareRouter() : new Router();
    this.#ctx = {
      router: this.router,
      limits: config.limits,
      log: this.#log,
      pingIntervalMs: opts.pingIntervalMs ?? 10_000,
      nextSessionNumber: () => `${this.#runId}.${++this.#sessionNumber}`,
    };
    for (const vm of config.vms) this.#vmStats.set(vm.name, newEndpointStats(vm.name));
  }

  /**
   * Lock every VM, then start listening and connecting to VM ports. Resolves once the host
   * socket listens. Rejects, holding nothing, when another broker serves one of the VMs.
   */
  async start(): Promise<void> {
    if (this.#running) throw new Error("broker already started");
    this.#running = true;
    this.#startedAt = Date.now();
    let ffiProblem = "";
    try {
      this.#ffi = await loadFfi();
    } catch (err) {
      ffiProblem = (err as Error).message;
    }
    try {
      this.#makeBridges();
      this.#lockVms(ffiProblem);
      this.#addStatsService();
      for (const vm of this.config.vms) {
        if (vm.shm) this.#vmShm.set(vm.name, await this.#mapVmShm(vm));
      }
      if (this.#opts.hostShm !== false) {
        await removeStaleRegions(this.#opts.shmDir ?? "/dev/shm", this.#log);
        if (ffiProblem) {
          this.#log.warn("FFI unavailable: host clients use the port stream", {
            error: ffiProblem,
          });
        }
      }
      if (this.config.listen) await this.#listen(this.config.listen);
      if (this.config.http) {
        this.#monitor = new MonitorServer(this.config.http, this, this.#log);
        await this.#monitor.start();
      }
    } catch (err) {
      this.#running = false;
      await this.#monitor?.close();
      this.#monitor = undefined;
      if (this.#server) {
        // The endpoint failed after the host socket was made: no socket may stay behind.
        const server = this.#server;
        this.#server = undefined;
        await new Promise<void>((resolve) => server.close(() => resolve()));
        if (this.config.listen) await unlink(this.config.listen).catch(() => {});
      }
      this.#bridges = [];
      if (this.#statsEntry) this.router.remove(this.#statsEntry);
      for (const m of this.#mappings.splice(0)) m.unmap();
      for (const l of this.#locks.splice(0)) l.release();
      throw err;
    }
    for (const vm of this.config.vms) this.#links.push(this.#runVmLink(vm));
    for (const b of this.#bridges) b.start(); // connects in the background: never waits for NATS
    this.#watchWrapper();
    this.#log.info("broker started", {
      listen: this.config.listen ?? "(none)",
      vms: this.config.vms.map((v) => v.name).join(",") || "(none)",
    });
  }

  /**
   * One broker per VM: an exclusive flock on `<socket>.lock` next to each VM's socket, with
   * this broker's pid inside. The kernel drops it when the process dies, however it dies.
   */
  #lockVms(ffiProblem: string) {
    if (this.config.vms.length === 0) return;
    const ffi = this.#ffi;
    if (!ffi) {
      this.#log.warn(
        "FFI unavailable: cannot lock the VMs, so nothing stops a second broker from serving them",
        {
          error: ffiProblem,
        },
      );
      return;
    }
    for (const vm of this.config.vms) {
      const file = `${vm.socket}.lock`;
      let lock;
      try {
        lock = ffi.tryLockFile(file, { note: `${process.pid}\n` });
      } catch (err) {
        throw new VbusError(
          ErrorCode.Port,
          `cannot lock VM ${vm.name}: ${
            (err as Error).message
          } (the broker keeps ${file} next to the VM's socket and needs write access to that directory)`,
        );
      }
      if ("heldBy" in lock) {
        const pid = /^\d+$/.test(lock.heldBy) ? `pid ${lock.heldBy}` : "pid unknown";
        throw new VbusError(
          ErrorCode.Port,
          `VM ${vm.name} is served by another broker (${pid}, lock ${file})`,
        );
      }
      this.#locks.push(lock);
    }
  }

  /**
   * Started by `bin/vbus.mjs` (npx)? Then end when that wrapper is gone: whatever stops the
   * process the user started stops the broker too, even a SIGKILL that the wrapper cannot
   * forward. The SIGTERM goes to this process, whose owner (the CLI) stops the broker.
   */
  #watchWrapper() {
    const wrapper = Number(process.env[WRAPPER_PID_ENV]);
    if (!Number.isInteger(wrapper) || wrapper <= 1 || process.ppid !== wrapper) return;
    this.#wrapperTimer = setInterval(() => {
      if (process.ppid === wrapper) return;
      clearInterval(this.#wrapperTimer);
      this.#log.warn("the vbus wrapper process is gone; stopping", { wrapper });
      process.kill(process.pid, "SIGTERM");
    }, WRAPPER_CHECK_MS);
    (this.#wrapperTimer as { unref?: () => void }).unref?.();
  }

  /** Close every session, stop listening and stop reconnecting. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    this.#abort.abort();
    await Promise.all(this.#bridges.splice(0).map((b) => b.stop()));
    for (const s of [...this.#sessions]) s.close("broker stopping");
    if (this.#server) {
      await new Promise<void>((resolve) => this.#server!.close(() => resolve()));
      if (this.config.listen) await unlink(this.config.listen).catch(() => {});
    }
    await Promise.all(this.#links);
    await Promise.all([...this.#allSessions].map((s) => s.ringStopped));
    for (const m of this.#mappings.splice(0)) m.unmap();
    if (this.#wrapperTimer) clearInterval(this.#wrapperTimer);
    for (const l of this.#locks.splice(0)) l.release();
    await this.#monitor?.close(); // last: /healthz says "not running" while the broker stops
    this.#log.info("broker stopped");
  }

  /** A snapshot of every counter. */
  stats(): BrokerStats {
    return {
      startedAt: new Date(this.#startedAt).toISOString(),
      uptimeMs: Date.now() - this.#startedAt,
      vms: [...this.#vmStats.values()].map((s) => structuredClone(s)),
      host: this.#hostPool.total(),
      bridges: this.#bridges.map((b) => b.stats()),
      sessions: [...this.#sessions].map((s) => s.snapshot()),
    };
  }

  /** Started and not stopping (what `/healthz` first checks). */
  get running(): boolean {
    return this.#running;
  }

  /** The host socket path, if the broker listens on one. */
  get listen(): string | undefined {
    return this.config.listen;
  }

  /** Where the monitoring endpoint (config `http`) listens, once started. */
  get monitorAddress(): { host: string; port: number } | undefined {
    return this.#monitor?.address;
  }

  /** The running bridges (e.g. to wait until NATS has their subscriptions: `flush()`). */
  get bridges(): readonly NatsBridge[] {
    return this.#bridges;
  }

  /** Bridges from the config (reading their credentials now, so a bad file fails start). */
  #makeBridges() {
    const nats = this.config.bridge?.nats;
    if (!nats) return;
    this.#bridges = [
      new NatsBridge({
        config: nats,
        router: this.router as QueueAwareRouter,
        limits: this.config.limits,
        log: this.#log,
        publisher: () => this.#ctx.publishing,
      }),
    ];
  }

  #addStatsService() {
    const entry: RouteEntry = {
      sid: 0,
      subject: STATS_SUBJECT,
      queue: null,
      max: 0,
      delivered: 0,
      target: {
        deliver: (_sub, _subject, reply) => {
          // The answer goes to the session that asked, whatever reply subject it named.
          const requester = this.#ctx.publishing;
          if (reply !== null && requester) {
            this.router.deliverTo(requester, reply, null, encodeValue(this.stats()));
          }
        },
      },
    };
    this.router.add(entry);
    this.#statsEntry = entry;
  }

  async #listen(path: string) {
    await removeStaleSocket(path);
    const server = createServer((socket: Socket) => {
      if (this.#hostConnections >= this.config.limits.maxHostConnections) {
        this.#refuseHostConnection(socket);
        return;
      }
      this.#hostConnections++;
      const port = new SocketPort(socket, `host client on ${path}`);
      // Made only when the client's HELLO asks for shared memory: idle connections cost no memory.
      let region: { unmap(): void } | undefined;
      const shm = this.#opts.hostShm === false ? undefined : () => {
        const made = this.#hostSessionShm();
        region = made.region;
        return made.shm;
      };
      const stats = this.#hostPool.open();
      const session = this.#startSession(port, {
        identity: "host",
        host: true,
        permissions: this.config.hostPermissions ?? { block: true },
        stats,
        shm,
      }, () => {
        this.#hostConnections--;
        this.#hostPool.close(stats);
        const r = region;
        if (r) session.ringStopped.then(() => r.unmap());
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once(
        "error",
        (err) => reject(new VbusError(ErrorCode.Port, `cannot listen on ${path}: ${err.message}`)),
      );
      server.listen(path, () => resolve());
    });
    server.on("error", (err) => this.#log.error("host socket error", { error: err.message }));
    this.#server = server;
  }

  /** One ERR frame, then close: the broker already serves `limits.maxHostConnections`. */
  #refuseHostConnection(socket: Socket) {
    const limit = this.config.limits.maxHostConnections;
    const message =
      `too many host connections: the broker serves at most ${limit} at once (limits.maxHostConnections)`;
    const stats = this.#hostStats;
    stats.errors[ErrorCode.SessionClosed] = (stats.errors[ErrorCode.SessionClosed] ?? 0) + 1;
    stats.closed[TOO_MANY_CONNECTIONS] = (stats.closed[TOO_MANY_CONNECTIONS] ?? 0) + 1;
    socket.on("error", () => socket.destroy());
    const frame = encodeFrame(
      Op.Err,
      encodeValue({ code: ErrorCode.SessionClosed, message, fatal: true }),
    );
    socket.end(frame, () => socket.destroy());
    // A connection flood must not become a log flood: one line per second at most.
    this.#refusedSinceLog++;
    const now = Date.now();
    if (now - this.#refusedLoggedAt >= 1000) {
      this.#log.warn("host connection refused", {
        reason: message,
        refused: this.#refusedSinceLog,
      });
      this.#refusedLoggedAt = now;
      this.#refusedSinceLog = 0;
    }
  }

  #startSession(
    port: SocketPort,
    opts: {
      identity: string;
      host: boolean;
      permissions?: VmConfig["permissions"];
      stats: EndpointStats;
      shm?: SessionOptions["shm"];
    },
    onEnd?: (reason: string) => void,
  ): Session {
    const session = new Session(port, this.#ctx, {
      ...opts,
      onClose: (s, reason) => {
        this.#sessions.delete(s);
        s.ringStopped.then(() => this.#allSessions.delete(s));
        this.#log.info("session closed", { session: s.id || s.identity, reason });
        onEnd?.(reason);
      },
    });
    this.#sessions.add(session);
    this.#allSessions.add(session);
    session.start();
    return session;
  }

  /**
   * Map a VM's shared-memory file (creating it at its configured size if missing). A file that
   * someone other than the broker's user (or root) owns, or that every user may write, is
   * refused: whoever can truncate it can kill the broker with SIGBUS. Refused or unmappable,
   * the VM uses the port stream and its stats say why.
   */
  async #mapVmShm(vm: VmConfig): Promise<SessionShm> {
    const path = vm.shm!;
    const refuse = (reason: string, level: "warn" | "error" = "warn"): SessionShm => {
      this.#log[level]("VM shared memory unavailable; its sessions use the port stream", {
        vm: vm.name,
        reason,
      });
      this.#vmStats.get(vm.name)!.pathReason = reason;
      return { reason };
    };
    try {
      const existing = await stat(path).catch(() => undefined);
      if (existing) {
        const problem = backingFileProblem(path, existing);
        if (problem) return refuse(problem, "error");
        const gid = process.getgid?.() ?? 0;
        if ((existing.mode & 0o020) !== 0 && existing.gid !== gid) {
          this.#log.warn("a VM's shared-memory file is writable by a group the broker is not in", {
            vm: vm.name,
            path,
            gid: existing.gid,
            why:
              "its members can shrink it and crash the broker: that group should hold only QEMU's user",
          });
        }
        if (existing.size !== vm.shmSize) {
          throw new Error(
            `${path} is ${existing.size} bytes but the config says shmSize ${vm.shmSize}`,
          );
        }
      }
      if (!this.#ffi) throw new Error("FFI is not available to the broker");
      // Created here only when missing, and exclusively: never resize a file QEMU may have made.
      const mapping = this.#ffi.mapSharedSync(path, vm.shmSize, {
        create: !existing,
        exclusive: true,
        mode: 0o600,
      });
      this.#mappings.push(mapping);
      this.#log.info("mapped VM shared memory", { vm: vm.name, path, size: vm.shmSize });
      return { bytes: mapping.bytes, path, perSession: false };
    } catch (err) {
      return refuse(`cannot map ${path}: ${(err as Error).message}`);
    }
  }

  /** A sealed region for one host-local client (and what to release), or why there is none. */
  #hostSessionShm(): { shm: SessionShm; region?: { unmap(): void } } {
    const ffi = this.#ffi;
    if (!ffi) {
      return { shm: { reason: "shared memory is not available to the broker (FFI not loaded)" } };
    }
    const name = `vbus-${process.pid}-${this.#runId}-${++this.#hostShmCount}`;
    try {
      const region = ffi.createSealedRegion(name, DEFAULT_SHM_SIZE);
      return {
        shm: {
          bytes: region.bytes,
          path: region.path,
          perSession: true,
          futexWake: (word, index) => ffi.futexWake(word, index, 1),
        },
        region,
      };
    } catch (err) {
      return { shm: { reason: `cannot create a shared-memory region: ${(err as Error).message}` } };
    }
  }

  /** Keep a connection to one VM's port for as long as the broker runs. */
  async #runVmLink(vm: VmConfig): Promise<void> {
    const backoff = new Backoff(this.#opts.reconnect);
    const stats = this.#vmStats.get(vm.name)!;
    const signal = this.#abort.signal;
    let lastError = "";
    while (this.#running) {
      let port: SocketPort;
      try {
        port = await connectUnix(vm.socket);
      } catch (err) {
        const msg = (err as Error).message;
        if (msg !== lastError) {
          this.#log.warn("VM port not reachable, retrying", { vm: vm.name, error: msg });
        }
        lastError = msg;
        await sleep(backoff.next(), signal);
        continue;
      }
      lastError = "";
      if (!this.#running) {
        port.destroy();
        break;
      }
      this.#log.info("connected to VM port", { vm: vm.name, socket: vm.socket });
      const connectedAt = Date.now();
      const ended = new Promise<string>((resolve) => {
        this.#startSession(port, {
          identity: vm.name,
          host: false,
          permissions: vm.permissions,
          stats,
          shm: this.#vmShm.get(vm.name),
        }, resolve);
      });
      await ended;
      if (Date.now() - connectedAt > STABLE_SESSION_MS) backoff.reset();
      if (this.#running) await sleep(backoff.next(), signal);
    }
  }
}

/**
 * Why a VM's existing backing file must not be mapped, or undefined when it may. The broker's
 * safety may not rest on another account: only the broker's user (or root) may own it, and it
 * must not be writable by every user. Group write is how QEMU (another user) gets access; that
 * group should hold only QEMU's user, and a group the broker is not in is logged.
 */
function backingFileProblem(path: string, st: Stats): string | undefined {
  if (!st.isFile()) return `${path} is not a regular file`;
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid && st.uid !== 0) {
    return `${path} is owned by uid ${st.uid}, not by the broker's user (uid ${uid}) or root: ` +
      `its owner could shrink it and crash the broker (SIGBUS); chown it to the broker's user`;
  }
  if ((st.mode & 0o002) !== 0) {
    return `${path} is writable by every user (mode ${(st.mode & 0o777).toString(8)}): anyone ` +
      `could shrink it and crash the broker (SIGBUS); use mode 600, or 660 with QEMU's group`;
  }
  return undefined;
}

/** Name of a region file of brokers before sealed regions: vbus-<broker pid>-<run id>-<n>. */
const HOST_REGION_FILE = /^vbus-(\d+)-[0-9a-f]+-\d+$/;

/**
 * Remove host-client region files left in `dir` by brokers of earlier versions that died
 * without cleaning up (kill -9): those whose broker pid no longer runs. Today's host regions
 * are memfds, which vanish with the broker, so this only tidies up after an upgrade.
 */
async function removeStaleRegions(dir: string, log: Logger) {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = HOST_REGION_FILE.exec(name);
    if (!m || isRunning(Number(m[1]))) continue;
    await unlink(join(dir, name)).then(
      () => log.info("removed a stale region file", { file: join(dir, name) }),
      () => {},
    );
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM"; // exists, not ours
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

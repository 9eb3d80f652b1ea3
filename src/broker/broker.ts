/**
 * The broker: connects to every configured VM's port (a QEMU chardev unix socket), reconnecting
 * with backoff when a VM or QEMU restarts; listens on a unix socket for host-local clients; and
 * routes messages between all of them. A VM's identity is the port it arrived on.
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
import { lstat, readdir, unlink } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { randomBytes } from "node:crypto";
import type { BrokerConfig, VmConfig } from "./config.ts";
import { Router, type RouteEntry } from "./router.ts";
import { Session, type SessionContext, type SessionShm, SYSTEM_PREFIX } from "./session.ts";
import { loadFfi } from "../shm/negotiation.ts";
import { DEFAULT_SHM_SIZE } from "./config.ts";
import { stat } from "node:fs/promises";
import { type BrokerStats, type EndpointStats, newEndpointStats } from "./stats.ts";
import { connectUnix, SocketPort } from "../port/socket_port.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import { createLogger, type Logger } from "../util/log.ts";

/** Subject host clients request to get {@link BrokerStats}. */
export const STATS_SUBJECT = `${SYSTEM_PREFIX}STATS`;
/** A VM session that lived this long resets the reconnect backoff. */
const STABLE_SESSION_MS = 5000;

/** Broker tuning that is not part of the config file. */
export interface BrokerOptions {
  logger?: Logger;
  /** How often the broker PINGs each session. Default 10 s. */
  pingIntervalMs?: number;
  /** Reconnect backoff towards VM ports. Default 50 ms doubling to 2 s. */
  reconnect?: { initialMs?: number; maxMs?: number };
  /**
   * Give host-local clients a shared-memory region each (a file under `shmDir`, removed when
   * the session ends). Default true.
   */
  hostShm?: boolean;
  /** Where per-session regions of host clients are created. Default /dev/shm. */
  shmDir?: string;
}

/** A running broker. */
export class Broker {
  readonly config: BrokerConfig;
  readonly router = new Router();
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
  #hostStats = newEndpointStats("host");
  #links: Promise<void>[] = [];
  #startedAt = Date.now();
  #vmShm = new Map<string, SessionShm>();
  #mappings: { unmap(): void }[] = [];
  #ffi?: Awaited<ReturnType<typeof loadFfi>>;
  #hostShmCount = 0;
  #sessionNumber = 0;
  // Distinguishes session ids across broker restarts.
  #runId = randomBytes(3).toString("hex");

  constructor(config: BrokerConfig, opts: BrokerOptions = {}) {
    this.config = config;
    this.#opts = opts;
    this.#log = opts.logger ?? createLogger("broker");
    this.#ctx = {
      router: this.router,
      limits: config.limits,
      log: this.#log,
      pingIntervalMs: opts.pingIntervalMs ?? 10_000,
      nextSessionNumber: () => `${this.#runId}.${++this.#sessionNumber}`,
    };
    for (const vm of config.vms) this.#vmStats.set(vm.name, newEndpointStats(vm.name));
  }

  /** Start listening and connecting to VM ports. Resolves once the host socket listens. */
  async start(): Promise<void> {
    if (this.#running) throw new Error("broker already started");
    this.#running = true;
    this.#startedAt = Date.now();
    this.#addStatsService();
    for (const vm of this.config.vms) {
      if (vm.shm) this.#vmShm.set(vm.name, await this.#mapVmShm(vm));
    }
    if (this.#opts.hostShm !== false) {
      await removeStaleRegions(this.#opts.shmDir ?? "/dev/shm", this.#log);
      try {
        this.#ffi = await loadFfi();
      } catch (err) {
        this.#log.warn("FFI unavailable: host clients use the port stream", { error: (err as Error).message });
      }
    }
    if (this.config.listen) await this.#listen(this.config.listen);
    for (const vm of this.config.vms) this.#links.push(this.#runVmLink(vm));
    this.#log.info("broker started", {
      listen: this.config.listen ?? "(none)",
      vms: this.config.vms.map((v) => v.name).join(",") || "(none)",
    });
  }

  /** Close every session, stop listening and stop reconnecting. */
  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    this.#abort.abort();
    for (const s of [...this.#sessions]) s.close("broker stopping");
    if (this.#server) {
      await new Promise<void>((resolve) => this.#server!.close(() => resolve()));
      if (this.config.listen) await unlink(this.config.listen).catch(() => {});
    }
    await Promise.all(this.#links);
    await Promise.all([...this.#allSessions].map((s) => s.ringStopped));
    for (const m of this.#mappings.splice(0)) m.unmap();
    this.#log.info("broker stopped");
  }

  /** A snapshot of every counter. */
  stats(): BrokerStats {
    return {
      startedAt: new Date(this.#startedAt).toISOString(),
      uptimeMs: Date.now() - this.#startedAt,
      vms: [...this.#vmStats.values()].map((s) => structuredClone(s)),
      host: structuredClone(this.#hostStats),
    };
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
          if (reply !== null) this.router.publish(reply, null, null, encodeValue(this.stats()));
        },
      },
    };
    this.router.add(entry);
  }

  async #listen(path: string) {
    await removeStaleSocket(path);
    const server = createServer((socket: Socket) => {
      const port = new SocketPort(socket, `host client on ${path}`);
      const shm = this.#hostSessionShm();
      const session = this.#startSession(port, {
        identity: "host",
        host: true,
        permissions: this.config.hostPermissions,
        stats: this.#hostStats,
        shm,
      }, () => {
        if (shm && "bytes" in shm) {
          unlink(shm.path).catch(() => {});
          session.ringStopped.then(() => shm.unmap?.());
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err) =>
        reject(new VbusError(ErrorCode.Port, `cannot listen on ${path}: ${err.message}`)));
      server.listen(path, () => resolve());
    });
    server.on("error", (err) => this.#log.error("host socket error", { error: err.message }));
    this.#server = server;
  }

  #startSession(
    port: SocketPort,
    opts: {
      identity: string;
      host: boolean;
      permissions?: VmConfig["permissions"];
      stats: EndpointStats;
      shm?: SessionShm;
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

  /** Map a VM's shared-memory file (creating it at its configured size if missing). */
  async #mapVmShm(vm: VmConfig): Promise<SessionShm> {
    const path = vm.shm!;
    try {
      const existing = await stat(path).catch(() => undefined);
      if (existing && existing.size !== vm.shmSize) {
        throw new Error(`${path} is ${existing.size} bytes but the config says shmSize ${vm.shmSize}`);
      }
      const ffi = await loadFfi();
      const mapping = ffi.mapSharedSync(path, vm.shmSize, { create: !existing, mode: 0o600 });
      this.#mappings.push(mapping);
      this.#log.info("mapped VM shared memory", { vm: vm.name, path, size: vm.shmSize });
      return { bytes: mapping.bytes, path, perSession: false };
    } catch (err) {
      const reason = `cannot map ${path}: ${(err as Error).message}`;
      this.#log.warn("VM shared memory unavailable; its sessions use the port stream", { vm: vm.name, reason });
      this.#vmStats.get(vm.name)!.pathReason = reason;
      return { reason };
    }
  }

  /** A fresh region file for one host-local client, or why there is none. */
  #hostSessionShm(): (SessionShm & { unmap?: () => void }) | undefined {
    if (this.#opts.hostShm === false) return undefined;
    if (!this.#ffi) return { reason: "shared memory is not available to the broker (FFI not loaded)" };
    const path = join(this.#opts.shmDir ?? "/dev/shm", `vbus-${process.pid}-${this.#runId}-${++this.#hostShmCount}`);
    try {
      const ffi = this.#ffi;
      const mapping = ffi.mapSharedSync(path, DEFAULT_SHM_SIZE, { create: true, mode: 0o600 });
      return {
        bytes: mapping.bytes,
        path,
        perSession: true,
        futexWake: (word, index) => ffi.futexWake(word, index, 1),
        unmap: () => mapping.unmap(),
      };
    } catch (err) {
      return { reason: `cannot create ${path}: ${(err as Error).message}` };
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
        if (msg !== lastError) this.#log.warn("VM port not reachable, retrying", { vm: vm.name, error: msg });
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

/** Name of a host client's region file: vbus-<broker pid>-<run id>-<n>. */
const HOST_REGION_FILE = /^vbus-(\d+)-[0-9a-f]+-\d+$/;

/**
 * Remove host-client region files left by brokers that died without cleaning up (kill -9):
 * those whose broker pid no longer runs. Files of running brokers are left alone.
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
    throw new VbusError(ErrorCode.Port, `${path} exists and is not a socket; refusing to replace it`);
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

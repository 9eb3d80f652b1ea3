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
import type { Stats } from "node:fs";
import { readdir, unlink } from "node:fs/promises";
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
import { connectUnix, type SocketPort } from "../port/socket_port.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { INLINE_SOURCE, loadConfig, RESERVED_VM_NAME } from "./config.ts";
import { describePlan, planReload } from "./reload.ts";
import { applyFileAccess } from "./file_access.ts";
import { QueueAwareRouter } from "../bridge/queue_router.ts";
import { NatsBridge } from "../bridge/nats_bridge.ts";
import type { Bridge } from "../bridge/bridge.ts";
import { HostStatsPool } from "./host_stats.ts";
import { MonitorServer } from "../monitor/monitor_server.ts";
import { stampRegionSignature } from "../shm/region_signature.ts";
import type { Port } from "../port/port.ts";
import { memoryPortPair } from "../port/memory_port.ts";
import { applyListenAccess, HostListener } from "./host_listener.ts";
import { DEFAULT_AGENT_SLOTS, serveVmConnection, type VmConnection } from "./channel_mux.ts";

/**
 * Subject host clients request to get {@link BrokerStats} (what `vbus stats` prints). VMs
 * cannot request it: `$VBUS.` subjects are the host's.
 *
 * @example
 * ```ts
 * import { connect } from "../client/bus.ts";
 * import { STATS_SUBJECT } from "./broker.ts";
 * import type { BrokerStats } from "./stats.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const { data } = await bus.request<BrokerStats>(STATS_SUBJECT);
 * for (const vm of data.vms) console.log(vm.name, vm.connected, vm.path);
 * await bus.close();
 * ```
 */
export const STATS_SUBJECT = `${SYSTEM_PREFIX}STATS`;
/**
 * Subject host clients request to reload the config file (`vbus reload`). The answer is
 * `{ ok: true, changes: string[] }` or `{ ok: false, error }`. VMs cannot publish `$VBUS.`
 * subjects, and `host.permissions.publish` can keep it from host clients too.
 *
 * @example
 * ```ts
 * import { connect } from "../client/bus.ts";
 * import { RELOAD_SUBJECT } from "./broker.ts";
 * type ReloadAnswer = { ok: true; changes: string[] } | { ok: false; error: string };
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * const { data } = await bus.request<ReloadAnswer>(RELOAD_SUBJECT);
 * console.log(data.ok ? data.changes : data.error); // e.g. ["added vm3"]
 * await bus.close();
 * ```
 */
export const RELOAD_SUBJECT = `${SYSTEM_PREFIX}RELOAD`;
/** A VM session that lived this long resets the reconnect backoff. */
const STABLE_SESSION_MS = 5000;
/**
 * Set by `bin/vbus.mjs` for the runtime it starts: the pid of the wrapper the user started.
 * When that process is gone (killed, even with SIGKILL), the broker stops itself.
 */
export const WRAPPER_PID_ENV = "VBUS_WRAPPER_PID";
/** How often the broker checks that its wrapper process still runs. */
const WRAPPER_CHECK_MS = 500;
export { EVICTED_BEFORE_HELLO, TOO_MANY_CONNECTIONS } from "./host_listener.ts";

/**
 * Broker tuning that is not part of the config file.
 *
 * @example
 * ```ts
 * import { Broker } from "./broker.ts";
 * import { parseConfig } from "./config.ts";
 * import { createLogger } from "../util/log.ts";
 * const broker = new Broker(parseConfig('{ "listen": "/tmp/vbus-example.sock", "vms": [] }'), {
 *   logger: createLogger("broker", { level: "warn" }),
 *   pingIntervalMs: 5_000,
 *   reconnect: { initialMs: 100, maxMs: 5_000 },
 * });
 * ```
 */
export interface BrokerOptions {
  /** Where the broker logs; default `createLogger("broker")` (level and format from the env). */
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

/** One VM's connection loop, stopped by its own signal (a reload removing it, or stop). */
interface VmLink {
  /** The VM's current entry (a reload may change its permissions). */
  vm: VmConfig;
  abort: AbortController;
  done: Promise<void>;
  /** The live connection: one session, or an agent's channels (channel_mux.ts). */
  connection?: VmConnection;
  /** When each agent slot's last session stopped reading it (kept across connections). */
  slotsQuiet: Map<number, Promise<void>>;
}

/** How long a VM's shared-memory file may be missing-then-present or short of its size while
 * QEMU makes it, before the broker takes it as it is. */
const SHM_FILE_SETTLE_MS = 2_000;
/** How often the broker looks again at a VM's shared-memory file within that time. */
const SHM_FILE_POLL_MS = 20;

/**
 * A broker: `start()` serves the config's VMs and host socket until `stop()` (or `drain()`).
 * See the module doc for what it does.
 *
 * @example
 * ```ts
 * import { Broker } from "./broker.ts";
 * import { parseConfig } from "./config.ts";
 * const broker = new Broker(parseConfig('{ "listen": "/tmp/vbus-example.sock", "vms": [] }'));
 * await broker.start(); // host clients can connect to /tmp/vbus-example.sock now
 * console.log(broker.running, broker.stats().host.connected); // true false
 * await broker.stop();
 * ```
 */
export class Broker {
  #config: BrokerConfig;
  /** With a bridge, a router that also keeps queue groups one member wide across hosts. */
  readonly #router: Router;
  #log: Logger;
  #ctx: SessionContext;
  #opts: BrokerOptions;
  #hostListener?: HostListener;
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
  #vmLinks = new Map<string, VmLink>();
  #reloads: Promise<unknown> = Promise.resolve();
  #reloadEntry?: RouteEntry;
  #draining = false;
  #startedAt = Date.now();
  #vmShm = new Map<string, SessionShm>();
  #mappings = new Map<string, { unmap(): void }>(); // by VM name
  #locks = new Map<string, { release(): void }>(); // by VM name
  #ffi?: Ffi;
  #hostShmCount = 0;
  #wrapperTimer?: ReturnType<typeof setInterval>;
  #statsEntry?: RouteEntry;
  #bridges: NatsBridge[] = [];
  #sessionNumber = 0;
  // Distinguishes session ids across broker restarts.
  #runId = randomBytes(3).toString("hex");

  /** A broker for a validated config (`parseConfig`, `loadConfig`); `start()` runs it. */
  constructor(config: BrokerConfig, opts: BrokerOptions = {}) {
    this.#config = config;
    this.#opts = opts;
    this.#log = opts.logger ?? createLogger("broker");
    this.#router = config.bridge?.nats ? new QueueAwareRouter() : new Router();
    this.#ctx = {
      router: this.#router,
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
      this.#statsEntry = this.#addStatsService();
      this.#reloadEntry = this.#addReloadService();
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
      if (this.config.listen) {
        this.#hostListener = await HostListener.open({
          path: this.config.listen,
          access: this.config.listenAccess,
          maxConnections: () => this.config.limits.maxHostConnections,
          stats: this.#hostStats,
          log: this.#log,
          startSession: (port, onEnd) => this.#startHostSession(port, onEnd),
        });
      }
      if (this.config.http) {
        this.#monitor = new MonitorServer(this.config.http, this, this.#log);
        await this.#monitor.start();
      }
    } catch (err) {
      this.#running = false;
      await this.#monitor?.close();
      this.#monitor = undefined;
      // The endpoint failed after the host socket was made: no socket may stay behind.
      await this.#hostListener?.closeAndRemove();
      this.#hostListener = undefined;
      this.#bridges = [];
      if (this.#statsEntry) this.#router.remove(this.#statsEntry);
      if (this.#reloadEntry) this.#router.remove(this.#reloadEntry);
      for (const m of this.#mappings.values()) m.unmap();
      this.#mappings.clear();
      for (const l of this.#locks.values()) l.release();
      this.#locks.clear();
      throw err;
    }
    for (const vm of this.config.vms) this.#startVmLink(vm);
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
  #lockVms(
    ffiProblem: string,
    vms: VmConfig[] = this.config.vms,
    into: Map<string, { release(): void }> = this.#locks,
  ) {
    if (vms.length === 0) return;
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
    for (const vm of vms) {
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
      into.set(vm.name, lock);
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
    this.#ctx.stopping = true;
    for (const s of [...this.#sessions]) s.close("broker stopping");
    await this.#hostListener?.closeAndRemove();
    for (const link of this.#vmLinks.values()) {
      link.abort.abort();
      link.connection?.close("broker stopping"); // an agent's mux outlives its sessions
    }
    await Promise.all([...this.#vmLinks.values()].map((l) => l.done));
    this.#vmLinks.clear();
    await Promise.all([...this.#allSessions].map((s) => s.ringStopped));
    for (const m of this.#mappings.values()) m.unmap();
    this.#mappings.clear();
    if (this.#wrapperTimer) clearInterval(this.#wrapperTimer);
    for (const l of this.#locks.values()) l.release();
    this.#locks.clear();
    await this.#monitor?.close(); // last: /healthz says "not running" while the broker stops
    this.#log.info("broker stopped");
  }

  /** The configuration in force (a reload replaces it). */
  get config(): BrokerConfig {
    return this.#config;
  }

  /**
   * Apply a new configuration without a restart (SIGHUP, `vbus reload`): `next`, or else the
   * file the running one came from, read again. Added VMs are connected, removed ones closed,
   * changed permissions and limits apply to live sessions, and VMs whose entry did not change
   * never notice (see reload.ts for what may change). Resolves with what changed; rejects,
   * having changed nothing, when the new configuration has an error or changes what needs a
   * restart: the running one stays. Reloads run one at a time. A broker whose configuration was
   * given inline ({@link INLINE_SOURCE}) has no file to read: without `next` it rejects, saying so.
   */
  reload(next?: BrokerConfig): Promise<string[]> {
    const run = this.#reloads.then(() => this.#reload(next));
    this.#reloads = run.catch(() => {});
    return run;
  }

  async #reload(given?: BrokerConfig): Promise<string[]> {
    if (!this.#running || this.#draining) throw new Error("the broker is not running");
    const old = this.#config;
    let next: BrokerConfig;
    let plan: ReturnType<typeof planReload>;
    try {
      if (!given && old.source === INLINE_SOURCE) {
        throw new Error(
          "this broker's configuration was given inline, not read from a file, so there is no " +
            "file to reload from (start it with --config FILE, or pass reload() a configuration)",
        );
      }
      next = given ?? await loadConfig(old.source);
      plan = planReload(old, next);
      // What can fail comes first, so a refused reload leaves everything as it was: locks
      // for VMs on new sockets, then file access.
      const socketChanged = plan.relinked.filter(
        (vm) => old.vms.find((o) => o.name === vm.name)?.socket !== vm.socket,
      );
      const fresh = new Map<string, { release(): void }>();
      try {
        this.#lockVms("FFI not loaded", [...plan.added, ...socketChanged], fresh);
      } catch (err) {
        for (const l of fresh.values()) l.release();
        throw err;
      }
      for (const vm of socketChanged) this.#locks.get(vm.name)?.release();
      for (const [name, lock] of fresh) this.#locks.set(name, lock);
      if (plan.listenAccess && next.listen && next.listenAccess) {
        applyListenAccess(next.listen, next.listenAccess, this.#log);
      }
      for (const vm of plan.shmAccess) {
        if (vm.shm && this.#mappings.has(vm.name)) {
          applyFileAccess(vm.shm, vm.shmAccess ?? {}, `the shm of VM ${vm.name}`);
        }
      }
    } catch (err) {
      this.#log.error("config reload refused; the running configuration stays", {
        error: (err as Error).message,
      });
      throw err;
    }
    // Now apply: closing first (a relinked VM's new link must not meet its old session).
    const closing = [...plan.removed, ...plan.relinked];
    await Promise.all(
      closing.map((vm) => this.#closeVm(vm.name, plan.removed.includes(vm))),
    );
    Object.assign(this.#ctx.limits, next.limits);
    this.#config = { ...next, limits: this.#ctx.limits };
    for (const vm of next.vms) {
      const link = this.#vmLinks.get(vm.name);
      if (link) link.vm = vm; // its next session gets the new entry
    }
    const permissions = new Map(plan.permissions.map((vm) => [vm.name, vm.permissions]));
    for (const s of this.#sessions) {
      if (plan.limits.length > 0) s.limitsChanged();
      if (s.identity === RESERVED_VM_NAME) {
        if (plan.hostPermissions) s.updatePermissions(next.hostPermissions);
      } else if (permissions.has(s.identity)) {
        s.updatePermissions(permissions.get(s.identity));
      }
    }
    for (const vm of [...plan.relinked, ...plan.added]) {
      if (!this.#vmStats.has(vm.name)) this.#vmStats.set(vm.name, newEndpointStats(vm.name));
      if (vm.shm) this.#vmShm.set(vm.name, await this.#mapVmShm(vm));
      this.#startVmLink(vm);
    }
    const changes = describePlan(plan);
    this.#log.info("config reloaded", {
      source: next.source,
      changes: changes.join("; ") || "nothing changed",
    });
    return changes;
  }

  /**
   * Stop one VM's link (a reload removed or relinked it): its session closes and its region is
   * unmapped once idle; a removed VM's lock is released and its stats go.
   */
  async #closeVm(name: string, removed: boolean) {
    const link = this.#vmLinks.get(name);
    if (link) {
      this.#vmLinks.delete(name);
      link.abort.abort();
      const sessions = link.connection?.sessions() ?? [];
      link.connection?.close(
        removed ? "VM removed from the configuration" : "VM's socket or shm changed",
      );
      await link.done;
      await Promise.all(sessions.map((s) => s.ringStopped));
    }
    this.#mappings.get(name)?.unmap();
    this.#mappings.delete(name);
    this.#vmShm.delete(name);
    if (removed) {
      this.#locks.get(name)?.release();
      this.#locks.delete(name);
      this.#vmStats.delete(name);
    }
  }

  /**
   * Stop gracefully (SIGTERM): accept nothing new (no host connections, no VM reconnects, no
   * bridge input, nothing more read from any session), give what is queued for each session
   * up to `timeoutMs` (config `drainTimeoutMs`) to be handed to it, then {@link stop}.
   * Resolves with the bytes still queued when it stopped (0: everything went out).
   */
  async drain(timeoutMs: number = this.config.drainTimeoutMs): Promise<{ pendingBytes: number }> {
    if (!this.#running || this.#draining) {
      await this.stop();
      return { pendingBytes: 0 };
    }
    this.#draining = true;
    const pending = () => {
      let n = 0;
      for (const s of this.#sessions) n += s.pendingOutputBytes;
      return n;
    };
    this.#log.info("draining: accepting nothing new", {
      timeoutMs,
      sessions: this.#sessions.size,
      pendingBytes: pending(),
    });
    void this.#hostListener?.close(); // resolves once the sessions below are closed, by stop()
    for (const link of this.#vmLinks.values()) link.abort.abort();
    // Bridges stop first, as in stop(): nothing more comes in from them, and what they still
    // hold for the other side is flushed by their own stop.
    await Promise.all(this.#bridges.splice(0).map((b) => b.stop()));
    for (const s of this.#sessions) s.stopInput();
    const deadline = Date.now() + timeoutMs;
    while (this.#running && pending() > 0 && Date.now() < deadline) await sleep(10);
    const left = pending();
    if (left > 0) {
      this.#log.warn("drain timed out: closing with messages still queued", {
        timeoutMs,
        pendingBytes: left,
        hint: "raise drainTimeoutMs (and TimeoutStopSec in the systemd unit) to wait longer",
      });
    } else this.#log.info("drained: everything queued was handed to its session");
    await this.stop(); // closes the sessions, then waits for the server (serverClosed)
    return { pendingBytes: left };
  }

  /**
   * A connection to this broker from inside its own process, for a host service that embeds
   * the broker: pass it as `connect({ transport: () => broker.localPort() })`. The client is a
   * host client (config `hostPermissions`) whose port frames go through memory
   * (memory_port.ts): no socket, no system call, no other process to wake; with `shm: true` its
   * messages take a shared-memory ring as a socket client's do. Needs no `listen`. Rejects with
   * `CLOSED` when the broker is not running.
   *
   * @example
   * ```ts
   * import { Broker, connect, parseConfig } from "../../mod.ts";
   * const broker = new Broker(parseConfig('{ "listen": "/tmp/vbus-embedded.sock", "vms": [] }'));
   * await broker.start();
   * const service = await connect({ transport: () => broker.localPort() });
   * service.subscribe("time.now", { callback: (_e, m) => m.respond(Date.now()) });
   * ```
   */
  localPort(): Promise<Port> {
    if (!this.running) {
      return Promise.reject(
        new VbusError(ErrorCode.Closed, "the broker is not running (start() it first)"),
      );
    }
    const [client, server] = memoryPortPair("in-process client");
    // Not the host socket's: socket clients can neither evict it nor count it.
    this.#startHostSession(server);
    return Promise.resolve(client);
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

  /** Started, and neither draining nor stopping (what `/healthz` first checks). */
  get running(): boolean {
    return this.#running && !this.#draining;
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
  get bridges(): readonly Bridge[] {
    return this.#bridges;
  }

  /** Bridges from the config (reading their credentials now, so a bad file fails start). */
  #makeBridges() {
    const nats = this.config.bridge?.nats;
    if (!nats) return;
    this.#bridges = [
      new NatsBridge({
        config: nats,
        router: this.#router as QueueAwareRouter,
        limits: this.config.limits,
        log: this.#log,
        publisher: () => this.#ctx.publishing,
      }),
    ];
  }

  /**
   * A broker service on a `$VBUS.` subject: `answer` is called with the session that asked (a
   * host client; VMs may not publish there) and its reply subject, and what it returns goes to
   * that session only, whatever reply subject it named.
   */
  #addService(subject: string, answer: (requester: Session) => unknown): RouteEntry {
    const entry: RouteEntry = {
      sid: 0,
      subject,
      queue: null,
      max: 0,
      delivered: 0,
      target: {
        deliver: (_sub, _subject, reply) => {
          const requester = this.#ctx.publishing;
          // Only a host client: not a bridge's message, never a VM.
          if (reply === null || !(requester instanceof Session)) return;
          if (requester.identity !== RESERVED_VM_NAME) return;
          const send = (value: unknown) => {
            if (requester.open) this.#router.deliverTo(requester, reply, null, encodeValue(value));
          };
          const value = answer(requester);
          if (value instanceof Promise) value.then(send);
          else send(value);
        },
      },
    };
    this.#router.add(entry);
    return entry;
  }

  /** `$VBUS.STATS`: every counter ({@link stats}). */
  #addStatsService(): RouteEntry {
    return this.#addService(STATS_SUBJECT, () => this.stats());
  }

  /** `$VBUS.RELOAD`: a host client asks for a reload and gets what changed, or why not. */
  #addReloadService(): RouteEntry {
    return this.#addService(RELOAD_SUBJECT, (requester) => {
      this.#log.info("reload requested", { session: requester.id });
      return this.reload().then(
        (changes) => ({ ok: true, changes }),
        (err) => ({ ok: false, error: (err as Error).message }),
      );
    });
  }

  /** Give the host socket the config's group and mode. */
  /**
   * A host client's session on `port` (a socket's or an in-process one): host permissions and
   * counters, and a shared-memory region of its own, made only when its HELLO asks for one
   * (idle connections cost no memory) and unmapped once its ring stopped.
   */
  #startHostSession(port: Port, onEnd?: () => void): Session {
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
      onEnd?.();
      this.#hostPool.close(stats);
      const r = region;
      if (r) session.ringStopped.then(() => r.unmap());
    });
    return session;
  }

  #startSession(
    port: Port,
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
   * refused: whoever can truncate it can kill the broker with SIGBUS. QEMU may create the same
   * file at the same moment: a file that appears between the look and the open, or that is still
   * shorter than shmSize, is looked at again for up to {@link SHM_FILE_SETTLE_MS}. Refused or
   * unmappable, the VM uses the port stream and its stats say why.
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
      const ffi = this.#ffi;
      if (!ffi) throw new Error("FFI is not available to the broker");
      // QEMU may be making this file at this moment (memory-backend-file opens it with O_CREAT,
      // then sizes it): one that appears after the look, or is still short of shmSize, is
      // looked at again for a short while before it counts as wrong.
      const settleBy = Date.now() + SHM_FILE_SETTLE_MS;
      let mapping: ReturnType<Ffi["mapSharedSync"]> | undefined;
      while (!mapping) {
        const existing = await stat(path).catch(() => undefined);
        if (existing) {
          const problem = backingFileProblem(path, existing, vm.shmAccess?.owner?.id);
          if (problem) return refuse(problem, "error");
          if (existing.size < vm.shmSize && Date.now() < settleBy) {
            await sleep(SHM_FILE_POLL_MS);
            continue;
          }
          if (existing.size !== vm.shmSize) {
            throw new Error(
              `${path} is ${existing.size} bytes but the config says shmSize ${vm.shmSize}`,
            );
          }
          const gid = process.getgid?.() ?? 0;
          const chosen = vm.shmAccess?.group?.id; // the config's shmGroup: QEMU's, on purpose
          if ((existing.mode & 0o020) !== 0 && existing.gid !== gid && existing.gid !== chosen) {
            this.#log.warn(
              "a VM's shared-memory file is writable by a group the broker is not in",
              {
                vm: vm.name,
                path,
                gid: existing.gid,
                why:
                  "its members can shrink it and crash the broker: that group should hold only QEMU's user",
              },
            );
          }
        }
        this.#log.debug("opening VM shared memory", { vm: vm.name, path, create: !existing });
        try {
          // Created here only when missing, and exclusively: never resize a file QEMU may have made.
          mapping = ffi.mapSharedSync(path, vm.shmSize, {
            create: !existing,
            exclusive: true,
            mode: 0o600,
          });
        } catch (err) {
          // Made (or removed) by someone else since the look: look again, within the bound.
          const raced = err instanceof ffi.FfiError &&
            err.code === (existing ? "ENOENT" : "EEXIST");
          if (!raced || Date.now() >= settleBy) throw err;
        }
      }
      this.#mappings.set(vm.name, mapping);
      const access = vm.shmAccess ?? {};
      if (access.mode !== undefined || access.owner || access.group) {
        try {
          applyFileAccess(path, access, `the shm of VM ${vm.name}`);
        } catch (err) {
          this.#mappings.delete(vm.name);
          mapping.unmap();
          throw err;
        }
      }
      // Signed now, so a guest with several ivshmem devices finds this one before any session.
      stampRegionSignature(mapping.bytes);
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

  #startVmLink(vm: VmConfig) {
    const link: VmLink = {
      vm,
      abort: new AbortController(),
      done: Promise.resolve(),
      slotsQuiet: new Map(),
    };
    this.#vmLinks.set(vm.name, link);
    link.done = this.#runVmLink(link);
  }

  /** Keep a connection to one VM's port until the broker stops or a reload removes the VM. */
  async #runVmLink(link: VmLink): Promise<void> {
    const backoff = new Backoff(this.#opts.reconnect);
    const { vm } = link; // socket and name never change for a link (a reload relinks instead)
    const stats = this.#vmStats.get(vm.name)!;
    const signal = link.abort.signal;
    let lastError = "";
    while (this.#running && !signal.aborted) {
      let port: SocketPort;
      try {
        port = await connectUnix(vm.socket);
      } catch (err) {
        const msg = (err as Error).message;
        if (msg !== lastError) {
          this.#log.warn("VM port not reachable, retrying", { vm: vm.name, error: msg });
        }
        lastError = msg;
        const delayMs = backoff.next();
        this.#log.debug("VM port not reachable, retry scheduled", {
          vm: vm.name,
          attempt: backoff.attempts,
          delayMs,
          error: msg,
        });
        await sleep(delayMs, signal);
        continue;
      }
      lastError = "";
      if (!this.#running || signal.aborted) {
        port.destroy();
        break;
      }
      this.#log.info("connected to VM port", { vm: vm.name, socket: vm.socket });
      const connectedAt = Date.now();
      // One session, or an agent's channels, each a session of this VM (channel_mux.ts).
      link.connection = serveVmConnection(port, {
        vm: vm.name,
        shm: this.#vmShm.get(vm.name),
        agentSlots: link.vm.agentSlots ?? DEFAULT_AGENT_SLOTS,
        slotsQuiet: link.slotsQuiet,
        stats,
        log: this.#log,
        signal,
        startSession: (p, shm, onEnd) =>
          this.#startSession(p, {
            identity: vm.name,
            host: false,
            permissions: link.vm.permissions,
            stats,
            shm,
          }, onEnd),
      });
      await link.connection.ended;
      if (Date.now() - connectedAt > STABLE_SESSION_MS) backoff.reset();
      link.connection = undefined;
      if (this.#running && !signal.aborted) {
        const delayMs = backoff.next();
        this.#log.debug("VM session ended, reconnecting", { vm: vm.name, delayMs });
        await sleep(delayMs, signal);
      }
    }
  }
}

/**
 * Why a VM's existing backing file must not be mapped, or undefined when it may. The broker's
 * safety may not rest on another account: only the broker's user (or root) may own it, and it
 * must not be writable by every user. Group write is how QEMU (another user) gets access; that
 * group should hold only QEMU's user, and a group the broker is not in is logged.
 */
function backingFileProblem(path: string, st: Stats, shmOwner?: number): string | undefined {
  if (!st.isFile()) return `${path} is not a regular file`;
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid && st.uid !== 0 && st.uid !== shmOwner) {
    return `${path} is owned by uid ${st.uid}, not by the broker's user (uid ${uid}), root or ` +
      `the config's shmOwner: its owner could shrink it and crash the broker (SIGBUS); chown ` +
      `it to the broker's user (or remove it: the broker creates it)`;
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

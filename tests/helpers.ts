/**
 * Shared test fixtures: temp dirs, a broker with simulated VMs, and polling helpers.
 * Everything here runs real code over real unix sockets; nothing is mocked.
 * @module
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";

/** Size of each simulated VM's shared-memory file (a power of two, like ivshmem). */
export const SHM_SIZE = 4 * 1024 * 1024;
import { Broker, type BrokerOptions } from "../src/broker/broker.ts";
import { validateConfig } from "../src/broker/config.ts";
import type { Permissions } from "../src/broker/config.ts";
import type { Limits } from "../src/protocol/limits.ts";
import { type Bus, connect } from "../src/client/bus.ts";
import type { ConnectOptions } from "../src/client/options.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { createLogger } from "../src/util/log.ts";

/** A fresh temp directory, removed by `cleanup()`. Unix socket paths must stay short. */
export function tempDir(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), "vbus-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** One VM of a {@link Lab}. */
export interface LabVm {
  name: string;
  vm: SimulatedVm;
  /** The VM's shared-memory file (its "ivshmem BAR"), when the lab has shm. */
  shm?: string;
  /** Connect the guest-side client through the VM's port. */
  connect(opts?: ConnectOptions): Promise<Bus>;
}

/** A broker with simulated VMs and a host socket, torn down by `close()`. */
export interface Lab {
  dir: string;
  broker: Broker;
  listen: string;
  vms: Record<string, LabVm>;
  /** Connect a host client through the broker's socket. */
  host(opts?: ConnectOptions): Promise<Bus>;
  /** Restart the broker with the same config (a new process would do the same). */
  restartBroker(): Promise<void>;
  close(): Promise<void>;
}

/** Options for {@link startLab}. */
export interface LabOptions {
  vms?: (string | { name: string; permissions?: Permissions })[];
  limits?: Partial<Limits>;
  hostPermissions?: Permissions;
  broker?: BrokerOptions;
  /** Give every VM a shared-memory file (the fast path); host clients get rings unless false. */
  shm?: boolean;
}

const quiet = createLogger("test-broker", "silent");

/** Start simulated VMs and a broker that connects to them; waits until every VM is linked. */
export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "broker.sock");
  const vmSpecs = (opts.vms ?? ["vm1", "vm2"]).map((v) => typeof v === "string" ? { name: v } : v);
  const raw = {
    listen,
    ...(opts.hostPermissions ? { host: { permissions: opts.hostPermissions } } : {}),
    ...(opts.limits ? { limits: opts.limits } : {}),
    vms: vmSpecs.map((v) => ({
      name: v.name,
      socket: join(dir, `${v.name}.sock`),
      ...(opts.shm ? { shm: `/dev/shm/${basename(dir)}-${v.name}`, shmSize: SHM_SIZE } : {}),
      ...(v.permissions ? { permissions: v.permissions } : {}),
    })),
  };
  const config = validateConfig(raw, "test-config");
  const vms: Record<string, LabVm> = {};
  for (const v of config.vms) {
    const vm = new SimulatedVm(v.name, v.socket);
    await vm.start();
    vms[v.name] = {
      name: v.name,
      vm,
      shm: v.shm,
      connect: (o = {}) => connect({ transport: () => vm.open(), timeout: 5000, shm: v.shm, ...o }),
    };
  }
  const brokerOpts: BrokerOptions = {
    logger: quiet,
    hostShm: opts.shm ?? false,
    reconnect: { initialMs: 20, maxMs: 200 },
    ...opts.broker,
  };
  let broker = new Broker(config, brokerOpts);
  await broker.start();
  const clients: Bus[] = [];
  const lab: Lab = {
    dir,
    listen,
    vms,
    get broker() {
      return broker;
    },
    host: async (o = {}) => {
      const bus = await connect({ server: listen, timeout: 5000, ...o });
      clients.push(bus);
      return bus;
    },
    restartBroker: async () => {
      await broker.stop();
      broker = new Broker(config, brokerOpts);
      await broker.start();
    },
    close: async () => {
      for (const c of clients) await c.close();
      await broker.stop();
      for (const v of Object.values(vms)) {
        await v.vm.stop();
        if (v.shm) rmSync(v.shm, { force: true });
      }
      cleanup();
    },
  };
  await waitFor(
    () => Object.values(vms).every((v) => v.vm.hostConnected),
    "broker linked to every VM",
  );
  return lab;
}

/** Poll `cond` every 5 ms until true; fail with `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const iterators = new WeakMap<object, AsyncIterator<unknown>>();

/**
 * Collect the next `n` messages' data from a subscription, failing after `timeoutMs`. The
 * subscription stays open (one iterator per subscription is kept and reused).
 */
export async function take<T>(
  it: AsyncIterable<{ data: T }>,
  n: number,
  timeoutMs = 5000,
): Promise<T[]> {
  let iterator = iterators.get(it) as AsyncIterator<{ data: T }> | undefined;
  if (!iterator) iterators.set(it, iterator = it[Symbol.asyncIterator]());
  const out: T[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`timed out after ${out.length}/${n} messages`)),
        Math.max(1, deadline - Date.now()),
      );
    });
    try {
      const r = await Promise.race([iterator.next(), timeout]);
      if (r.done) throw new Error(`subscription ended after ${out.length}/${n} messages`);
      out.push(r.value.data);
    } finally {
      clearTimeout(timer);
    }
  }
  return out;
}

/** Resolve after `ms`. */
export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * What a config reload changes: the difference between the running configuration and a new
 * one, decided before anything is touched, so a reload is applied whole or not at all.
 *
 * - A VM only in the new config is **added** (locked, mapped, connected); one only in the old
 *   is **removed** (its session closed, its region unmapped, its lock released).
 * - A VM whose `socket`, `shm` or `shmSize` changed is **relinked**: removed and added again
 *   (its guest reconnects; nothing else could reach the new socket or region).
 * - A VM whose `permissions` changed keeps its session: the new permissions apply to it live.
 *   One whose `shmMode`/`shmOwner`/`shmGroup` changed keeps it too: its file is updated.
 * - `limits`, `host.permissions`, `listenMode`/`listenGroup` and `drainTimeoutMs` apply live.
 * - Every other key (`listen`, `bridge`, and any key this file does not know) cannot change
 *   without a restart: such a reload is refused, naming the key, and the old config stays.
 *
 * A VM that is in both configs with none of the above changed is untouched: its session never
 * notices the reload.
 *
 * @example
 * ```ts
 * import { planReload, describePlan } from "./reload.ts";
 * import { parseConfig } from "./config.ts";
 * const old = parseConfig('{ "vms": [{ "name": "vm1", "socket": "/run/vm1.sock" }] }');
 * const next = parseConfig('{ "vms": [{ "name": "vm1", "socket": "/run/vm1.sock" },' +
 *   ' { "name": "vm2", "socket": "/run/vm2.sock" }] }');
 * console.log(describePlan(planReload(old, next))); // ["added vm2"]
 * ```
 * @module
 */
import { type BrokerConfig, ConfigError, type VmConfig } from "./config.ts";
import type { Limits } from "../protocol/limits.ts";

/** What applying a new configuration takes. */
export interface ReloadPlan {
  /** VMs to connect (new names). */
  added: VmConfig[];
  /** VMs to close (names gone). */
  removed: VmConfig[];
  /** VMs whose socket or region changed: closed and connected again (the new entries). */
  relinked: VmConfig[];
  /** VMs whose permissions changed (the new entries); their sessions stay. */
  permissions: VmConfig[];
  /** VMs whose shared-memory file's mode, owner or group changed (the new entries). */
  shmAccess: VmConfig[];
  /** Host clients' permissions changed. */
  hostPermissions: boolean;
  /** Limits whose value changed. */
  limits: (keyof Limits)[];
  /** The host socket's mode or group changed. */
  listenAccess: boolean;
  /** Other live settings that changed (e.g. `drainTimeoutMs`). */
  settings: string[];
}

/** Keys of a VM that need a new link when they change. */
const LINK_KEYS = ["socket", "shm", "shmSize"] as const;
/** Top-level keys applied live (besides `vms`); `source` is where it came from. */
const LIVE_KEYS = new Set([
  "source",
  "vms",
  "limits",
  "hostPermissions",
  "listenAccess",
  "drainTimeoutMs",
]);

/** JSON with object keys sorted: equal values give equal strings whatever the key order. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x) => {
    if (x === null || typeof x !== "object" || Array.isArray(x)) return x;
    const sorted: Record<string, unknown> = {};
    for (const k of Object.keys(x).sort()) sorted[k] = (x as Record<string, unknown>)[k];
    return sorted;
  }) ?? "undefined";
}

const same = (a: unknown, b: unknown) => canonical(a) === canonical(b);

/**
 * Compare the running config with a new one (already validated).
 *
 * @throws {ConfigError} naming the first key that cannot change without a restart.
 * @example
 * ```ts
 * import type { Broker } from "./broker.ts";
 * import { loadConfig } from "./config.ts";
 * async function check(broker: Broker) {
 *   const plan = planReload(broker.config, await loadConfig("/etc/vbus/broker.jsonc"));
 *   console.log(describePlan(plan));
 * }
 * ```
 */
export function planReload(old: BrokerConfig, next: BrokerConfig): ReloadPlan {
  const keys = new Set([...Object.keys(old), ...Object.keys(next)]);
  for (const key of [...keys].sort()) {
    if (LIVE_KEYS.has(key)) continue;
    const a = (old as unknown as Record<string, unknown>)[key];
    const b = (next as unknown as Record<string, unknown>)[key];
    if (same(a, b)) continue;
    const what = key === "listen" ? "the host socket's path" : "this setting";
    throw new ConfigError(
      next.source,
      key,
      `changed from ${canonical(a)} to ${canonical(b)}, but a reload cannot change ${what}: ` +
        `restart the broker to apply it (or put the old value back to reload the rest)`,
    );
  }
  const plan: ReloadPlan = {
    added: [],
    removed: [],
    relinked: [],
    permissions: [],
    shmAccess: [],
    hostPermissions: !same(old.hostPermissions, next.hostPermissions),
    limits: (Object.keys(next.limits) as (keyof Limits)[]).filter(
      (k) => old.limits[k] !== next.limits[k],
    ),
    listenAccess: !same(old.listenAccess, next.listenAccess),
    settings: old.drainTimeoutMs !== next.drainTimeoutMs ? ["drainTimeoutMs"] : [],
  };
  const before = new Map(old.vms.map((vm) => [vm.name, vm]));
  const after = new Map(next.vms.map((vm) => [vm.name, vm]));
  for (const vm of old.vms) if (!after.has(vm.name)) plan.removed.push(vm);
  for (const vm of next.vms) {
    const was = before.get(vm.name);
    if (!was) {
      plan.added.push(vm);
    } else if (LINK_KEYS.some((k) => was[k] !== vm[k])) {
      plan.relinked.push(vm);
    } else {
      if (!same(was.permissions, vm.permissions)) plan.permissions.push(vm);
      if (!same(was.shmAccess, vm.shmAccess)) plan.shmAccess.push(vm);
    }
  }
  return plan;
}

/**
 * One short phrase per change, for the log and the `vbus reload` answer.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const old = parseConfig('{ "vms": [{ "name": "vm1", "socket": "/run/vm1.sock" }] }');
 * const next = parseConfig('{ "vms": [{ "name": "vm2", "socket": "/run/vm2.sock" }] }');
 * describePlan(planReload(old, next)); // ["added vm2", "removed vm1"]
 * ```
 */
export function describePlan(plan: ReloadPlan): string[] {
  const out: string[] = [];
  for (const vm of plan.added) out.push(`added ${vm.name}`);
  for (const vm of plan.removed) out.push(`removed ${vm.name}`);
  for (const vm of plan.relinked) {
    out.push(`reconnected ${vm.name} (socket or shared memory changed)`);
  }
  for (const vm of plan.permissions) out.push(`${vm.name}: permissions`);
  for (const vm of plan.shmAccess) out.push(`${vm.name}: shared-memory file access`);
  if (plan.hostPermissions) out.push("host: permissions");
  if (plan.limits.length) out.push(`limits: ${plan.limits.join(", ")}`);
  if (plan.listenAccess) out.push("host socket: mode or group");
  for (const s of plan.settings) out.push(s);
  return out;
}

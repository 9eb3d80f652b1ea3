/**
 * Broker configuration: which VMs exist, where their ports and shared-memory files are, what
 * each may do. JSON with comments (JSONC). Every error names the file, the key and the problem.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * const config = await loadConfig("/etc/vbus/broker.jsonc");
 * console.log(config.vms.map((vm) => vm.name));
 * ```
 * @module
 */
import { readFile } from "node:fs/promises";
import { isAbsolute, resolve } from "node:path";
import { parse as parseJsonc, type ParseError, printParseErrorCode } from "jsonc-parser";
import { validatePattern } from "../subject/subject.ts";
import { DEFAULT_LIMITS, type Limits } from "../protocol/limits.ts";
import { type FileAccess, parseListenAccess, parseShmAccess } from "./file_access.ts";
import { type BridgeConfig, parseBridgeConfig } from "../bridge/bridge_config.ts";
import { type HttpAddress, parseHttpAddress } from "../monitor/http_address.ts";

import { DEFAULT_PORT_NAME } from "../port/device_port.ts";
export { DEFAULT_PORT_NAME };
/** Default size of a VM's shared-memory region (ivshmem wants a power of two). */
export const DEFAULT_SHM_SIZE = 16 * 1024 * 1024;

/**
 * Subject patterns a session may publish to and subscribe to. Absent means "anything".
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig(`{ "vms": [{
 *   "name": "vm1", "socket": "/run/vbus/vm1.sock",
 *   "permissions": { "publish": ["sensors.vm1.>"], "subscribe": ["cmd.vm1.>", "_INBOX.>"] }
 * }] }`);
 * console.log(config.vms[0].permissions?.publish); // ["sensors.vm1.>"]
 * ```
 */
export interface Permissions {
  /** Patterns the session may publish to (wildcards allowed). */
  publish?: string[];
  /** Patterns the session may subscribe to (a subscription must lie inside one of them). */
  subscribe?: string[];
  /**
   * May subscribe with `slow: "block"` (hold publishers instead of dropping). Key
   * `permissions.block`; absent means false for a VM and true for host clients.
   */
  block?: boolean;
}

/** The name no VM may have (any case): host-local clients appear under it. */
export const RESERVED_VM_NAME = "host";

/**
 * One VM as the broker knows it. Its identity is the port it arrives on.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const [vm] = parseConfig(`{ "vms": [
 *   { "name": "vm1", "socket": "/run/vbus/vm1.sock", "shm": "/dev/shm/vbus-vm1" }
 * ] }`).vms;
 * console.log(vm.port, vm.shmSize); // "org.vbus.0" 16777216 (the defaults)
 * ```
 */
export interface VmConfig {
  /** Unique name; also the identity of every session arriving on this VM's port. */
  name: string;
  /** Path of the QEMU chardev unix socket (`server=on`) behind the VM's virtserialport. */
  socket: string;
  /** virtio-serial port name the guest sees under `/dev/virtio-ports/`. */
  port: string;
  /** Optional `/dev/shm` file backing the VM's ivshmem device (the fast path). */
  shm?: string;
  /** Size of the shared-memory file in bytes (power of two). */
  shmSize: number;
  /** Optional restrictions; absent means the VM may publish and subscribe to anything. */
  permissions?: Permissions;
  /**
   * Mode, owner and group of the shared-memory file (keys `shmMode`, `shmOwner`, `shmGroup`,
   * in the VM's entry or at the top level for every VM); empty: 0600, the broker's user.
   * {@link validateConfig} always fills it in.
   */
  shmAccess?: FileAccess;
  /**
   * Slots (local processes on the fast path) a `vbus agent` in this VM may use; 0 refuses an
   * agent. Default 8 (`DEFAULT_AGENT_SLOTS`), at most `MAX_SLOTS` (256).
   */
  agentSlots?: number;
}

/**
 * The whole broker configuration after validation, with defaults filled in.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig(`{
 *   "listen": "/run/vbus/broker.sock",
 *   "limits": { "maxFrameBytes": 1048576 },
 *   "vms": [{ "name": "vm1", "socket": "/run/vbus/vm1.sock" }]
 * }`);
 * console.log(config.limits.maxFrameBytes, config.drainTimeoutMs); // 1048576 5000
 * ```
 */
export interface BrokerConfig {
  /** File the configuration came from (for messages), or `"<inline>"`. */
  source: string;
  /** Unix socket path host-local clients connect to; absent means no host socket. */
  listen?: string;
  /** Mode and group of the host socket (keys `listenMode`, `listenGroup`); absent: umask's. */
  listenAccess?: FileAccess;
  /**
   * Permissions of host-local clients; absent means unrestricted (and `block` allowed).
   * {@link validateConfig} always fills it in, with `block` defaulting to true.
   */
  hostPermissions?: Permissions;
  /** Protocol limits every session gets. */
  limits: Limits;
  /** The VMs, each with a unique name. */
  vms: VmConfig[];
  /** How long SIGTERM waits for queued messages to reach their sessions (ms). Default 5000. */
  drainTimeoutMs: number;
  /** Bridges to other systems (`bridge.nats`: see src/bridge/bridge_config.ts); absent: none. */
  bridge?: BridgeConfig;
  /** The monitoring endpoint (`"http": "127.0.0.1:8222"`, see src/monitor/); absent: off. */
  http?: HttpAddress;
}

/**
 * A configuration problem: names the file, the key path and what is wrong.
 *
 * @example
 * ```ts
 * import { ConfigError, parseConfig } from "./config.ts";
 * try {
 *   parseConfig('{ "vms": [{ "name": "vm1" }] }', "broker.jsonc");
 * } catch (err) {
 *   if (err instanceof ConfigError) console.log(err.key); // "vms[0].socket"
 * }
 * ```
 */
export class ConfigError extends Error {
  /** The message is `<file>: <key>: <problem>`. */
  constructor(
    /** The config file (or `"<inline>"`). */
    readonly file: string,
    /** Path of the offending key, e.g. `vms[0].shmSize`. */
    readonly key: string,
    /** What is wrong with it. */
    readonly problem: string,
  ) {
    super(`${file}: ${key}: ${problem}`);
    this.name = "ConfigError";
  }
}

/**
 * The `source` of a configuration given as text or an object (`parseConfig`, `validateConfig`
 * without a file name): there is no file to read it again from, so it cannot be reloaded.
 */
export const INLINE_SOURCE = "<inline>";

/**
 * Read and validate a broker configuration file.
 *
 * @example
 * ```ts
 * const config = await loadConfig("broker.jsonc");
 * ```
 */
export async function loadConfig(path: string): Promise<BrokerConfig> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new ConfigError(path, "(file)", `cannot read: ${(err as Error).message}`);
  }
  return parseConfig(text, path);
}

/**
 * Parse and validate configuration text (JSON with comments and trailing commas).
 *
 * @example
 * ```ts
 * const config = parseConfig('{ "vms": [{ "name": "vm1", "socket": "/run/vm1.sock" }] }');
 * ```
 */
export function parseConfig(text: string, source = INLINE_SOURCE): BrokerConfig {
  const errors: ParseError[] = [];
  const raw = parseJsonc(text, errors, { allowTrailingComma: true, disallowComments: false });
  if (errors.length > 0) {
    const e = errors[0];
    const { line, column } = lineColumn(text, e.offset);
    throw new ConfigError(
      source,
      `(syntax, line ${line} column ${column})`,
      `invalid JSON: ${printParseErrorCode(e.error)}`,
    );
  }
  return validateConfig(raw, source);
}

/** Validate an already-parsed configuration object. */
export function validateConfig(raw: unknown, source = INLINE_SOURCE): BrokerConfig {
  const fail = (key: string, problem: string): never => {
    throw new ConfigError(source, key, problem);
  };
  const root = expectObject(raw, "(root)", fail);
  checkKeys(
    root,
    [...SERVICE_KEYS, "listen", "host", "limits", "vms", "bridge", "http"],
    "(root)",
    fail,
  );
  // Every path the broker opens, normalised, with the key that named it first: one file must
  // never play two roles (the broker's own socket as a VM's, one VM's memory as another's).
  const paths = new Map<string, string>();
  const listen = optionalPath(root.listen, "listen", fail);
  if (listen !== undefined) paths.set(listen, "listen");
  let hostPermissions: Permissions = { block: true };
  if (root.host !== undefined) {
    const host = expectObject(root.host, "host", fail);
    checkKeys(host, ["permissions"], "host", fail);
    hostPermissions = parsePermissions(host.permissions, "host.permissions", true, fail) ??
      hostPermissions;
  }
  const limits = parseLimits(root.limits, fail);
  const listenAccess = parseListenAccess(root, listen, fail);
  const drainTimeoutMs = parseDrainTimeout(root.drainTimeoutMs, fail);
  const shmDefaults = parseShmAccess(root, "", fail);
  if (!Array.isArray(root.vms)) fail("vms", "must be an array of VMs (it may be empty)");
  const vmsRaw = root.vms as unknown[];
  const names = new Set<string>();
  const vms = vmsRaw.map((v, i): VmConfig => {
    const at = `vms[${i}]`;
    const vm = expectObject(v, at, fail);
    checkKeys(
      vm,
      ["name", "socket", "port", "shm", "shmSize", "permissions", "agentSlots", ...SHM_KEYS],
      at,
      fail,
    );
    const name = optionalString(vm.name, `${at}.name`, fail) ??
      fail(`${at}.name`, "is required");
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
      fail(`${at}.name`, `"${name}" must be 1-64 letters, digits, '_' or '-'`);
    }
    if (name.toLowerCase() === RESERVED_VM_NAME) {
      fail(
        `${at}.name`,
        `"${name}" is reserved: host-local clients appear as "${RESERVED_VM_NAME}" in WELCOME, inboxes and stats`,
      );
    }
    if (names.has(name)) fail(`${at}.name`, `duplicate VM name "${name}"`);
    names.add(name);
    const socket = optionalPath(vm.socket, `${at}.socket`, fail) ??
      fail(`${at}.socket`, "is required (path of the VM's QEMU chardev socket)");
    claimPath(paths, socket, `${at}.socket`, fail);
    const port = optionalString(vm.port, `${at}.port`, fail) ?? DEFAULT_PORT_NAME;
    if (!/^[A-Za-z0-9_.-]{1,127}$/.test(port)) {
      fail(`${at}.port`, `"${port}" is not a valid virtio-serial port name`);
    }
    const shm = optionalPath(vm.shm, `${at}.shm`, fail);
    if (shm !== undefined) claimPath(paths, shm, `${at}.shm`, fail);
    let shmSize = DEFAULT_SHM_SIZE;
    if (vm.shmSize !== undefined) {
      const size = vm.shmSize;
      if (
        typeof size !== "number" || !Number.isInteger(size) || size < 65536 ||
        (size & (size - 1)) !== 0 || size > 2 ** 30
      ) {
        fail(`${at}.shmSize`, "must be a power of two between 65536 and 1073741824 bytes");
      }
      shmSize = size as number;
    }
    const permissions = parsePermissions(vm.permissions, `${at}.permissions`, false, fail);
    const shmAccess = parseShmAccess(vm, at, fail, shmDefaults);
    const agentSlots = vm.agentSlots;
    if (
      agentSlots !== undefined &&
      (typeof agentSlots !== "number" || !Number.isInteger(agentSlots) || agentSlots < 0 ||
        agentSlots > 256)
    ) {
      fail(`${at}.agentSlots`, "must be an integer from 0 (no agent) to 256");
    }
    return {
      name,
      socket,
      port,
      shm,
      shmSize,
      permissions,
      shmAccess,
      ...(agentSlots !== undefined ? { agentSlots: agentSlots as number } : {}),
    };
  });
  const bridge = parseBridgeConfig(root.bridge, fail);
  const http = parseHttpAddress(root.http, fail);
  return {
    source,
    listen,
    ...(listenAccess ? { listenAccess } : {}),
    hostPermissions,
    limits,
    vms,
    drainTimeoutMs,
    ...(bridge ? { bridge } : {}),
    ...(http ? { http } : {}),
  };
}

type Fail = (key: string, problem: string) => never;

/** A VM's keys of its shared-memory file's mode, owner and group (top level: defaults). */
const SHM_KEYS = ["shmMode", "shmOwner", "shmGroup"];
/** Top-level keys of who may use the broker's files and of its shutdown. */
const SERVICE_KEYS = [
  "listenMode",
  "listenGroup",
  "shmMode",
  "shmOwner",
  "shmGroup",
  "drainTimeoutMs",
];
/** Default of `drainTimeoutMs`. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 5000;

function parseDrainTimeout(v: unknown, fail: Fail): number {
  if (v === undefined) return DEFAULT_DRAIN_TIMEOUT_MS;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 3_600_000) {
    fail("drainTimeoutMs", "must be a whole number of milliseconds between 0 and 3600000");
  }
  return v as number;
}

function expectObject(v: unknown, key: string, fail: Fail): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(key, "must be an object");
  return v as Record<string, unknown>;
}

function checkKeys(obj: Record<string, unknown>, allowed: string[], at: string, fail: Fail) {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      fail(
        at === "(root)" ? key : `${at}.${key}`,
        `unknown key (expected one of: ${allowed.join(", ")})`,
      );
    }
  }
}

function optionalString(v: unknown, key: string, fail: Fail): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || v.length === 0) fail(key, "must be a non-empty string");
  return v as string;
}

/** An absolute path, normalised (`/run//vbus/./x/` becomes `/run/vbus/x`). */
function optionalPath(v: unknown, key: string, fail: Fail): string | undefined {
  const path = optionalString(v, key, fail);
  if (path === undefined) return undefined;
  if (!isAbsolute(path)) {
    fail(
      key,
      `"${path}" must be an absolute path (a relative one depends on the directory the broker starts in)`,
    );
  }
  return resolve(path);
}

/** Record that `key` uses `path`; fail if another key already does. */
function claimPath(paths: Map<string, string>, path: string, key: string, fail: Fail) {
  const other = paths.get(path);
  if (other === undefined) {
    paths.set(path, key);
    return;
  }
  const role = (k: string) => k.slice(k.lastIndexOf(".") + 1);
  let why: string;
  if (other === "listen" && role(key) === "socket") {
    why = `is the broker's own listen socket (the broker would connect to itself as this VM)`;
  } else if (role(key) === "socket" && role(other) === "socket") {
    why = `is used by two VMs (${other} too)`;
  } else if (role(key) === "shm" && role(other) === "shm") {
    why =
      `is used by two VMs (${other} too): one shared-memory file mapped into two VMs is a channel between them`;
  } else {
    why = `is already used as ${other}: one file cannot be both a socket and a shared-memory file`;
  }
  fail(key, `${role(key)} "${path}" ${why}`);
}

function parsePermissions(
  v: unknown,
  key: string,
  blockByDefault: boolean,
  fail: Fail,
): Permissions | undefined {
  if (v === undefined) return undefined;
  const obj = expectObject(v, key, fail);
  checkKeys(obj, ["publish", "subscribe", "block"], key, fail);
  const out: Permissions = {};
  if (obj.block !== undefined && typeof obj.block !== "boolean") {
    fail(`${key}.block`, 'must be true or false (may subscribe with slow: "block")');
  }
  out.block = (obj.block as boolean | undefined) ?? blockByDefault;
  for (const kind of ["publish", "subscribe"] as const) {
    const list = obj[kind];
    if (list === undefined) continue;
    if (!Array.isArray(list)) fail(`${key}.${kind}`, "must be an array of subject patterns");
    out[kind] = (list as unknown[]).map((p, i) => {
      if (typeof p !== "string") fail(`${key}.${kind}[${i}]`, "must be a string");
      const problem = validatePattern(p as string, 4096);
      if (problem) fail(`${key}.${kind}[${i}]`, `invalid pattern "${p}": ${problem}`);
      return p as string;
    });
  }
  return out;
}

function parseLimits(v: unknown, fail: Fail): Limits {
  if (v === undefined) return { ...DEFAULT_LIMITS };
  const obj = expectObject(v, "limits", fail);
  const keys = Object.keys(DEFAULT_LIMITS) as (keyof Limits)[];
  checkKeys(obj, keys, "limits", fail);
  const out: Limits = { ...DEFAULT_LIMITS };
  for (const k of keys) {
    const value = obj[k];
    if (value === undefined) continue;
    if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
      fail(`limits.${k}`, "must be a positive integer");
    }
    out[k] = value as number;
  }
  return out;
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset).split("\n");
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

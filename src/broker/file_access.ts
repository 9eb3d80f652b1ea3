/**
 * Who may use the files the broker makes: the host socket (`listenMode`, `listenGroup`) and
 * the VMs' shared-memory files (`shmMode`, `shmOwner`, `shmGroup`, at the top level for every
 * VM or in one VM's entry). Modes are octal strings (`"0660"`); users and groups are names
 * (looked up in /etc/passwd and /etc/group when the config is read, so a typo is a config
 * error) or numeric ids.
 *
 * A file gets its owner and group first and its mode last, so it is never open to a group it
 * was not meant for, even for a moment; the host socket is created under a umask that leaves it
 * to the broker's user alone until then.
 *
 * @example
 * ```ts
 * import { applyFileAccess, parseMode } from "./file_access.ts";
 * const fail = (key: string, problem: string): never => { throw new Error(`${key}: ${problem}`); };
 * const mode = parseMode("0660", "listenMode", fail); // 0o660
 * applyFileAccess("/run/vbus/broker.sock", { mode, group: { name: "vbus", id: 990 } }, "listen");
 * ```
 * @module
 */
import { chmodSync, chownSync, readFileSync } from "node:fs";
import process from "node:process";

/**
 * A user or group: the name it was given by (for messages) and its numeric id.
 *
 * @example
 * ```ts
 * import { resolveUser } from "./file_access.ts";
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * const root = resolveUser(0, "shmOwner", fail); // { name: "root", id: 0 }
 * ```
 */
export interface NamedId {
  /** The name as the config gave it (the id as a string when given as a number). */
  name: string;
  /** The numeric uid or gid. */
  id: number;
}

/**
 * Mode, owner and group a file should have; what is absent is left as created.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig(`{ "shmMode": "0660", "vms": [
 *   { "name": "vm1", "socket": "/run/vbus/vm1.sock", "shm": "/dev/shm/vbus-vm1" }
 * ] }`);
 * console.log(config.vms[0].shmAccess?.mode?.toString(8)); // "660"
 * ```
 */
export interface FileAccess {
  /** Permission bits (e.g. `0o660`). */
  mode?: number;
  /** Owning user. */
  owner?: NamedId;
  /** Owning group. */
  group?: NamedId;
}

type Fail = (key: string, problem: string) => never;

/**
 * An octal mode string (`"0660"`, `"660"`) as a number; permission bits only (no setuid,
 * setgid or sticky bit).
 *
 * @example
 * ```ts
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * parseMode("0640", "shmMode", fail); // 0o640
 * ```
 */
export function parseMode(v: unknown, key: string, fail: Fail): number {
  if (typeof v !== "string" || !/^0?[0-7]{3}$/.test(v)) {
    fail(key, `must be an octal mode in quotes, like "0660" (got ${JSON.stringify(v)})`);
  }
  return parseInt(v as string, 8);
}

/** Lines of /etc/passwd or /etc/group as [name, id] pairs (empty when unreadable). */
function database(file: string): [string, number][] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return [];
  }
  const out: [string, number][] = [];
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length >= 3 && f[0] && /^\d+$/.test(f[2])) out.push([f[0], Number(f[2])]);
  }
  return out;
}

function resolve(v: unknown, key: string, kind: "user" | "group", fail: Fail): NamedId {
  const file = kind === "user" ? "/etc/passwd" : "/etc/group";
  if (typeof v === "number") {
    if (!Number.isInteger(v) || v < 0 || v > 0xfffffffe) {
      fail(key, `must be a ${kind} name or a numeric id`);
    }
    const named = database(file).find(([, id]) => id === v);
    return { name: named ? named[0] : String(v), id: v };
  }
  if (typeof v !== "string" || v.length === 0) {
    fail(key, `must be a ${kind} name or a numeric id`);
  }
  const name = v as string;
  if (/^\d+$/.test(name)) return { name, id: Number(name) };
  const found = database(file).find(([n]) => n === name);
  if (!found) {
    const create = kind === "user"
      ? `useradd --system --no-create-home ${name}`
      : `groupadd --system ${name}`;
    fail(key, `no ${kind} "${name}" in ${file}: create it (${create}) or give the numeric id`);
  }
  return { name, id: found![1] };
}

/**
 * A user name or uid, looked up now.
 *
 * @example
 * ```ts
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * resolveUser("root", "shmOwner", fail); // { name: "root", id: 0 }
 * ```
 */
export function resolveUser(v: unknown, key: string, fail: Fail): NamedId {
  return resolve(v, key, "user", fail);
}

/**
 * A group name or gid, looked up now.
 *
 * @example
 * ```ts
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * resolveGroup("kvm", "shmGroup", fail); // { name: "kvm", id: 993 } on a typical Debian host
 * ```
 */
export function resolveGroup(v: unknown, key: string, fail: Fail): NamedId {
  return resolve(v, key, "group", fail);
}

/**
 * The `shmMode`/`shmOwner`/`shmGroup` keys of `obj` (`at` is the key path for messages),
 * each falling back to `defaults`. A mode every user could write is refused: whoever can write
 * the file can shrink it and crash the broker (SIGBUS), and the broker refuses to map such a
 * file anyway. The broker must keep read and write access as the file's owner.
 *
 * @example
 * ```ts
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * parseShmAccess({ shmMode: "0660", shmGroup: "kvm" }, "", fail); // { mode: 0o660, group: {...} }
 * ```
 */
export function parseShmAccess(
  obj: Record<string, unknown>,
  at: string,
  fail: Fail,
  defaults: FileAccess = {},
): FileAccess {
  const key = (k: string) => at ? `${at}.${k}` : k;
  const out: FileAccess = { ...defaults };
  if (obj.shmMode !== undefined) {
    const mode = parseMode(obj.shmMode, key("shmMode"), fail);
    if ((mode & 0o002) !== 0) {
      fail(
        key("shmMode"),
        `"${obj.shmMode}" lets every user write the file: anyone could shrink it and crash the ` +
          `broker (SIGBUS); use "0660" with QEMU's group (shmGroup)`,
      );
    }
    if ((mode & 0o600) !== 0o600) {
      fail(key("shmMode"), `"${obj.shmMode}" must keep read and write for the owner (0600)`);
    }
    out.mode = mode;
  }
  if (obj.shmOwner !== undefined) out.owner = resolveUser(obj.shmOwner, key("shmOwner"), fail);
  if (obj.shmGroup !== undefined) out.group = resolveGroup(obj.shmGroup, key("shmGroup"), fail);
  return out;
}

/**
 * Give `path` the owner and group of `access`, then its mode. `what` names the file's role in
 * errors, which say what to do (changing the owner needs root; a group, membership of it).
 *
 * @throws {Error} when the kernel refuses.
 * @example
 * ```ts
 * applyFileAccess("/dev/shm/vbus-vm1", { mode: 0o660, group: { name: "kvm", id: 993 } }, "vms[0].shm");
 * ```
 */
export function applyFileAccess(path: string, access: FileAccess, what: string): void {
  const { owner, group, mode } = access;
  if (owner !== undefined || group !== undefined) {
    try {
      chownSync(path, owner?.id ?? -1, group?.id ?? -1);
    } catch (err) {
      const uid = process.getuid?.() ?? -1;
      const why = owner !== undefined && uid !== 0
        ? `only root may give a file to another user (the broker runs as uid ${uid})`
        : `the broker's user must be a member of group "${group?.name}" ` +
          `(usermod -aG ${group?.name} <broker user>, then restart the broker) or run as root`;
      throw new Error(
        `cannot give ${path} (${what}) to ${owner ? `user ${owner.name} ` : ""}` +
          `${group ? `group ${group.name}` : ""}: ${(err as Error).message}; ${why}`,
      );
    }
  }
  if (mode !== undefined) {
    try {
      chmodSync(path, mode);
    } catch (err) {
      throw new Error(
        `cannot set mode ${mode.toString(8).padStart(4, "0")} on ${path} (${what}): ` +
          `${(err as Error).message}`,
      );
    }
  }
}

/** An octal mode as configs write it: 0o660 -> "0660". */
export function modeString(mode: number): string {
  return mode.toString(8).padStart(4, "0");
}

/**
 * The `listenMode` / `listenGroup` keys (they need `listen`: the socket they apply to). A mode
 * may open the socket to every local user ("0666"): then every local user is a host client,
 * which `host.permissions` should restrict.
 *
 * @example
 * ```ts
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * parseListenAccess({ listenMode: "0660", listenGroup: "vbus" }, "/run/vbus/broker.sock", fail);
 * ```
 */
export function parseListenAccess(
  root: Record<string, unknown>,
  listen: string | undefined,
  fail: Fail,
): FileAccess | undefined {
  if (root.listenMode === undefined && root.listenGroup === undefined) return undefined;
  const key = root.listenMode !== undefined ? "listenMode" : "listenGroup";
  if (listen === undefined) fail(key, `needs "listen" (the host socket it applies to)`);
  const out: FileAccess = {};
  if (root.listenMode !== undefined) out.mode = parseMode(root.listenMode, "listenMode", fail);
  if (root.listenGroup !== undefined) {
    out.group = resolveGroup(root.listenGroup, "listenGroup", fail);
  }
  return out;
}

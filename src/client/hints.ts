/**
 * What to do about a failed connection to the broker's host socket, appended to the error
 * `connect()` gives up with. The socket errors themselves only say what the kernel said
 * (ENOENT, EACCES, ECONNREFUSED); an operator needs the next step. Device-port errors carry
 * their own hints (see `device_port.ts`).
 *
 * @example
 * ```ts
 * import { connectHint } from "./hints.ts";
 * connectHint(new Error("cannot connect to /run/vbus/broker.sock: connect EACCES /run/vbus/broker.sock"));
 * // " (this user may not connect to the broker's socket: ... listenMode / listenGroup ...)"
 * ```
 * @module
 */

/**
 * Is `err` the kernel refusing this user the broker's socket? Retrying cannot help (group
 * membership changes at the next login), so a first connect gives up at once.
 */
export function isPermissionDenied(err: Error): boolean {
  const m = /^cannot connect to \S+:(.*)$/s.exec(err.message);
  return m !== null && /EACCES|EPERM|permission denied/i.test(m[1]);
}

/** A hint (starting with a space, in parentheses) for `err`, or "" when there is none. */
export function connectHint(err: Error): string {
  const m = /^cannot connect to (\S+):(.*)$/s.exec(err.message);
  if (!m) return "";
  const [, path, why] = m;
  if (/EACCES|EPERM|permission denied/i.test(why)) {
    return ` (this user may not connect to the broker's socket: the broker config's listenMode ` +
      `and listenGroup say who may, e.g. "listenMode": "0660", "listenGroup": "vbus"; add ` +
      `this user to that group: usermod -aG vbus $USER, then log in again)`;
  }
  if (/ENOENT|no such file/i.test(why)) {
    return ` (no broker listens on ${path}: start one with \`vbus broker --config FILE\` whose ` +
      `"listen" is this path, or point VBUS_SERVER / --server at the broker's socket)`;
  }
  if (/ECONNREFUSED|connection refused/i.test(why)) {
    return ` (${path} is left over from a broker that is not running: start the broker, ` +
      `it replaces the stale socket)`;
  }
  return "";
}

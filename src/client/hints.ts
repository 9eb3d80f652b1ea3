/**
 * What a failed connection attempt means: whether retrying can help, and what to do about it,
 * appended to the error `connect()` gives up with. The errors themselves only say what the
 * kernel or the runtime said (ENOENT, EACCES, ECONNREFUSED, Deno's "Requires net access");
 * an operator needs the next step.
 *
 * Permanent errors fail `connect()` at once instead of being retried until its `timeout`:
 * - the runtime refusing a permission the process was not given (Deno's `NotCapable` /
 *   `PermissionDenied`): it cannot be granted later, so this holds for reconnects too;
 * - the kernel refusing this user the broker's socket (EACCES, EPERM): group membership
 *   changes at the next login;
 * - a guest's port device that does not exist: the VM has no vbus port.
 * The last two only before the first session: once connected, a broker being restarted with
 * other settings, or a port being re-plugged, may pass, so reconnects keep trying.
 * A broker socket that is missing or stale ({@link isNoBroker}) also fails a first connect at
 * once, as the nats CLI and nats.js do, unless the caller asked to wait (`waitOnFirstConnect`);
 * the connect loop decides that, since it is the caller's choice, not the error's.
 *
 * @example
 * ```ts
 * import { connectHint, isPermanentConnectError } from "./hints.ts";
 * const err = new Error("cannot connect to /run/vbus/broker.sock: connect EACCES /run/vbus/broker.sock");
 * isPermanentConnectError(err, false); // true: give up now
 * connectHint(err); // " (this user may not connect to the broker's socket: ... listenMode / listenGroup ...)"
 * ```
 * @module
 */

const DENIED = /EACCES|EPERM|permission denied/i;

/**
 * Is `err` the runtime refusing a permission this process was not given (Deno without
 * `--allow-net`, `--allow-read`, ...)? Ports wrap the error's message, so both are looked at.
 *
 * @example
 * ```ts
 * isRuntimePermissionError(new Error('Requires net access to "unix:/run/vbus/broker.sock"')); // true
 * ```
 */
export function isRuntimePermissionError(err: Error): boolean {
  return err.name === "NotCapable" || err.name === "PermissionDenied" ||
    /\bRequires \w+ access to\b/.test(err.message);
}

/**
 * Is `err` the kernel refusing this user the broker's socket? Retrying cannot help (group
 * membership changes at the next login), so a first connect gives up at once.
 *
 * @example
 * ```ts
 * isPermissionDenied(new Error("cannot connect to /s.sock: connect EACCES /s.sock")); // true
 * ```
 */
export function isPermissionDenied(err: Error): boolean {
  const m = /^cannot connect to \S+:(.*)$/s.exec(err.message);
  return m !== null && DENIED.test(m[1]);
}

/**
 * Is `err` a guest's port device that does not exist (see `device_port.ts`)?
 *
 * @example
 * ```ts
 * isMissingDevice(new Error("cannot open /dev/virtio-ports/org.vbus.0: ENOENT: no such file")); // true
 * ```
 */
export function isMissingDevice(err: Error): boolean {
  return /^cannot open \S+: ENOENT\b/.test(err.message);
}

/**
 * Is `err` a host client finding no broker behind its socket path: no such file (ENOENT), or a
 * file no process listens on (ECONNREFUSED, left over from a broker that is not running)? The
 * first connect gives up on it at once unless asked to wait (`waitOnFirstConnect`).
 *
 * @example
 * ```ts
 * isNoBroker(new Error("cannot connect to /s.sock: connect ENOENT /s.sock")); // true
 * ```
 */
export function isNoBroker(err: Error): boolean {
  const m = /^cannot connect to \S+:(.*)$/s.exec(err.message);
  return m !== null && /ENOENT|ECONNREFUSED|no such file|connection refused/i.test(m[1]);
}

/**
 * Should the connect loop give up on `err` instead of retrying? See the module doc;
 * `everConnected`: a session was established before (this is a reconnect).
 *
 * @example
 * ```ts
 * import { isPermanentConnectError } from "./hints.ts";
 * const err = new Error("cannot open /dev/virtio-ports/org.vbus.0: ENOENT: no such file");
 * isPermanentConnectError(err, false); // true: a first connect gives up at once
 * isPermanentConnectError(err, true); // false: a reconnect keeps trying (the port may come back)
 * ```
 */
export function isPermanentConnectError(err: Error, everConnected: boolean): boolean {
  if (isRuntimePermissionError(err)) return true;
  if (everConnected) return false;
  return isPermissionDenied(err) || isMissingDevice(err);
}

/**
 * A hint (starting with a space, in parentheses) for `err`, or "" when there is none.
 *
 * @example
 * ```ts
 * connectHint(new Error("cannot connect to /s.sock: connect ENOENT /s.sock")); // " (no broker listens on /s.sock: ...)"
 * ```
 */
export function connectHint(err: Error): string {
  if (isRuntimePermissionError(err)) {
    return ` (Deno: a host client needs --allow-net --allow-read --allow-write --allow-env, ` +
      `and --allow-ffi for shared memory; a guest client needs -A, since Deno opens a ` +
      `character device such as a virtio port only with --allow-all)`;
  }
  const m = /^cannot connect to (\S+):(.*)$/s.exec(err.message);
  if (!m) return "";
  const [, path, why] = m;
  if (DENIED.test(why)) {
    return ` (this user may not connect to the broker's socket: the broker config's listenMode ` +
      `and listenGroup say who may, e.g. "listenMode": "0660", "listenGroup": "vbus"; add ` +
      `this user to that group: usermod -aG vbus $USER, then log in again)`;
  }
  if (/ENOENT|no such file/i.test(why)) {
    return ` (no broker listens on ${path}, there is no socket file: is \`vbus broker\` ` +
      `(in a guest: \`vbus agent\`) running? Start one with \`vbus broker --config FILE\` ` +
      `whose "listen" is this path, or point VBUS_SERVER / --server at the broker's socket; ` +
      `to wait for a broker that is starting, connect with waitOnFirstConnect: true ` +
      `(the CLI: --connect-timeout))`;
  }
  if (/ECONNREFUSED|connection refused/i.test(why)) {
    return ` (${path} is left over from a broker that is not running: start the broker, ` +
      `it replaces the stale socket; to wait for it, connect with waitOnFirstConnect: true ` +
      `(the CLI: --connect-timeout))`;
  }
  return "";
}

/**
 * Unix datagram sockets through libc, for systemd's notification socket (`sd_notify`): neither
 * runtime can send one otherwise (node:dgram has no unix sockets, Bun's UDP sockets neither,
 * Deno's `unixpacket` listener is unstable and cannot send to a path). Spawning
 * `systemd-notify` is no substitute: with `NotifyAccess=main` systemd drops messages from
 * any process but the service's main one. Loads `./unix_datagram_deno.ts` or
 * `./unix_datagram_bun.ts` on first use; Deno needs `--allow-ffi`.
 *
 * Paths starting with `@` are in the abstract namespace (as `NOTIFY_SOCKET` may be).
 *
 * @example
 * ```ts
 * import { listenDatagram, sendDatagram } from "./unix_datagram.ts";
 * const listener = await listenDatagram("/tmp/notify.sock");
 * await sendDatagram("/tmp/notify.sock", "READY=1");
 * console.log(listener.receive()); // "READY=1"
 * listener.close();
 * ```
 * @module
 */
import { FfiError } from "./common.ts";

/** The libc calls each runtime binds (libc's conventions: -1 and errno on failure). */
export interface DatagramLibc {
  socket(domain: number, type: number, protocol: number): number;
  /** sendto(fd, buf, buf.length, flags, addr, addr.length). */
  sendto(fd: number, buf: Uint8Array, flags: number, addr: Uint8Array): number;
  /** bind(fd, addr, addr.length). */
  bind(fd: number, addr: Uint8Array): number;
  /** recv(fd, buf, buf.length, flags). */
  recv(fd: number, buf: Uint8Array, flags: number): number;
  close(fd: number): number;
  /** clock_gettime(clock, ts) with ts = [tv_sec, tv_nsec]. */
  clockGettime(clock: number, ts: BigInt64Array): number;
  errno(): number;
}

// Linux x86_64 (sys/socket.h, time.h, errno.h).
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const CLOCK_MONOTONIC = 1;
const EAGAIN = 11;
/** sizeof(sockaddr_un.sun_path). */
const SUN_PATH_MAX = 108;

let loaded: Promise<DatagramLibc> | undefined;

function libc(): Promise<DatagramLibc> {
  const g = globalThis as Record<string, unknown>;
  // Literal specifiers, so that bundlers (`bun build --compile`) embed both adapters.
  const adapter = g.Bun !== undefined
    ? import("./unix_datagram_bun.ts")
    : import("./unix_datagram_deno.ts");
  return loaded ??= adapter.then((m) =>
    wrapSymbols(m.datagramSymbols as DatagramSymbols, m.readErrno as () => number)
  );
}

/** The libc symbols as each runtime's FFI returns them (sizes as bigints, lengths as numbers). */
export interface DatagramSymbols {
  socket(domain: number, type: number, protocol: number): number;
  sendto(
    fd: number,
    buf: Uint8Array,
    n: bigint,
    flags: number,
    addr: Uint8Array,
    len: number,
  ): number | bigint;
  bind(fd: number, addr: Uint8Array, len: number): number;
  recv(fd: number, buf: Uint8Array, n: bigint, flags: number): number | bigint;
  close(fd: number): number;
  clock_gettime(clock: number, ts: BigInt64Array): number;
  // deno-lint-ignore no-explicit-any
  __errno_location(): any;
}

/** The calls, with libc's conventions (-1 and errno on failure), the same for both runtimes. */
function wrapSymbols(s: DatagramSymbols, errno: () => number): DatagramLibc {
  return {
    socket: (domain, type, protocol) => s.socket(domain, type, protocol),
    sendto: (fd, buf, flags, addr) =>
      Number(s.sendto(fd, buf, BigInt(buf.length), flags, addr, addr.length)),
    bind: (fd, addr) => s.bind(fd, addr, addr.length),
    recv: (fd, buf, flags) => Number(s.recv(fd, buf, BigInt(buf.length), flags)),
    close: (fd) => s.close(fd),
    clockGettime: (clock, ts) => s.clock_gettime(clock, ts),
    errno,
  };
}

/** A `struct sockaddr_un` for `path` (`@name`: abstract namespace), exactly as long as needed. */
function sockaddr(path: string): Uint8Array {
  const abstract = path.startsWith("@");
  const name = new TextEncoder().encode(abstract ? path.slice(1) : path);
  // A filesystem path is NUL-terminated; an abstract name starts with NUL and has no end mark.
  const length = name.length + 1;
  if (length > SUN_PATH_MAX) {
    throw new FfiError("sockaddr_un", path, 36, `longer than ${SUN_PATH_MAX - 1} bytes`);
  }
  const addr = new Uint8Array(2 + length);
  addr[0] = AF_UNIX & 0xff; // sa_family_t, little-endian
  addr[1] = AF_UNIX >> 8;
  addr.set(name, abstract ? 3 : 2);
  return addr;
}

function openSocket(c: DatagramLibc, path: string): number {
  const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw new FfiError("socket", path, c.errno(), "AF_UNIX, SOCK_DGRAM");
  return fd;
}

/**
 * Send one datagram to the unix socket at `path`.
 *
 * @throws {FfiError} when there is no such socket, it refuses, or libc fails.
 * @example
 * ```ts
 * await sendDatagram(process.env.NOTIFY_SOCKET!, "READY=1\nSTATUS=serving");
 * ```
 */
export async function sendDatagram(path: string, message: string): Promise<void> {
  const c = await libc();
  const addr = sockaddr(path);
  const fd = openSocket(c, path);
  try {
    const data = new TextEncoder().encode(message);
    const sent = c.sendto(fd, data, MSG_NOSIGNAL, addr);
    if (sent < 0) throw new FfiError("sendto", path, c.errno(), "unix datagram");
    if (sent !== data.length) {
      throw new FfiError("sendto", path, 0, `sent ${sent} of ${data.length} bytes`);
    }
  } finally {
    c.close(fd);
  }
}

/** A bound unix datagram socket that is read by polling (it never blocks). */
export interface DatagramListener {
  readonly path: string;
  /** The next datagram waiting, or undefined when none is. */
  receive(): string | undefined;
  /** Close the socket (the file stays: remove it yourself). Idempotent. */
  close(): void;
}

/**
 * Bind a unix datagram socket at `path` (it must not exist), e.g. to play systemd in a test.
 *
 * @throws {FfiError} when the socket cannot be made or bound.
 * @example
 * ```ts
 * const l = await listenDatagram("/tmp/t/notify.sock");
 * const msg = l.receive();
 * ```
 */
export async function listenDatagram(path: string): Promise<DatagramListener> {
  const c = await libc();
  const addr = sockaddr(path);
  let fd = openSocket(c, path);
  if (c.bind(fd, addr) !== 0) {
    const err = c.errno();
    c.close(fd);
    throw new FfiError("bind", path, err, "unix datagram");
  }
  const buf = new Uint8Array(64 * 1024);
  const decoder = new TextDecoder();
  return {
    path,
    receive() {
      if (fd < 0) return undefined;
      const n = c.recv(fd, buf, MSG_DONTWAIT);
      if (n < 0) {
        const err = c.errno();
        if (err === EAGAIN) return undefined;
        throw new FfiError("recv", path, err, "unix datagram");
      }
      return decoder.decode(buf.subarray(0, n));
    },
    close() {
      if (fd >= 0) c.close(fd);
      fd = -1;
    },
  };
}

/**
 * CLOCK_MONOTONIC in microseconds: what systemd wants in `MONOTONIC_USEC=` (the runtimes'
 * clocks start at process start, not at boot).
 *
 * @example
 * ```ts
 * await sendDatagram(socket, `RELOADING=1\nMONOTONIC_USEC=${await monotonicMicros()}`);
 * ```
 */
export async function monotonicMicros(): Promise<bigint> {
  const c = await libc();
  const ts = new BigInt64Array(2);
  if (c.clockGettime(CLOCK_MONOTONIC, ts) !== 0) {
    throw new FfiError("clock_gettime", "", c.errno(), "CLOCK_MONOTONIC");
  }
  return ts[0] * 1_000_000n + ts[1] / 1000n;
}

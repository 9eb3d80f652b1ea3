/**
 * The monitoring endpoint's address from the config (`"http": "127.0.0.1:8222"`): an IP
 * address and a port. It is loopback unless the config spells out another address: a bare port
 * (`8222` or `"8222"`) means 127.0.0.1, and `":8222"` (which means every interface to Go
 * programs like NATS) is refused, so nobody opens the stats to the network by accident. Host
 * names other than `localhost` are refused too: what the broker binds must not depend on DNS.
 *
 * @example
 * ```ts
 * import { parseHttpAddress } from "./http_address.ts";
 * const fail = (key: string, problem: string): never => { throw new Error(`${key}: ${problem}`); };
 * parseHttpAddress("127.0.0.1:8222", fail); // { host: "127.0.0.1", port: 8222, loopback: true }
 * parseHttpAddress("[::]:8222", fail); // { host: "::", port: 8222, loopback: false }
 * ```
 * @module
 */
import { isIP } from "node:net";

/**
 * Where the monitoring endpoint listens.
 *
 * @example
 * ```ts
 * import { parseConfig } from "../broker/config.ts";
 * const config = parseConfig('{ "http": 8222, "vms": [] }');
 * console.log(config.http); // { host: "127.0.0.1", port: 8222, loopback: true }
 * ```
 */
export interface HttpAddress {
  /** IP address to bind (IPv6 without brackets). */
  host: string;
  /** TCP port; 0 picks a free one (logged at start, and `Broker.monitorAddress`). */
  port: number;
  /** Only this machine can reach it (127.0.0.0/8 or ::1). */
  loopback: boolean;
}

/** The config key of the monitoring endpoint. */
export const HTTP_KEY = "http";
/** Used when the config gives only a port. */
export const DEFAULT_HTTP_HOST = "127.0.0.1";

const EXAMPLES = `e.g. "127.0.0.1:8222" (this machine only), or an address to listen on such as ` +
  `"0.0.0.0:8222" (every interface: whoever reaches it reads VM names and subjects)`;

/**
 * Validate the `http` config value; `fail(key, problem)` reports a problem (it throws).
 * Undefined stays undefined (no endpoint).
 */
export function parseHttpAddress(
  v: unknown,
  fail: (key: string, problem: string) => never,
): HttpAddress | undefined {
  if (v === undefined) return undefined;
  const key = HTTP_KEY;
  if (typeof v === "number") return address(DEFAULT_HTTP_HOST, String(v), key, fail);
  if (typeof v !== "string" || v.trim() === "") {
    fail(key, `must be "HOST:PORT" (a string), ${EXAMPLES}`);
  }
  const text = (v as string).trim();
  if (/^\d+$/.test(text)) return address(DEFAULT_HTTP_HOST, text, key, fail);
  let host: string, port: string;
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(text);
  if (bracketed) {
    [, host, port] = bracketed;
    if (isIP(host) !== 6) fail(key, `"${text}": "${host}" is not an IPv6 address`);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) fail(key, `"${text}" has no port: write HOST:PORT, ${EXAMPLES}`);
    host = text.slice(0, colon);
    port = text.slice(colon + 1);
    if (host.includes(":")) {
      fail(key, `"${text}": an IPv6 address goes in brackets, e.g. "[::1]:8222"`);
    }
  }
  if (host === "") {
    fail(key, `"${text}" has no address: ${EXAMPLES} (a bare port means 127.0.0.1)`);
  }
  if (host.toLowerCase() === "localhost") host = DEFAULT_HTTP_HOST;
  else if (isIP(host) === 0) {
    fail(
      key,
      `"${host}" is not an IP address (the broker binds an address, not a name), ${EXAMPLES}`,
    );
  }
  return address(host, port, key, fail);
}

function address(
  host: string,
  port: string,
  key: string,
  fail: (key: string, problem: string) => never,
): HttpAddress {
  const n = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    fail(key, `port "${port}" must be a number from 0 to 65535 (0: any free port)`);
  }
  return { host, port: n, loopback: isLoopback(host) };
}

/** 127.0.0.0/8, ::1, or an IPv4-mapped loopback address. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase();
  return /^127\./.test(h) || h === "::1" || /^::ffff:127\./.test(h);
}

/** `host:port` as a URL authority (IPv6 in brackets). */
export function formatHostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

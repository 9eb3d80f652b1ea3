/**
 * The `bridge` key of the broker configuration: which NATS servers to attach to, which local
 * subjects go out (`export`), which NATS subjects come in (`import`), how subjects map, how
 * the bridge authenticates, and the bounds of what it keeps while NATS is away. Validated like
 * the rest of the file: every error names the file and the key.
 *
 * ```jsonc
 * "bridge": { "nats": {
 *   "servers": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"],
 *   "export": ["sensors.>", { "local": "svc.>", "remote": "hostA.svc.>" }],
 *   "import": ["cmd.>", { "remote": "hostB.svc.>", "local": "hostB.svc.>" }],
 *   "name": "vbus-hostA",
 *   "auth": { "credsFile": "/etc/vbus/hostA.creds" },
 *   "tls": { "caFile": "/etc/vbus/ca.pem" },
 *   "reconnect": { "initialMs": 250, "maxMs": 5000 },
 *   "limits": { "bufferMessages": 10000, "bufferBytes": 8388608 }
 * } }
 * ```
 *
 * @example
 * ```ts
 * import { parseBridgeConfig } from "./bridge_config.ts";
 * const bridge = parseBridgeConfig(
 *   { nats: { servers: ["nats://127.0.0.1:4222"], export: ["a.>"], import: ["b.>"] } },
 *   (key, problem) => { throw new Error(`${key}: ${problem}`); },
 * );
 * bridge?.nats?.export[0]; // { local: "a.>", remote: "a.>" }
 * ```
 * @module
 */
import { isAbsolute, resolve } from "node:path";
import { intersect, ruleProblem, type SubjectRule } from "./subject_map.ts";

/**
 * How the bridge proves who it is to NATS (the official client's authenticators).
 *
 * @example
 * ```ts
 * import type { NatsAuth } from "./bridge_config.ts";
 * const byCreds: NatsAuth = { credsFile: "/etc/vbus/hostA.creds" }; // as `nsc` writes them
 * const byUser: NatsAuth = { user: "vbus", pass: "secret" };
 * ```
 */
export type NatsAuth =
  | { user: string; pass?: string }
  | { token: string }
  /** A file holding a user nkey seed (`SU...`). */
  | { nkeySeedFile: string }
  /** A `.creds` file (user JWT and nkey seed), as `nsc` writes them. */
  | { credsFile: string };

/**
 * TLS towards NATS (files are read when the bridge starts).
 *
 * @example
 * ```ts
 * import type { NatsTls } from "./bridge_config.ts";
 * const mutual: NatsTls = {
 *   caFile: "/etc/vbus/ca.pem",
 *   certFile: "/etc/vbus/hostA.pem",
 *   keyFile: "/etc/vbus/hostA.key",
 * };
 * ```
 */
export interface NatsTls {
  /** PEM file of the certificate authorities to trust for the server's certificate. */
  caFile?: string;
  /** PEM file of the bridge's client certificate (mutual TLS; with `keyFile`). */
  certFile?: string;
  /** PEM file of the client certificate's private key. */
  keyFile?: string;
  /** TLS before the NATS INFO (the server must have `handshake_first`). */
  handshakeFirst?: boolean;
}

/**
 * Bounds of what the bridge keeps for NATS.
 *
 * @example
 * ```ts
 * import { DEFAULT_BRIDGE_LIMITS, type NatsBridgeLimits } from "./bridge_config.ts";
 * const tight: NatsBridgeLimits = { ...DEFAULT_BRIDGE_LIMITS, bufferMessages: 1_000 };
 * ```
 */
export interface NatsBridgeLimits {
  /** Exports waiting while NATS is away or behind, at most this many; then the oldest go. */
  bufferMessages: number;
  /** ... and at most this many bytes (payloads, subjects and headers). */
  bufferBytes: number;
  /**
   * Bytes handed to the NATS connection and not yet confirmed by the server (a PING's PONG)
   * beyond which further exports wait in the buffer: a slow NATS fills the buffer, never the
   * broker's memory.
   */
  inFlightBytes: number;
  /** How long a request's reply route lives (answers after it are dropped, counted). */
  replyTtlMs: number;
  /** Reply routes kept at once (the oldest are forgotten first). */
  maxReplies: number;
}

/**
 * One bridge to a NATS system.
 *
 * @example
 * ```ts
 * import { parseConfig } from "../broker/config.ts";
 * const config = parseConfig(`{ "vms": [], "bridge": { "nats": {
 *   "servers": ["nats://10.0.0.1:4222"], "export": ["sensors.>"], "import": ["cmd.>"]
 * } } }`);
 * const nats = config.bridge?.nats;
 * console.log(nats?.limits.bufferMessages); // 10000 (the default)
 * ```
 */
export interface NatsBridgeConfig {
  /** NATS servers (`nats://host:port`, `tls://host:port` or `host:port`); the client fails over. */
  servers: string[];
  /** Local subjects published to NATS. */
  export: SubjectRule[];
  /** NATS subjects delivered to local subscribers. */
  import: SubjectRule[];
  /** Connection name shown by the NATS server's monitoring; absent: `vbus-<hostname>`. */
  name?: string;
  /** How the bridge authenticates; absent: no credentials. */
  auth?: NatsAuth;
  /** TLS towards NATS; absent: no options of the bridge's own (the NATS client's defaults). */
  tls?: NatsTls;
  /** Prefix of the bridge's reply subjects on NATS (NATS permissions may need it). */
  inboxPrefix: string;
  /** Delay before reconnect attempts: doubles from `initialMs` to `maxMs` while NATS is away. */
  reconnect: { initialMs: number; maxMs: number };
  /** Bounds of what the bridge keeps (defaults: {@link DEFAULT_BRIDGE_LIMITS}). */
  limits: NatsBridgeLimits;
}

/**
 * The `bridge` key.
 *
 * @example
 * ```ts
 * import { parseConfig } from "../broker/config.ts";
 * const withBridge = parseConfig(`{ "vms": [], "bridge": { "nats": {
 *   "servers": ["nats://127.0.0.1:4222"], "export": ["a.>"], "import": []
 * } } }`);
 * console.log(withBridge.bridge?.nats?.export); // [{ local: "a.>", remote: "a.>" }]
 * ```
 */
export interface BridgeConfig {
  /** The bridge to a NATS system (`bridge.nats`); absent: none. */
  nats?: NatsBridgeConfig;
}

/** Defaults of {@link NatsBridgeLimits}. */
export const DEFAULT_BRIDGE_LIMITS: Readonly<NatsBridgeLimits> = Object.freeze({
  bufferMessages: 10_000,
  bufferBytes: 8 * 1024 * 1024,
  inFlightBytes: 4 * 1024 * 1024,
  replyTtlMs: 60_000,
  maxReplies: 65_536,
});

/** Default reconnect delays towards NATS. */
export const DEFAULT_BRIDGE_RECONNECT = Object.freeze({ initialMs: 250, maxMs: 5_000 });

/** First tokens no bridge rule may name: the broker's own subjects and reply inboxes. */
const RESERVED_FIRST_TOKENS: Record<string, string> = {
  "$VBUS": "the broker's own subjects never cross a bridge",
  "_INBOX":
    "reply subjects cross through the bridge's reply mapping, never through export or import",
};

type Fail = (key: string, problem: string) => never;

/**
 * Validate the `bridge` key (absent: no bridge).
 *
 * @example
 * ```ts
 * const fail = (key: string, problem: string): never => {
 *   throw new Error(`${key}: ${problem}`);
 * };
 * parseBridgeConfig(undefined, fail); // undefined
 * ```
 */
export function parseBridgeConfig(v: unknown, fail: Fail): BridgeConfig | undefined {
  if (v === undefined) return undefined;
  const obj = object(v, "bridge", fail);
  keys(obj, ["nats"], "bridge", fail);
  if (obj.nats === undefined) return {};
  return { nats: parseNats(obj.nats, "bridge.nats", fail) };
}

function parseNats(v: unknown, at: string, fail: Fail): NatsBridgeConfig {
  const obj = object(v, at, fail);
  keys(
    obj,
    ["servers", "export", "import", "name", "auth", "tls", "inboxPrefix", "reconnect", "limits"],
    at,
    fail,
  );
  if (!Array.isArray(obj.servers) || obj.servers.length === 0) {
    fail(`${at}.servers`, 'must be a non-empty array of NATS server URLs ("nats://host:port")');
  }
  const servers = (obj.servers as unknown[]).map((s, i) => server(s, `${at}.servers[${i}]`, fail));
  const exports = rules(obj.export, `${at}.export`, "export", fail);
  const imports = rules(obj.import, `${at}.import`, "import", fail);
  const name = optionalString(obj.name, `${at}.name`, fail);
  const inboxPrefix = optionalString(obj.inboxPrefix, `${at}.inboxPrefix`, fail) ?? "_INBOX";
  if (!/^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$/.test(inboxPrefix)) {
    fail(`${at}.inboxPrefix`, `"${inboxPrefix}" must be literal subject tokens (e.g. "_INBOX")`);
  }
  return {
    servers,
    export: exports,
    import: imports,
    ...(name !== undefined ? { name } : {}),
    ...(obj.auth !== undefined ? { auth: auth(obj.auth, `${at}.auth`, fail) } : {}),
    ...(obj.tls !== undefined ? { tls: tls(obj.tls, `${at}.tls`, fail) } : {}),
    inboxPrefix,
    reconnect: reconnect(obj.reconnect, `${at}.reconnect`, fail),
    limits: limits(obj.limits, `${at}.limits`, fail),
  };
}

function server(v: unknown, key: string, fail: Fail): string {
  if (typeof v !== "string" || v.length === 0) fail(key, "must be a non-empty string");
  const s = v as string;
  const m = /^(?:(nats|tls):\/\/)?(?:[^@/\s]+@)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::(\d+))?$/
    .exec(s);
  if (!m) {
    fail(key, `"${s}" is not a NATS server URL (nats://host:port, tls://host:port or host:port)`);
  }
  const port = m![3] === undefined ? 4222 : Number(m![3]);
  if (port < 1 || port > 65535) fail(key, `"${s}": port must be between 1 and 65535`);
  return s;
}

/** Export or import rules: a pattern (mapped to itself) or `{ local, remote }`. */
function rules(v: unknown, key: string, kind: "export" | "import", fail: Fail): SubjectRule[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) {
    fail(key, 'must be an array of subject patterns or { "local": ..., "remote": ... } rules');
  }
  const out = (v as unknown[]).map((r, i): SubjectRule => {
    const at = `${key}[${i}]`;
    let rule: SubjectRule;
    if (typeof r === "string") rule = { local: r, remote: r };
    else {
      const obj = object(r, at, fail);
      keys(obj, ["local", "remote"], at, fail);
      const local = optionalString(obj.local, `${at}.local`, fail) ??
        fail(`${at}.local`, "is required (the broker's subject pattern)");
      const remote = optionalString(obj.remote, `${at}.remote`, fail) ??
        fail(`${at}.remote`, "is required (the NATS subject pattern)");
      rule = { local, remote };
    }
    const problem = ruleProblem(rule);
    if (problem) fail(at, problem);
    for (const side of ["local", "remote"] as const) {
      const first = rule[side].split(".")[0];
      const why = RESERVED_FIRST_TOKENS[first];
      if (why) fail(at, `"${rule[side]}" is under ${first}.: ${why}`);
    }
    return rule;
  });
  // A message matching two rules would cross twice: rules must not overlap on the side the
  // message comes from (local for exports, NATS for imports).
  const side = kind === "export" ? "local" : "remote";
  for (let i = 0; i < out.length; i++) {
    for (let j = 0; j < i; j++) {
      if (intersect(out[i][side], out[j][side]) !== null) {
        fail(
          `${key}[${i}]`,
          `"${out[i][side]}" overlaps ${key}[${j}] "${out[j][side]}": a message matching both ` +
            `would cross twice (make the ${side} patterns disjoint)`,
        );
      }
    }
  }
  return out;
}

function auth(v: unknown, key: string, fail: Fail): NatsAuth {
  const obj = object(v, key, fail);
  const kinds = [["user", "pass"], ["token"], ["nkeySeedFile"], ["credsFile"]];
  const kind = kinds.find((k) => obj[k[0]] !== undefined);
  if (!kind) {
    fail(key, 'must name one of "user" (and "pass"), "token", "nkeySeedFile" or "credsFile"');
  }
  keys(obj, kind!, key, fail);
  if (kind![0] === "user") {
    const user = optionalString(obj.user, `${key}.user`, fail)!;
    const pass = optionalString(obj.pass, `${key}.pass`, fail);
    return pass === undefined ? { user } : { user, pass };
  }
  if (kind![0] === "token") return { token: optionalString(obj.token, `${key}.token`, fail)! };
  if (kind![0] === "nkeySeedFile") {
    return { nkeySeedFile: path(obj.nkeySeedFile, `${key}.nkeySeedFile`, fail)! };
  }
  return { credsFile: path(obj.credsFile, `${key}.credsFile`, fail)! };
}

function tls(v: unknown, key: string, fail: Fail): NatsTls {
  const obj = object(v, key, fail);
  keys(obj, ["caFile", "certFile", "keyFile", "handshakeFirst"], key, fail);
  const out: NatsTls = {};
  for (const k of ["caFile", "certFile", "keyFile"] as const) {
    const p = path(obj[k], `${key}.${k}`, fail);
    if (p !== undefined) out[k] = p;
  }
  if ((out.certFile === undefined) !== (out.keyFile === undefined)) {
    fail(key, '"certFile" and "keyFile" go together (a client certificate and its key)');
  }
  if (obj.handshakeFirst !== undefined) {
    if (typeof obj.handshakeFirst !== "boolean") {
      fail(`${key}.handshakeFirst`, "must be true or false");
    }
    out.handshakeFirst = obj.handshakeFirst as boolean;
  }
  return out;
}

function reconnect(v: unknown, key: string, fail: Fail): { initialMs: number; maxMs: number } {
  const out: { initialMs: number; maxMs: number } = { ...DEFAULT_BRIDGE_RECONNECT };
  if (v === undefined) return out;
  const obj = object(v, key, fail);
  keys(obj, ["initialMs", "maxMs"], key, fail);
  for (const k of ["initialMs", "maxMs"] as const) {
    if (obj[k] !== undefined) out[k] = positiveInt(obj[k], `${key}.${k}`, fail);
  }
  if (out.maxMs < out.initialMs) {
    fail(`${key}.maxMs`, `must be at least initialMs (${out.initialMs})`);
  }
  return out;
}

function limits(v: unknown, key: string, fail: Fail): NatsBridgeLimits {
  const out: NatsBridgeLimits = { ...DEFAULT_BRIDGE_LIMITS };
  if (v === undefined) return out;
  const obj = object(v, key, fail);
  const names = Object.keys(DEFAULT_BRIDGE_LIMITS) as (keyof NatsBridgeLimits)[];
  keys(obj, names, key, fail);
  for (const k of names) {
    if (obj[k] !== undefined) out[k] = positiveInt(obj[k], `${key}.${k}`, fail);
  }
  return out;
}

function object(v: unknown, key: string, fail: Fail): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(key, "must be an object");
  return v as Record<string, unknown>;
}

function keys(obj: Record<string, unknown>, allowed: string[], at: string, fail: Fail) {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      fail(`${at}.${k}`, `unknown key (expected one of: ${allowed.join(", ")})`);
    }
  }
}

function optionalString(v: unknown, key: string, fail: Fail): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || v.length === 0) fail(key, "must be a non-empty string");
  return v as string;
}

function path(v: unknown, key: string, fail: Fail): string | undefined {
  const p = optionalString(v, key, fail);
  if (p === undefined) return undefined;
  if (!isAbsolute(p)) fail(key, `"${p}" must be an absolute path`);
  return resolve(p);
}

function positiveInt(v: unknown, key: string, fail: Fail): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    fail(key, "must be a positive integer");
  }
  return v as number;
}

/**
 * Decoding and validating frame heads. Every head that arrives from a peer is untrusted: these
 * functions check its shape and types and throw a `BAD_FRAME` {@link VbusError} naming what is
 * wrong, so the caller never acts on a malformed frame.
 *
 * @example
 * ```ts
 * import { decodePubHead } from "./heads.ts";
 * import { encodeValue } from "./codec.ts";
 * decodePubHead(encodeValue(["a.b", null, null])); // ["a.b", null, null]
 * ```
 * @module
 */
import { decodeValueAt } from "./codec.ts";
import { ErrorCode, VbusError } from "./errors.ts";
import { utf8Length } from "../subject/subject.ts";
import type {
  ErrHead,
  Headers,
  HelloHead,
  MsgHead,
  PubHead,
  SubHead,
  UnsubHead,
  WelcomeHead,
} from "./ops.ts";

/** msgpack marker of an array of two elements. */
const FIXARRAY_2 = 0x92;

function bad(what: string): never {
  throw new VbusError(ErrorCode.BadFrame, `malformed ${what}`);
}

function decodeHead(bytes: Uint8Array, what: string, start = 0, end = bytes.length): unknown {
  try {
    return decodeValueAt(bytes, start, end);
  } catch {
    return bad(`${what} head: not msgpack`);
  }
}

function isSid(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v > 0 && v <= 0xffffffff;
}

function optionalString(v: unknown): v is string | null {
  return v === null || typeof v === "string";
}

/** Check that `v` is null or a map of string to string. */
export function isHeaders(v: unknown): v is Headers | null {
  if (v === null) return true;
  if (typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) return false;
  for (const key in v as Record<string, unknown>) {
    if (key.length === 0 || typeof (v as Record<string, unknown>)[key] !== "string") return false;
  }
  return true;
}

/**
 * Size of a headers map as the `maxHeaderBytes` limit counts it: UTF-8 bytes of every key and
 * value, plus 2 per entry. Client and broker use this same rule.
 *
 * @example
 * ```ts
 * headersSize({ a: "bc" }); // 5
 * ```
 */
export function headersSize(headers: Headers): number {
  let size = 0;
  for (const k in headers) size += utf8Length(k) + utf8Length(headers[k]) + 2;
  return size;
}

/** Decode a HELLO head. */
export function decodeHelloHead(bytes: Uint8Array): HelloHead {
  const h = decodeHead(bytes, "HELLO") as HelloHead;
  if (typeof h !== "object" || h === null || typeof h.v !== "number") bad("HELLO head");
  if (!Array.isArray(h.features) || !h.features.every((f) => typeof f === "string")) {
    bad("HELLO features");
  }
  if (typeof h.nonce !== "number") bad("HELLO nonce");
  if (h.client !== undefined && typeof h.client !== "string") bad("HELLO client");
  if (h.shm !== undefined && (typeof h.shm !== "object" || h.shm === null)) bad("HELLO shm");
  return h;
}

/** Decode a WELCOME head. */
export function decodeWelcomeHead(bytes: Uint8Array): WelcomeHead {
  const h = decodeHead(bytes, "WELCOME") as WelcomeHead;
  if (typeof h !== "object" || h === null || typeof h.v !== "number") bad("WELCOME head");
  for (const k of ["identity", "session", "inbox"] as const) {
    if (typeof h[k] !== "string") bad(`WELCOME ${k}`);
  }
  for (
    const k of [
      "nonce",
      "maxFrameBytes",
      "maxSubjectBytes",
      "maxSubscriptions",
      "pingIntervalMs",
    ] as const
  ) {
    if (typeof h[k] !== "number") bad(`WELCOME ${k}`);
  }
  if (!Array.isArray(h.features)) bad("WELCOME features");
  return h;
}

/** Decode a SUB head. */
export function decodeSubHead(bytes: Uint8Array): SubHead {
  const h = decodeHead(bytes, "SUB");
  if (!Array.isArray(h) || (h.length !== 3 && h.length !== 4)) bad("SUB head");
  const [sid, subject, queue, slow] = h as unknown[];
  if (!isSid(sid)) bad("SUB sid");
  if (typeof subject !== "string") bad("SUB subject");
  if (!optionalString(queue)) bad("SUB queue");
  if (h.length === 4 && slow !== "drop" && slow !== "block") bad("SUB slow-consumer policy");
  return h as SubHead;
}

/** Decode an UNSUB head. */
export function decodeUnsubHead(bytes: Uint8Array): UnsubHead {
  const h = decodeHead(bytes, "UNSUB");
  if (!Array.isArray(h) || h.length !== 2) bad("UNSUB head");
  const [sid, max] = h as unknown[];
  if (!isSid(sid)) bad("UNSUB sid");
  if (typeof max !== "number" || !Number.isInteger(max) || max < 0) bad("UNSUB max");
  return h as UnsubHead;
}

/** Decode a PUB head. */
export function decodePubHead(bytes: Uint8Array, start = 0, end = bytes.length): PubHead {
  const h = decodeHead(bytes, "PUB", start, end);
  if (!Array.isArray(h) || h.length !== 3) bad("PUB head");
  const [subject, reply, headers] = h as unknown[];
  if (typeof subject !== "string") bad("PUB subject");
  if (!optionalString(reply)) bad("PUB reply");
  if (!isHeaders(headers)) bad("PUB headers");
  return h as PubHead;
}

/** Decode a MSG head. */
export function decodeMsgHead(bytes: Uint8Array, start = 0, end = bytes.length): MsgHead {
  const h = decodeHead(bytes, "MSG", start, end);
  if (!Array.isArray(h) || h.length !== 4) bad("MSG head");
  const [sid, subject, reply, headers] = h as unknown[];
  if (!isSid(sid) || typeof subject !== "string" || !optionalString(reply) || !isHeaders(headers)) {
    bad("MSG head");
  }
  return h as MsgHead;
}

/** Decode an ERR head. */
export function decodeErrHead(bytes: Uint8Array): ErrHead {
  const h = decodeHead(bytes, "ERR") as ErrHead;
  if (
    typeof h !== "object" || h === null || typeof h.code !== "string" ||
    typeof h.message !== "string"
  ) {
    bad("ERR head");
  }
  return h;
}

/** Decode a DOORBELL head: [ring, kind]. */
export function decodeDoorbellHead(bytes: Uint8Array): [ring: number, kind: number] {
  // The only shape peers send (two small integers): read the three bytes, skip msgpackr.
  if (bytes.length === 3 && bytes[0] === FIXARRAY_2 && bytes[1] < 0x80 && bytes[2] < 0x80) {
    return [bytes[1], bytes[2]];
  }
  const h = decodeHead(bytes, "DOORBELL");
  if (!Array.isArray(h) || h.length !== 2 || !Number.isInteger(h[0]) || !Number.isInteger(h[1])) {
    bad("DOORBELL head");
  }
  return h as [number, number];
}

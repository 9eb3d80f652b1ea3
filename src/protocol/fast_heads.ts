/**
 * A fast path for decoding the two heads on the per-message path, PUB `[subject, reply,
 * headers]` and MSG `[sid, subject, reply, headers]`, when they have the common shape: ASCII
 * subjects, no headers. It reads the msgpack bytes in place and reuses the string of a subject
 * it has seen before, so a steady stream costs no allocation for its subject. Anything else
 * returns `undefined` and the caller decodes with msgpackr as usual (same result, slower).
 *
 * @example
 * ```ts
 * import { HeadReader } from "./fast_heads.ts";
 * import { encodeValue } from "./codec.ts";
 * const reader = new HeadReader();
 * const b = encodeValue(["sensors.vm1.temp", null, null]);
 * reader.pub(b, 0, b.length); // ["sensors.vm1.temp", null, null]
 * ```
 * @module
 */
import type { MsgHead, PubHead } from "./ops.ts";
import { copyBytes } from "./codec.ts";

const NIL = 0xc0;
const FIXSTR = 0xa0;
const STR8 = 0xd9;
/** Distinct subjects remembered per reader. */
const CACHE_SIZE = 1024;

interface Cached {
  bytes: Uint8Array;
  text: string;
}

/** Decodes common-shape PUB and MSG heads in place; see the module doc. */
export class HeadReader {
  #cache = new Map<number, Cached>();
  #pos = 0;

  /** Decode a PUB head in `buf[start, end)`, or `undefined` if it is not of the common shape. */
  pub(buf: Uint8Array, start: number, end: number): PubHead | undefined {
    if (buf[start] !== 0x93) return undefined;
    this.#pos = start + 1;
    const subject = this.#str(buf, end);
    if (subject === undefined) return undefined;
    const reply = this.#nilOrStr(buf, end);
    if (reply === undefined || buf[this.#pos] !== NIL || this.#pos + 1 !== end) return undefined;
    return [subject, reply, null];
  }

  /** Decode a MSG head in `buf[start, end)`, or `undefined` if it is not of the common shape. */
  msg(buf: Uint8Array, start: number, end: number): MsgHead | undefined {
    if (buf[start] !== 0x94) return undefined;
    let p = start + 1;
    const t = buf[p];
    let sid: number;
    if (t < 0x80) {
      sid = t;
      p += 1;
    } else if (t === 0xcc) {
      sid = buf[p + 1];
      p += 2;
    } else if (t === 0xcd) {
      sid = (buf[p + 1] << 8) | buf[p + 2];
      p += 3;
    } else if (t === 0xce) {
      sid = ((buf[p + 1] << 24) >>> 0) + (buf[p + 2] << 16) + (buf[p + 3] << 8) + buf[p + 4];
      p += 5;
    } else return undefined;
    if (sid === 0 || p >= end) return undefined;
    this.#pos = p;
    const subject = this.#str(buf, end);
    if (subject === undefined) return undefined;
    const reply = this.#nilOrStr(buf, end);
    if (reply === undefined || buf[this.#pos] !== NIL || this.#pos + 1 !== end) return undefined;
    return [sid, subject, reply, null];
  }

  #nilOrStr(buf: Uint8Array, end: number): string | null | undefined {
    if (this.#pos >= end) return undefined;
    if (buf[this.#pos] === NIL) {
      this.#pos++;
      return null;
    }
    return this.#str(buf, end);
  }

  /** An ASCII msgpack string at the current position (fixstr or str8), else undefined. */
  #str(buf: Uint8Array, end: number): string | undefined {
    const p = this.#pos;
    const t = buf[p];
    let len: number, at: number;
    if ((t & 0xe0) === FIXSTR) {
      len = t & 0x1f;
      at = p + 1;
    } else if (t === STR8) {
      len = buf[p + 1];
      at = p + 2;
    } else return undefined;
    if (at + len > end) return undefined;
    let hash = len;
    for (let i = 0; i < len; i++) {
      const c = buf[at + i];
      if (c > 0x7f) return undefined; // non-ASCII: let msgpackr do the UTF-8
      hash = (Math.imul(hash, 31) + c) | 0;
    }
    this.#pos = at + len;
    const hit = this.#cache.get(hash);
    if (hit && hit.bytes.length === len) {
      const b = hit.bytes;
      let same = true;
      for (let i = 0; i < len; i++) {
        if (b[i] !== buf[at + i]) {
          same = false;
          break;
        }
      }
      if (same) return hit.text;
    }
    const bytes = copyBytes(buf, at, at + len);
    const text = String.fromCharCode.apply(null, bytes as unknown as number[]);
    if (this.#cache.size >= CACHE_SIZE) this.#cache.clear();
    this.#cache.set(hash, { bytes, text });
    return text;
  }
}

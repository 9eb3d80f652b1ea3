// Length-prefixed framing shared by the raw-socket peers (client side and relay):
//   frame = u32 little-endian payload length, then the payload bytes.
// Writes are batched: small frames are copied into a write buffer that is handed to the socket
// on flush() (or when full); large payloads go to the socket as they are, behind their header.
import type { Socket } from "node:net";

const BATCH_BYTES = 256 * 1024;
const DIRECT_BYTES = 16 * 1024;
/** flush() waits for 'drain' only above this much queued in the socket (its own high-water mark
 *  of 16 KiB would turn every batch into a stop-and-go). */
export const QUEUE_LIMIT = 2 * 1024 * 1024;

export class FrameWriter {
  private buf: Uint8Array = new Uint8Array(BATCH_BYTES);
  private view = new DataView(this.buf.buffer);
  private pos = 0;
  constructor(private sock: Socket) {}

  /** Queue one frame. The payload must not be modified afterwards (large ones are not copied). */
  write(payload: Uint8Array): void {
    const len = payload.length;
    if (len >= DIRECT_BYTES) {
      if (this.pos + 4 > this.buf.length) this.push();
      this.view.setUint32(this.pos, len, true);
      this.pos += 4;
      this.push();
      this.sock.write(payload);
      return;
    }
    if (this.pos + 4 + len > this.buf.length) this.push();
    this.view.setUint32(this.pos, len, true);
    this.buf.set(payload, this.pos + 4);
    this.pos += 4 + len;
  }

  /** Hand the batch to the socket; a fresh buffer is used next (the socket may keep a reference). */
  push(): void {
    if (this.pos === 0) return;
    this.sock.write(this.buf.subarray(0, this.pos));
    this.buf = new Uint8Array(BATCH_BYTES);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  /** push(), then wait for 'drain' if more than QUEUE_LIMIT bytes are queued in the socket. */
  flush(): Promise<void> {
    this.push();
    if (this.sock.writableLength < QUEUE_LIMIT) return Promise.resolve();
    return new Promise((res) => {
      const done = () => {
        this.sock.off("drain", done);
        this.sock.off("close", done);
        res();
      };
      this.sock.on("drain", done);
      this.sock.on("close", done);
    });
  }
}

/** Splits a byte stream into payloads; payloads are views into the received chunk (or a fresh
 *  buffer when a frame spans chunks), valid for as long as the caller keeps them. */
export class FrameParser {
  private acc: Uint8Array | null = null; // frame (or 4-byte header) being assembled
  private accLen = 0;
  private inHeader = false;
  constructor(public onFrame: (payload: Uint8Array) => void) {}

  push(chunk: Uint8Array): void {
    const n = chunk.length;
    let off = 0;
    while (this.acc) {
      const acc = this.acc;
      const take = Math.min(acc.length - this.accLen, n - off);
      acc.set(chunk.subarray(off, off + take), this.accLen);
      this.accLen += take;
      off += take;
      if (this.accLen < acc.length) return;
      if (this.inHeader) {
        const len = acc[0] | (acc[1] << 8) | (acc[2] << 16) | (acc[3] * 0x1000000);
        this.inHeader = false;
        this.acc = new Uint8Array(len);
        this.accLen = 0;
        if (len > 0) continue;
      }
      const frame = this.acc;
      this.acc = null;
      this.onFrame(frame);
    }
    while (n - off >= 4) {
      const len = chunk[off] | (chunk[off + 1] << 8) | (chunk[off + 2] << 16) |
        (chunk[off + 3] * 0x1000000);
      if (n - off - 4 >= len) {
        this.onFrame(chunk.subarray(off + 4, off + 4 + len));
        off += 4 + len;
      } else {
        this.acc = new Uint8Array(len);
        this.acc.set(chunk.subarray(off + 4));
        this.accLen = n - off - 4;
        this.inHeader = false;
        return;
      }
    }
    if (off < n) {
      this.acc = new Uint8Array(4);
      this.acc.set(chunk.subarray(off));
      this.accLen = n - off;
      this.inHeader = true;
    }
  }
}

/** For the relay: cuts a byte stream into runs that contain only whole frames (headers
 *  included), so runs from several sources can be interleaved on one output. Whole frames inside
 *  a chunk are passed on as one view (no copy); a frame spanning chunks is assembled first. */
export class FrameSplitter {
  private acc: Uint8Array | null = null;
  private accLen = 0;
  constructor(public onRun: (run: Uint8Array) => void) {}

  push(chunk: Uint8Array): void {
    const n = chunk.length;
    let off = 0;
    while (this.acc) {
      const acc = this.acc;
      const take = Math.min(acc.length - this.accLen, n - off);
      acc.set(chunk.subarray(off, off + take), this.accLen);
      this.accLen += take;
      off += take;
      if (this.accLen < acc.length) return;
      if (acc.length === 4) {
        // header complete: grow to the full frame
        const len = acc[0] | (acc[1] << 8) | (acc[2] << 16) | (acc[3] * 0x1000000);
        if (len > 0) {
          const full = new Uint8Array(4 + len);
          full.set(acc);
          this.acc = full;
          continue;
        }
      }
      this.acc = null;
      this.onRun(acc);
    }
    const start = off;
    while (n - off >= 4) {
      const len = chunk[off] | (chunk[off + 1] << 8) | (chunk[off + 2] << 16) |
        (chunk[off + 3] * 0x1000000);
      if (n - off - 4 < len) break;
      off += 4 + len;
    }
    if (off > start) this.onRun(chunk.subarray(start, off));
    if (off < n) {
      const rest = n - off;
      const size = rest >= 4
        ? 4 +
          (chunk[off] | (chunk[off + 1] << 8) | (chunk[off + 2] << 16) |
            (chunk[off + 3] * 0x1000000))
        : 4;
      this.acc = new Uint8Array(size);
      this.acc.set(chunk.subarray(off));
      this.accLen = rest;
    }
  }
}

export function encodeFrame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length, true);
  out.set(payload, 4);
  return out;
}

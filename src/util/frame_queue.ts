/**
 * A first-in first-out queue of encoded frames, packed back to back into large chunks, so that
 * what it holds in memory is what it counts: a backlog of a million 19-byte messages costs
 * about a million frames' bytes, not a million `Uint8Array` objects (measured: ~10x its bound).
 * Each frame's length is read back from its own frame header (`frame.ts`).
 *
 * @example
 * ```ts
 * import { FrameQueue } from "./frame_queue.ts";
 * import { Op } from "../protocol/ops.ts";
 * const q = new FrameQueue();
 * q.push(Op.Msg, new Uint8Array([0x94, 1, 0xa1, 0x61, 0xc0, 0xc0]), new Uint8Array([0xc3]));
 * q.peek()!.length; // 19: header, head and payload
 * q.shift();
 * q.length; // 0
 * ```
 * @module
 */
import { FrameHeader, writeFrameHeader } from "../protocol/frame.ts";
import { msgHeadMaxLength, writeMsgHead } from "../protocol/codec.ts";
import { Op } from "../protocol/ops.ts";
import { BufferPool } from "./buffer_pool.ts";
import { Fifo } from "./fifo.ts";

/** Size of one chunk; a larger frame gets a chunk of its own (rounded up: `buffer_pool.ts`). */
export const FRAME_QUEUE_CHUNK_BYTES = 64 * 1024;
/**
 * Emptied chunks kept for reuse, by every queue of the process together (a broker has one
 * backlog per session; one at a time is usually the busy one). A queue that drops its oldest
 * frames as fast as new ones arrive would otherwise allocate a chunk every few dozen messages,
 * and buffers outside the JavaScript heap are freed late (measured: 200 MiB of RSS for a 16 MiB
 * bound). A backlog of large frames swings by many chunks between a full ring and an empty
 * one: with 8 spares per queue, a broker at 64 KiB messages still allocated most of its chunks
 * (`take` 17% of its CPU in a profile), so the process keeps up to
 * {@link FRAME_QUEUE_SPARE_BYTES} of them.
 */
export const FRAME_QUEUE_SPARE_CHUNKS = 128;
/** Bytes of emptied chunks the process keeps at most (a chunk of a large frame is kept too). */
export const FRAME_QUEUE_SPARE_BYTES = 8 * 1024 * 1024;

/** The pool every {@link FrameQueue} takes its chunks from unless given another. */
export const frameQueueChunks: BufferPool = new BufferPool({
  standard: FRAME_QUEUE_CHUNK_BYTES,
  maxBuffers: FRAME_QUEUE_SPARE_CHUNKS,
  maxBytes: FRAME_QUEUE_SPARE_BYTES,
});

interface Chunk {
  bytes: Uint8Array;
  /** Start of the first frame not yet shifted. */
  start: number;
  /** End of the last frame written. */
  end: number;
}

/** Frames queued in chunks; see the module doc. */
export class FrameQueue {
  #chunks = new Fifo<Chunk>();
  #tail?: Chunk;
  #length = 0;
  #frameBytes = 0;
  #allocated = 0;
  #spare: BufferPool;

  /** `pool`: where emptied chunks go and new ones come from (its standard size is a chunk). */
  constructor(pool: BufferPool = frameQueueChunks) {
    if (pool.standard !== FRAME_QUEUE_CHUNK_BYTES) {
      throw new RangeError(`a frame queue's pool must hand out ${FRAME_QUEUE_CHUNK_BYTES} bytes`);
    }
    this.#spare = pool;
  }

  /** Frames in the queue. */
  get length(): number {
    return this.#length;
  }

  /** Bytes of the queued frames. */
  get frameBytes(): number {
    return this.#frameBytes;
  }

  /**
   * Bytes of memory held by queued frames (whole chunks): what a memory bound must count.
   * Emptied chunks go back to the pool (at most {@link FRAME_QUEUE_SPARE_BYTES} for the whole
   * process by default), which this does not count.
   */
  get memoryBytes(): number {
    return this.#allocated;
  }

  /** Append one frame built from its parts (copied). */
  push(op: number, head: Uint8Array, payload: Uint8Array): void {
    const size = FrameHeader.LENGTH + head.length + payload.length;
    const chunk = this.#room(size);
    const at = chunk.end;
    writeFrameHeader(chunk.bytes, at, op, 0, head.length, payload.length);
    chunk.bytes.set(head, at + FrameHeader.LENGTH);
    chunk.bytes.set(payload, at + FrameHeader.LENGTH + head.length);
    chunk.end = at + size;
    this.#length++;
    this.#frameBytes += size;
  }

  /**
   * Append a MSG frame whose head is spliced from a PUB head's tail (see `writeMsgHead`),
   * written in place: nothing is allocated per message.
   */
  pushMsg(sid: number, pubTail: Uint8Array, payload: Uint8Array): void {
    const chunk = this.#room(FrameHeader.LENGTH + msgHeadMaxLength(pubTail) + payload.length);
    const at = chunk.end;
    const headLength = writeMsgHead(chunk.bytes, at + FrameHeader.LENGTH, sid, pubTail);
    writeFrameHeader(chunk.bytes, at, Op.Msg, 0, headLength, payload.length);
    chunk.bytes.set(payload, at + FrameHeader.LENGTH + headLength);
    const size = FrameHeader.LENGTH + headLength + payload.length;
    chunk.end = at + size;
    this.#length++;
    this.#frameBytes += size;
  }

  /** The oldest frame, as a view valid until the next {@link shift} or {@link clear}. */
  peek(): Uint8Array | undefined {
    const chunk = this.#chunks.peek();
    if (!chunk || chunk.start === chunk.end) return undefined;
    return chunk.bytes.subarray(chunk.start, chunk.start + frameSize(chunk.bytes, chunk.start));
  }

  /**
   * The buffer holding the oldest frame, which starts at {@link oldestOffset}: for copying it
   * out without a view (valid until the next {@link shift} or {@link clear}).
   */
  oldestBuffer(): Uint8Array | undefined {
    const chunk = this.#chunks.peek();
    return !chunk || chunk.start === chunk.end ? undefined : chunk.bytes;
  }

  /** Where the oldest frame starts in {@link oldestBuffer}. */
  oldestOffset(): number {
    return this.#chunks.peek()?.start ?? 0;
  }

  /** Remove the oldest frame; returns its size in bytes (0 when empty). */
  shift(): number {
    const chunk = this.#chunks.peek();
    if (!chunk || chunk.start === chunk.end) return 0;
    const size = frameSize(chunk.bytes, chunk.start);
    chunk.start += size;
    this.#length--;
    this.#frameBytes -= size;
    if (chunk.start === chunk.end) {
      if (chunk === this.#tail) {
        chunk.start = chunk.end = 0; // reuse the last chunk
      } else {
        this.#chunks.shift();
        this.#allocated -= chunk.bytes.length;
        this.#spare.give(chunk.bytes);
      }
    }
    return size;
  }

  /**
   * Drop everything; the chunks go back to the pool. A view from {@link peek} or
   * {@link oldestBuffer} must not be used after this: its chunk may already hold another
   * queue's (another session's) frames.
   */
  clear(): void {
    for (let c = this.#chunks.shift(); c; c = this.#chunks.shift()) this.#spare.give(c.bytes);
    this.#tail = undefined;
    this.#length = 0;
    this.#frameBytes = 0;
    this.#allocated = 0;
  }

  #room(size: number): Chunk {
    const tail = this.#tail;
    if (tail && tail.bytes.length - tail.end >= size) return tail;
    if (tail && this.#length === 0) {
      // The queue is empty but its last chunk is too small for this frame: drop it, so the
      // oldest chunk always holds the oldest frame.
      this.#chunks.clear();
      this.#allocated = 0;
      this.#spare.give(tail.bytes);
      this.#tail = undefined;
    }
    const chunk: Chunk = { bytes: this.#spare.take(size), start: 0, end: 0 };
    this.#chunks.push(chunk);
    this.#tail = chunk;
    this.#allocated += chunk.bytes.length;
    return chunk;
  }
}

/**
 * The size of the encoded frame at `at` in `b`, from its frame header.
 *
 * @example
 * ```ts
 * import { FrameQueue, frameSize } from "./frame_queue.ts";
 * import { Op } from "../protocol/ops.ts";
 * const q = new FrameQueue();
 * q.push(Op.Msg, new Uint8Array([0x94, 1, 0xa1, 0x61, 0xc0, 0xc0]), new Uint8Array([0xc3]));
 * frameSize(q.oldestBuffer()!, q.oldestOffset()); // 19
 * ```
 */
export function frameSize(b: Uint8Array, at: number): number {
  const pad = b[at + FrameHeader.FLAGS_OFFSET] & FrameHeader.FLAGS_PAD_MASK;
  return FrameHeader.LENGTH + u32(b, at + FrameHeader.HEAD_LENGTH_OFFSET) + pad +
    u32(b, at + FrameHeader.PAYLOAD_LENGTH_OFFSET);
}

function u32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3];
}

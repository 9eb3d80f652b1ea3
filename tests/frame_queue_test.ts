/** The broker's backlog queue: frames packed in chunks, the oldest always first. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BufferPool } from "../src/util/buffer_pool.ts";
import { FRAME_QUEUE_CHUNK_BYTES, FrameQueue, frameSize } from "../src/util/frame_queue.ts";
import { FrameHeader } from "../src/protocol/frame.ts";
import { Op } from "../src/protocol/ops.ts";

const head = new Uint8Array([0x94, 1, 0xa1, 0x61, 0xc0, 0xc0]);

function payloadOf(frame: Uint8Array): Uint8Array {
  return frame.subarray(FrameHeader.LENGTH + head.length);
}

test("frame queue: a frame larger than a chunk after the queue emptied is the next one out (regression)", () => {
  const q = new FrameQueue();
  q.push(Op.Msg, head, new Uint8Array([1]));
  assert.equal(q.shift() > 0, true);
  assert.equal(q.length, 0);
  const big = new Uint8Array(FRAME_QUEUE_CHUNK_BYTES + 100).fill(7);
  q.push(Op.Msg, head, big);
  assert.equal(q.length, 1);
  const out = q.peek();
  assert.ok(out, "peek finds the queued frame");
  assert.deepEqual(payloadOf(out), big);
  q.shift();
  assert.equal(q.length, 0);
  assert.equal(q.peek(), undefined);
});

test("frame queue: FIFO order and byte counts across many chunks, with drops from the head", () => {
  const q = new FrameQueue();
  let next = 0, expect = 0;
  for (let round = 0; round < 50; round++) {
    const n = 1 + ((round * 37) % 500);
    for (let i = 0; i < n; i++) {
      const size = (next * 131) % 3000;
      const p = new Uint8Array(size + 4);
      new DataView(p.buffer).setUint32(0, next++);
      q.push(Op.Msg, head, p);
    }
    const take = Math.min(q.length, (round * 53) % 400);
    for (let i = 0; i < take; i++) {
      const f = q.peek()!;
      sameFrame(q, f);
      assert.equal(
        new DataView(f.buffer, f.byteOffset + FrameHeader.LENGTH + head.length).getUint32(0),
        expect++,
      );
      q.shift();
    }
    assert.equal(q.length, next - expect);
    assert.ok(q.memoryBytes >= q.frameBytes);
  }
  while (q.length > 0) {
    const f = q.peek()!;
    sameFrame(q, f);
    assert.equal(
      new DataView(f.buffer, f.byteOffset + FrameHeader.LENGTH + head.length).getUint32(0),
      expect++,
    );
    q.shift();
  }
  assert.equal(expect, next);
  assert.equal(q.frameBytes, 0);
  assert.equal(q.oldestBuffer(), undefined, "nothing to copy from an empty queue");
});

/** oldestBuffer/oldestOffset/frameSize name the bytes peek() views (what the outbox copies). */
function sameFrame(q: FrameQueue, f: Uint8Array) {
  const b = q.oldestBuffer()!, at = q.oldestOffset();
  assert.equal(b.buffer, f.buffer);
  assert.equal(b.byteOffset + at, f.byteOffset);
  assert.equal(frameSize(b, at), f.length);
}

test("frame queue: pushMsg splices the head from a PUB tail", () => {
  const q = new FrameQueue();
  const pubTail = new Uint8Array([0xa1, 0x61, 0xc0, 0xc0]); // "a", nil, nil
  q.pushMsg(300, pubTail, new Uint8Array([0xc3]));
  const f = q.peek()!;
  // [0x94, 0xcd 0x01 0x2c (sid 300), "a", nil, nil], then the payload
  assert.deepEqual([...f.subarray(FrameHeader.LENGTH)], [
    0x94,
    0xcd,
    0x01,
    0x2c,
    0xa1,
    0x61,
    0xc0,
    0xc0,
    0xc3,
  ]);
});

test("frame queue: a chunk of a frame larger than a chunk is reused for the next such frame", () => {
  const q = new FrameQueue();
  const big = new Uint8Array(FRAME_QUEUE_CHUNK_BYTES + 100);
  q.push(Op.Msg, head, big.fill(1));
  const first = q.oldestBuffer();
  q.push(Op.Msg, head, big.fill(2)); // a chunk of its own: the first has no room left
  q.shift(); // the first chunk is empty and not the tail: kept for reuse
  q.push(Op.Msg, head, big.fill(3));
  q.shift();
  assert.equal(q.oldestBuffer(), first, "the third frame went into the first frame's chunk");
  assert.deepEqual(payloadOf(q.peek()!), new Uint8Array(FRAME_QUEUE_CHUNK_BYTES + 100).fill(3));
  assert.ok(q.memoryBytes < 2 * (FRAME_QUEUE_CHUNK_BYTES + 4096), "counts rounded chunks only");
});

test("frame queue: chunks go back to the process's pool on clear() and serve another queue", () => {
  const pool = new BufferPool({
    standard: FRAME_QUEUE_CHUNK_BYTES,
    maxBuffers: 4,
    maxBytes: 1 << 20,
  });
  const a = new FrameQueue(pool), b = new FrameQueue(pool);
  a.push(Op.Msg, head, new Uint8Array(10));
  const chunk = a.oldestBuffer();
  a.clear();
  assert.equal(a.length, 0);
  assert.equal(pool.spareBytes, FRAME_QUEUE_CHUNK_BYTES, "the cleared queue's chunk is kept");
  b.push(Op.Msg, head, new Uint8Array(10).fill(7));
  assert.equal(b.oldestBuffer(), chunk, "another queue takes it");
  assert.deepEqual(payloadOf(b.peek()!), new Uint8Array(10).fill(7));
  assert.throws(
    () => new FrameQueue(new BufferPool({ standard: 4096, maxBuffers: 1, maxBytes: 4096 })),
    /must hand out 65536 bytes/,
  );
});

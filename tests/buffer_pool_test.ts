/** Emptied buffers kept for reuse, of every size a queue asks for, within bounds. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BUFFER_POOL_GRANULE, BufferPool } from "../src/util/buffer_pool.ts";

const KIB = 1024;

test("buffer pool: small requests get the standard size, large ones a rounded size", () => {
  const pool = new BufferPool({ standard: 64 * KIB, maxBuffers: 4, maxBytes: 1024 * KIB });
  assert.equal(pool.take(1).length, 64 * KIB);
  assert.equal(pool.take(64 * KIB).length, 64 * KIB);
  assert.equal(pool.take(64 * KIB + 1).length, 64 * KIB + BUFFER_POOL_GRANULE);
  assert.equal(pool.sizeFor(100 * KIB), 100 * KIB);
});

test("buffer pool: a buffer given back is taken again for the same size, not for another", () => {
  const pool = new BufferPool({ standard: 64 * KIB, maxBuffers: 4, maxBytes: 1024 * KIB });
  const big = pool.take(70_000), small = pool.take(10);
  pool.give(big);
  pool.give(small);
  assert.equal(pool.spareBytes, big.length + small.length);
  assert.notEqual(pool.take(200_000), big, "a larger request gets a new buffer");
  assert.equal(pool.take(71_000), big, "the same rounded size reuses it");
  assert.equal(pool.take(5), small);
  assert.equal(pool.spareBytes, 0);
  assert.notEqual(pool.take(5), small, "a buffer is handed out once");
});

test("buffer pool: keeps no more than its bounds, and never a view or a foreign size", () => {
  const pool = new BufferPool({ standard: 64 * KIB, maxBuffers: 2, maxBytes: 200 * KIB });
  const oldest = new Uint8Array(64 * KIB);
  pool.give(oldest);
  pool.give(new Uint8Array(64 * KIB));
  pool.give(new Uint8Array(64 * KIB)); // a third: over maxBuffers, the oldest makes room
  assert.equal(pool.spareBytes, 128 * KIB);
  assert.notEqual(pool.take(1), oldest);
  assert.notEqual(pool.take(1), oldest, "the oldest was dropped");
  const first = new Uint8Array(128 * KIB), second = new Uint8Array(128 * KIB);
  pool.give(first);
  pool.give(second); // over maxBytes: the first makes room
  assert.equal(pool.spareBytes, 128 * KIB);
  assert.equal(pool.take(128 * KIB), second);
  pool.give(new Uint8Array(256 * KIB)); // larger than maxBytes alone: never kept
  assert.equal(pool.spareBytes, 0);
  pool.clear();
  pool.give(new Uint8Array(128 * KIB).subarray(0, 64 * KIB)); // a view: its buffer is larger
  pool.give(new Uint8Array(70_000)); // not a size the pool hands out
  assert.equal(pool.spareBytes, 0);
  assert.throws(
    () => new BufferPool({ standard: 1000, maxBuffers: 1, maxBytes: 1 }),
    /multiple of 4096/,
  );
});

test("buffer pool: taking a buffer keeps the others in age order for eviction", () => {
  const pool = new BufferPool({ standard: 64 * KIB, maxBuffers: 3, maxBytes: 1024 * KIB });
  const a = new Uint8Array(64 * KIB), b = new Uint8Array(128 * KIB), c = new Uint8Array(128 * KIB);
  pool.give(a);
  pool.give(b);
  pool.give(c);
  assert.equal(pool.take(1), a); // the oldest, from the front
  pool.give(new Uint8Array(128 * KIB));
  pool.give(new Uint8Array(128 * KIB)); // full: the oldest kept one, b, makes room
  const kept = [pool.take(128 * KIB), pool.take(128 * KIB), pool.take(128 * KIB)];
  assert.ok(kept.includes(c), "c, given after b, is still kept");
  assert.ok(!kept.includes(b), "b was the oldest and made room");
});

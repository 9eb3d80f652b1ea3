/**
 * Payload copies out of a ring (payload_slab.ts): each is its own bytes, whatever happens to
 * the ring slot or to the other copies sharing its chunk; large payloads get buffers of their
 * own; a chunk that fills up is replaced, never overwritten.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { PayloadSlab, SLAB_CHUNK_BYTES, SLAB_MAX_COPY } from "../src/util/payload_slab.ts";
import { OWN_BUFFERS_ARE_COSTLY } from "../ffi/runtime_traits.ts";
import { encodeValue } from "../src/protocol/codec.ts";

function filled(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (seed + i * 7) & 0xff);
}

test("payload slab: copies stay intact while the source and the chunk are reused", () => {
  const slab = new PayloadSlab();
  const ring = new Uint8Array(SLAB_MAX_COPY + 64);
  const copies: [Uint8Array, Uint8Array][] = [];
  // Enough copies of every small size to fill several chunks.
  for (let i = 0; copies.length < 4 * SLAB_CHUNK_BYTES / 16; i++) {
    const n = (i * 37) % (SLAB_MAX_COPY + 1);
    const expected = filled(n, i);
    ring.set(expected, 3);
    copies.push([slab.copy(ring, 3, 3 + n), expected]);
    ring.fill(0xee); // the slot is reused
  }
  for (const [copy, expected] of copies) assert.deepEqual([...copy], [...expected]);
  const chunks = new Set(copies.map(([c]) => c.buffer));
  assert.ok(chunks.size > 1, "copies spread over more than one chunk");
  for (const [c] of copies) {
    assert.equal(c.byteOffset % 8, 0, "each copy starts 8-byte aligned");
    assert.ok(c.buffer.byteLength <= SLAB_CHUNK_BYTES);
  }
});

test("payload slab: a payload above the shared size gets a buffer of its own", () => {
  const slab = new PayloadSlab();
  const big = filled(SLAB_MAX_COPY + 1, 5);
  const copy = slab.copy(big, 0, big.length);
  assert.equal(copy.buffer.byteLength, big.length);
  big.fill(0);
  assert.deepEqual([...copy], [...filled(SLAB_MAX_COPY + 1, 5)]);
});

test("payload slab: an empty payload is an empty copy", () => {
  const slab = new PayloadSlab();
  assert.equal(slab.copy(new Uint8Array(4), 2, 2).length, 0);
});

test("encodeValue shares chunks only where a buffer each is costly", () => {
  const a = encodeValue(1), b = encodeValue("two");
  assert.equal(a.buffer.byteLength === SLAB_CHUNK_BYTES, OWN_BUFFERS_ARE_COSTLY);
  assert.equal(b.buffer.byteLength === SLAB_CHUNK_BYTES, OWN_BUFFERS_ARE_COSTLY);
  assert.deepEqual([...a], [0x01]);
  assert.deepEqual([...b], [0xa3, 0x74, 0x77, 0x6f]);
});

test("payload slab: a range that is not one is refused, and hands out nothing", () => {
  const slab = new PayloadSlab();
  const src = filled(64, 9);
  const before = slab.copy(src, 0, 16);
  assert.throws(() => slab.copy(src, 10, 4), RangeError);
  assert.throws(() => slab.copy(src, 0, 65), RangeError);
  assert.throws(() => slab.copy(src, -1, 4), RangeError);
  assert.throws(() => slab.copy(src, 0, NaN), RangeError);
  const after = slab.copy(src, 16, 32);
  assert.deepEqual([...before], [...filled(64, 9).subarray(0, 16)], "the earlier copy is intact");
  assert.deepEqual([...after], [...filled(64, 9).subarray(16, 32)]);
});

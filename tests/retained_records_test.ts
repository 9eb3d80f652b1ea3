/**
 * Retained ring records (`src/ring/retained_records.ts`): the consumer position a consumer
 * publishes stays at the oldest record whose work is not done, and never covers more than
 * half the ring.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { HEADER_SIZE, recordLength } from "../src/ring/layout.ts";
import { RingConsumer, type RingDescriptor, RingProducer } from "../src/ring/ring.ts";
import { initRegion } from "../src/ring/region.ts";
import { RetainedRecords } from "../src/ring/retained_records.ts";

const CAPACITY = 1024;
const BODY = 24; // records of recordLength(24) = 32 bytes
const RECORD_SIZE = recordLength(BODY);

function ring(): { bytes: Uint8Array; d: RingDescriptor; p: RingProducer; c: RingConsumer } {
  const bytes = new Uint8Array(HEADER_SIZE + 2 * 4096);
  const d = initRegion(bytes, { outboundCapacity: CAPACITY, inboundCapacity: CAPACITY }).outbound;
  return { bytes, d, p: new RingProducer(bytes, d), c: new RingConsumer(bytes, d) };
}

/** The consumer position as the producer sees it (shared memory). */
function published(bytes: Uint8Array, d: RingDescriptor): number {
  const i32 = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  return Atomics.load(i32, d.control.CONSUMER_POSITION >> 2) >>> 0;
}

function write(p: RingProducer, n: number) {
  for (let i = 0; i < n; i++) assert.ok(p.tryWrite(new Uint8Array(BODY).fill(i)), `record ${i}`);
}

/** Poll everything, retaining the records whose index is in `keep` (twice if listed twice). */
function pollRetaining(c: RingConsumer, keep: number[]): number[][] {
  const held: number[][] = [];
  let i = 0;
  c.poll(() => {
    const mine: number[] = [];
    for (const k of keep) if (k === i) mine.push(c.retain());
    held.push(mine);
    i++;
  });
  return held;
}

test("retained records: the published position stays at a retained record until it is done", () => {
  const { bytes, d, p, c } = ring();
  write(p, 4);
  const held = pollRetaining(c, [1]);
  assert.equal(c.position, 4 * RECORD_SIZE, "all four were read");
  assert.equal(published(bytes, d), RECORD_SIZE, "the producer sees record 1 still unread");
  assert.equal(c.retain(), -1, "outside a handler nothing can be retained");
  c.release(held[1][0]);
  assert.equal(published(bytes, d), 4 * RECORD_SIZE);
  c.release(held[1][0]); // a second done of the same copy changes nothing
  assert.equal(published(bytes, d), 4 * RECORD_SIZE);
});

test("retained records: two copies of one record, and records done out of order", () => {
  const { bytes, d, p, c } = ring();
  write(p, 5);
  const held = pollRetaining(c, [1, 1, 3]);
  assert.equal(held[1][0], held[1][1], "one record, two waiting copies");
  assert.equal(published(bytes, d), RECORD_SIZE);
  c.release(held[3][0]); // the later record first: the oldest still holds the position
  assert.equal(published(bytes, d), RECORD_SIZE);
  c.release(held[1][0]);
  assert.equal(published(bytes, d), RECORD_SIZE, "one copy of record 1 still waits");
  c.release(held[1][1]);
  assert.equal(published(bytes, d), 5 * RECORD_SIZE);
});

test("retained records: never more than half the ring; the oldest beyond it are let go and counted", () => {
  const { bytes, d, p, c } = ring();
  const half = CAPACITY / 2 / RECORD_SIZE; // 16 records
  write(p, 24);
  const held = pollRetaining(c, [0, 1, 2, 3]);
  // Records 0..3 retained, 24 read: 0..7 are more than half the ring behind the read end.
  const readEnd = 24 * RECORD_SIZE;
  assert.ok(
    readEnd - published(bytes, d) <= CAPACITY / 2,
    `covers ${readEnd - published(bytes, d)}`,
  );
  assert.equal(c.retained.unretained, 4);
  assert.equal(published(bytes, d), readEnd, "nothing retained is left");
  // The producer gets its space back: it can fill the ring again.
  write(p, CAPACITY / RECORD_SIZE);
  const later = pollRetaining(c, [half]); // exactly half the ring behind the read end: kept
  assert.equal(later.length, CAPACITY / RECORD_SIZE);
  c.release(held[0][0]); // done after being let go: no effect
  assert.equal(c.retained.unretained, 4);
  assert.equal(published(bytes, d), c.position - CAPACITY / 2);
  c.release(later[half][0]);
  assert.equal(published(bytes, d), c.position);
});

test("retained records: releaseAll publishes what was read", () => {
  const { bytes, d, p, c } = ring();
  write(p, 3);
  const held = pollRetaining(c, [0, 2]);
  assert.equal(published(bytes, d), 0);
  c.releaseAll();
  assert.equal(published(bytes, d), 3 * RECORD_SIZE);
  c.release(held[2][0]);
  assert.equal(published(bytes, d), 3 * RECORD_SIZE);
  assert.equal(c.retained.length, 0);
});

test("retained records: a release inside a later record's handler never moves the position back", () => {
  const { bytes, d, p, c } = ring();
  write(p, 4);
  const seen: number[] = [];
  let first = -1;
  let i = 0;
  c.poll(() => {
    if (i === 0) first = c.retain();
    if (i === 1) {
      // A delivery of record 1 writes the backlog's copy of record 0, then finds the
      // subscriber's ring full again and queues record 1 too.
      c.release(first);
      seen.push(published(bytes, d));
      c.retain();
    }
    seen.push(published(bytes, d));
    i++;
  });
  seen.push(published(bytes, d));
  for (let k = 1; k < seen.length; k++) {
    assert.ok(seen[k] >= seen[k - 1], `the position went back: ${seen.join(" -> ")}`);
  }
  assert.equal(published(bytes, d), RECORD_SIZE, "record 1 is still retained");
});

test("retained records: a ring made later never reuses a sequence number of an earlier one", () => {
  const other = new RetainedRecords(1 << 20); // another session's ring
  const oldRing = new RetainedRecords(1 << 20); // a publisher's ring, then its next session's
  const old = [0, 1, 2, 3].map((i) => oldRing.retain(i * 8, i * 8 + 8));
  other.retain(0, 8); // the other ring, made with the same base, issues a number too
  const newRing = new RetainedRecords(1 << 20);
  const fresh = newRing.retain(0, 8);
  assert.ok(!old.includes(fresh), `new ring's ${fresh} is one of the old ring's ${old}`);
  for (const s of old) newRing.release(s); // stale releases of the old ring's copies
  assert.equal(newRing.published(8), 0, "the new ring's record still waits");
});

test("retained records: a release of no integer sequence (NaN, a fraction) lets nothing go", () => {
  const retained = new RetainedRecords(1 << 20);
  const first = retained.retain(0, 8);
  retained.retain(8, 16);
  retained.release(Number.NaN);
  retained.release(first + 0.5);
  assert.equal(retained.published(16), 0, "the oldest record still waits");
  retained.release(first);
  assert.equal(retained.published(16), 8);
});

test("retained records: wrapping around and growing keeps each record's own count", () => {
  const retained = new RetainedRecords(1 << 30);
  const live: number[] = [];
  let position = 0;
  // Retain three, release the oldest two, many times: the buffer wraps; then hold 200 (it grows).
  for (let round = 0; round < 100; round++) {
    for (let k = 0; k < 3; k++) live.push(retained.retain(position, position += 8));
    retained.release(live.shift()!);
    retained.release(live.shift()!);
  }
  for (let k = 0; k < 200; k++) live.push(retained.retain(position, position += 8));
  for (const s of live.slice(0, -1)) retained.release(s);
  assert.equal(retained.published(position), position - 8, "only the newest record waits");
  retained.release(live[live.length - 1]);
  assert.equal(retained.published(position), position);
  assert.equal(retained.length, 0);
});

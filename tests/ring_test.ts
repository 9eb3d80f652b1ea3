// Ring unit tests: run with `deno test -A tests/ring_test.ts` or `bun test tests/ring_test.ts`.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  HEADER_SIZE,
  maxBodyLength,
  planRegion,
  RECORD,
  recordLength,
  RecordType,
  ringControl,
  RingId,
} from "../src/ring/layout.ts";
import {
  RingConsumer,
  RingCorruptError,
  type RingDescriptor,
  RingProducer,
} from "../src/ring/ring.ts";
import { attachRegion, initRegion, RegionError, resyncRegion } from "../src/ring/region.ts";

/** A region with a tiny outbound ring (capacity bytes), returns bytes + descriptor. */
function makeRing(capacity = 256): { bytes: Uint8Array; d: RingDescriptor } {
  const bytes = new Uint8Array(HEADER_SIZE + 2 * Math.max(capacity, 4096));
  const r = initRegion(bytes, { outboundCapacity: capacity, inboundCapacity: capacity });
  return { bytes, d: r.outbound };
}

function body(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed + i * 7) & 0xff;
  return b;
}

function drain(
  c: RingConsumer,
  limit = Infinity,
): { len: number; first: number; type: number; flags: number }[] {
  const out: { len: number; first: number; type: number; flags: number }[] = [];
  c.poll(
    (b, off, len, type, flags) => out.push({ len, first: len ? b[off] : -1, type, flags }),
    limit,
  );
  return out;
}

test("layout: record length alignment and geometry", () => {
  assert.equal(recordLength(0), 8);
  assert.equal(recordLength(1), 16);
  assert.equal(recordLength(8), 16);
  assert.equal(recordLength(9), 24);
  const g = planRegion(16 << 20);
  assert.equal(g.outboundOffset, HEADER_SIZE);
  assert.equal(g.outboundCapacity, 4 << 20);
  assert.ok(g.inboundOffset >= g.outboundOffset + g.outboundCapacity);
  const c0 = ringControl(RingId.OUTBOUND), c1 = ringControl(RingId.INBOUND);
  // producer and consumer positions on distinct cache lines
  assert.equal(
    Math.floor(c0.PRODUCER_POSITION / 64) !== Math.floor(c0.CONSUMER_POSITION / 64),
    true,
  );
  assert.ok(c1.PRODUCER_POSITION >= c0.PRODUCER_PARKED + 4);
});

test("single record round trip with type and flags", () => {
  const { bytes, d } = makeRing();
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  assert.equal(p.tryWrite(body(5, 3), RecordType.CONTROL, 0xabcd), true);
  const got: Uint8Array[] = [];
  const n = c.poll((b, off, len, type, flags) => {
    got.push(b.slice(off, off + len));
    assert.equal(type, RecordType.CONTROL);
    assert.equal(flags, 0xabcd);
  });
  assert.equal(n, 1);
  assert.deepEqual(got[0], body(5, 3));
  assert.equal(c.poll(() => assert.fail("nothing more")), 0);
  assert.equal(c.position, p.position);
});

test("tryClaim returns contiguous in-place slot; commit less than claimed", () => {
  const { bytes, d } = makeRing();
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  const at = p.tryClaim(40);
  assert.ok(at >= d.dataOffset + RECORD.HEADER_SIZE && at + 40 <= d.dataOffset + d.capacity);
  assert.equal(at % 8, 0);
  bytes.set([9, 8, 7], at);
  p.commit(3);
  assert.equal(p.position, recordLength(3));
  assert.throws(() => p.commit(), /nothing claimed/);
  const at2 = p.tryClaim(10);
  assert.throws(() => p.tryClaim(1), /not committed/);
  assert.throws(() => p.commit(11), RangeError);
  p.abort();
  assert.equal(p.position, recordLength(3)); // abort published nothing
  void at2;
  const recs: number[][] = [];
  c.poll((b, off, len) => recs.push([...b.subarray(off, off + len)]));
  assert.deepEqual(recs, [[9, 8, 7]]);
});

test("full ring: tryWrite fails, then succeeds after consumption", () => {
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  let n = 0;
  while (p.tryWrite(body(24, n))) n++; // 32 bytes per record
  assert.equal(n, 256 / 32);
  assert.equal(p.freeBytes(), 0);
  assert.equal(p.tryClaim(0), -1);
  assert.equal(drain(c, 1).length, 1);
  assert.equal(p.tryWrite(body(24, 99)), true);
  assert.equal(p.tryWrite(body(24, 99)), false);
  const all = drain(c);
  assert.equal(all.length, n);
  assert.equal(all[n - 1].first, body(24, 99)[0]);
});

test("wrap inserts padding and records stay contiguous", () => {
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  // 200 bytes used by 5 records of 40; consume them; next 64-byte record cannot fit in 56 left.
  for (let i = 0; i < 5; i++) assert.ok(p.tryWrite(body(32, i)));
  assert.equal(drain(c).length, 5);
  const at = p.tryClaim(56); // needs 64 bytes, 56 to the end -> padding + slot at index 0
  assert.equal(at, d.dataOffset + RECORD.HEADER_SIZE);
  bytes.set(body(56, 42), at);
  p.commit();
  const got: Uint8Array[] = [];
  assert.equal(c.poll((b, off, len) => got.push(b.slice(off, off + len))), 1);
  assert.deepEqual(got[0], body(56, 42));
  assert.equal(c.position, 256 + 64);
});

test("padding is published even when the claim then fails; record fits after drain", () => {
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  for (let i = 0; i < 3; i++) assert.ok(p.tryWrite(body(56, i))); // 3 x 64 = 192
  assert.equal(drain(c, 1).length, 1); // head at 64
  // 200-byte body needs 208; 64 to end -> padding (64) then needs 208 at index 0 but head at 64
  assert.equal(p.tryClaim(200), -1);
  assert.equal(p.position, 256); // padding published
  assert.equal(drain(c).length, 2);
  assert.ok(p.tryClaim(200) > 0);
  p.commit();
  const recs = drain(c);
  assert.equal(recs.length, 1);
  assert.equal(recs[0].len, 200);
});

test("exact capacity edge cases: record as large as the ring", () => {
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  assert.equal(p.maxBodyLength, maxBodyLength(256));
  assert.throws(() => p.tryClaim(256 - 7), RangeError);
  assert.ok(p.tryWrite(body(248, 1))); // exactly 256 bytes
  assert.equal(p.freeBytes(), 0);
  assert.equal(p.tryWrite(new Uint8Array(0)), false);
  assert.deepEqual(drain(c).map((r) => r.len), [248]);
  // now at index 0 again (position 256): fill exactly with two halves
  assert.ok(p.tryWrite(body(120, 2)));
  assert.ok(p.tryWrite(body(120, 3)));
  assert.equal(p.tryWrite(new Uint8Array(0)), false);
  assert.deepEqual(drain(c).map((r) => r.len), [120, 120]);
  // off-index full-size record: padding first, then fits after the consumer drains it
  assert.ok(p.tryWrite(body(0, 0))); // 8 bytes, index now 8
  assert.deepEqual(drain(c).map((r) => r.len), [0]);
  assert.equal(p.tryClaim(248), -1); // padding of 248 written, record does not fit yet
  assert.equal(drain(c).length, 0); // only padding
  assert.ok(p.tryWrite(body(248, 5)));
  assert.deepEqual(drain(c).map((r) => r.first), [body(248, 5)[0]]);
});

test("zero-length records and batch poll with limit", () => {
  const { bytes, d } = makeRing(1024);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  for (let i = 0; i < 20; i++) assert.ok(p.tryWrite(body(i % 3 === 0 ? 0 : i, i)));
  assert.equal(drain(c, 7).length, 7);
  assert.equal(drain(c, 7).length, 7);
  assert.equal(drain(c, 100).length, 6);
  assert.equal(drain(c).length, 0);
});

test("many wraps with varying sizes keep order and content", () => {
  const { bytes, d } = makeRing(512);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  let sent = 0, recv = 0;
  let x = 12345;
  const rnd = () => (x = (x * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const lens: number[] = [];
  for (let round = 0; round < 20000; round++) {
    const n = Math.floor(rnd() * 200);
    if (p.tryWrite(body(n, sent))) {
      lens.push(n);
      sent++;
    }
    if (rnd() < 0.5) {
      c.poll((b, off, len) => {
        assert.equal(len, lens[recv]);
        if (len) assert.equal(b[off], body(len, recv)[0]);
        if (len) assert.equal(b[off + len - 1], body(len, recv)[len - 1]);
        recv++;
      }, 1 + Math.floor(rnd() * 5));
    }
  }
  drain(c);
  recv = sent; // drain covered the rest
  assert.ok(sent > 5000);
});

test("u32 position wrap-around (positions near 2^32)", () => {
  const { bytes, d } = makeRing(256);
  const i32 = new Int32Array(bytes.buffer);
  const start = 0xffff_ff00; // 256 bytes before 2^32
  Atomics.store(i32, d.control.PRODUCER_POSITION >> 2, start | 0);
  Atomics.store(i32, d.control.CONSUMER_POSITION >> 2, start | 0);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  let sent = 0, recv = 0;
  for (let i = 0; i < 100; i++) {
    while (p.tryWrite(body(20, sent))) sent++;
    c.poll((b, off, len) => {
      assert.equal(len, 20);
      assert.equal(b[off], body(20, recv)[0]);
      recv++;
    });
  }
  assert.equal(recv, sent);
  assert.ok(p.position < start); // wrapped
});

test("handler exception: record counts as consumed, position published", () => {
  const { bytes, d } = makeRing();
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  p.tryWrite(body(4, 1));
  p.tryWrite(body(4, 2));
  assert.throws(() =>
    c.poll(() => {
      throw new Error("boom");
    }), /boom/);
  assert.equal(drain(c).length, 1);
});

test("consumer detects obvious corruption with typed errors", () => {
  const { bytes, d } = makeRing(256);
  const i32 = new Int32Array(bytes.buffer);
  const P = d.control.PRODUCER_POSITION >> 2;
  const c = new RingConsumer(bytes, d);
  Atomics.store(i32, P, 512);
  assert.throws(
    () => c.poll(() => {}),
    (e: unknown) => e instanceof RingCorruptError && e.reason === "producer-position-past-capacity",
  );
  Atomics.store(i32, P, 12);
  assert.throws(
    () => c.poll(() => {}),
    (e: unknown) => e instanceof RingCorruptError && e.reason === "producer-position-misaligned",
  );
  Atomics.store(i32, P, 16); // garbage zeroed memory: type 0
  assert.throws(
    () => c.poll(() => {}),
    (e: unknown) => e instanceof RingCorruptError && e.reason === "record-type-invalid",
  );
  // producer going backwards
  const { bytes: b2, d: d2 } = makeRing(256);
  const p2 = new RingProducer(b2, d2), c2 = new RingConsumer(b2, d2);
  p2.tryWrite(body(8, 1));
  p2.tryWrite(body(8, 1));
  assert.equal(c2.available(), 32);
  Atomics.store(new Int32Array(b2.buffer), d2.control.PRODUCER_POSITION >> 2, 16);
  assert.throws(
    () => c2.poll(() => {}),
    (e: unknown) => e instanceof RingCorruptError && e.reason === "producer-position-backwards",
  );
});

test("producer distrusts a hostile consumer position", () => {
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d);
  p.tryWrite(body(8, 1));
  Atomics.store(new Int32Array(bytes.buffer), d.control.CONSUMER_POSITION >> 2, 4096);
  assert.throws(
    () => p.freeBytes(),
    (e: unknown) => e instanceof RingCorruptError && e.reason === "consumer-position-invalid",
  );
});

test("region: init bumps epoch, guest attach validates, resync after reset", () => {
  const bytes = new Uint8Array(1 << 16);
  assert.throws(
    () => attachRegion(bytes, "guest"),
    (e: unknown) => e instanceof RegionError && e.reason === "bad-magic",
  );
  const h1 = initRegion(bytes, { pid: 1 });
  const g1 = attachRegion(bytes, "guest", { pid: 2 });
  assert.equal(g1.epoch, h1.epoch);
  assert.equal(h1.peerAttached(), true);
  assert.equal(g1.peerAttached(), true);
  assert.deepEqual(g1.tx, h1.rx);
  assert.deepEqual(g1.rx, h1.tx);
  // traffic, then host resets
  const gp = new RingProducer(bytes, g1.tx);
  gp.tryWrite(body(10, 1));
  const h2 = initRegion(bytes);
  assert.equal(h2.epoch, h1.epoch + 1);
  assert.equal(g1.epochChanged(), true);
  assert.equal(h2.peerAttached(), false);
  const g2 = resyncRegion(g1)!;
  assert.equal(g2.epoch, h2.epoch);
  assert.equal(new RingProducer(bytes, g2.tx).position, 0);
  assert.equal(h2.peerAttached(), true);
  // a tampered header is rejected with a reason
  const view = new DataView(bytes.buffer);
  view.setUint32(28, 3, true); // outbound capacity not a power of two
  assert.throws(
    () => attachRegion(bytes, "guest"),
    (e: unknown) => e instanceof RegionError && e.reason === "bad-geometry",
  );
  view.setUint32(16, 12345, true);
  assert.throws(
    () => attachRegion(bytes, "guest"),
    (e: unknown) => e instanceof RegionError && e.reason === "size-mismatch",
  );
  view.setUint32(8, 1, true); // initialising
  assert.equal(resyncRegion(g2), null);
});

test("canClaim matches tryClaim, including the padding needed at the wrap", () => {
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  let x = 99;
  const rnd = () => (x = (x * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let i = 0; i < 5000; i++) {
    const len = Math.floor(rnd() * 200);
    const predicted = p.canClaim(len);
    const at = p.tryClaim(len);
    assert.equal(at >= 0, predicted, `step ${i} len ${len}`);
    if (at >= 0) p.commit();
    if (rnd() < 0.6) c.poll(() => {}, 1 + Math.floor(rnd() * 3));
  }
});

test("producer-side parking: Doorbell/Parker with sleeper 'producer' use the producer words", async () => {
  const { Doorbell, Parker } = await import("../src/ring/doorbell.ts");
  const { bytes, d } = makeRing(256);
  const p = new RingProducer(bytes, d), c = new RingConsumer(bytes, d);
  while (p.tryWrite(body(24, 1)));
  let rang = 0;
  const spaceBell = new Doorbell(bytes, d, () => void rang++, "producer");
  const parker = new Parker(bytes, d, () => new Promise((r) => setTimeout(r, 1)), {
    sleeper: "producer",
    spinIterations: 1,
  });
  const waiting = parker.waitForData(() => p.canClaim(24), 5000);
  // the producer has announced itself parked in PRODUCER_PARKED; consumer frees space and rings
  const i32 = new Int32Array(bytes.buffer);
  assert.equal(Atomics.load(i32, d.control.PRODUCER_PARKED >> 2), 1);
  assert.equal(Atomics.load(i32, d.control.CONSUMER_PARKED >> 2), 0);
  c.poll(() => {}, 1);
  assert.equal(spaceBell.notify(), true);
  assert.equal(await waiting, true);
  assert.equal(rang, 1);
  assert.equal(Atomics.load(i32, d.control.RING_COUNT >> 2), 0); // only data rings are counted there
});

// Hostile-producer fuzzer for the ring consumer (and hostile-consumer checks for the producer).
// Seeded; bounded in time. Run: `deno test -A tests/ring_fuzz_test.ts` / `bun test tests/ring_fuzz_test.ts`.
// Set VBUS_FUZZ_SEED to reproduce a run, VBUS_FUZZ_MS to change the time budget per test.
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import {
  CONTROL_BLOCK_SIZE,
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

const SEED = Number(process.env.VBUS_FUZZ_SEED ?? 0x5eed1234) >>> 0;
const BUDGET_MS = Number(process.env.VBUS_FUZZ_MS ?? 4000);

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const GUARD = 4096;

/**
 * [control block | guard | ring data | guard]. Guards are filled with bytes that parse as
 * valid zero-length DATA records, so a consumer straying outside the ring would deliver them
 * (caught by the handler bounds check) instead of failing loudly.
 */
class Harness {
  readonly bytes: Uint8Array;
  readonly d: RingDescriptor;
  readonly i32: Int32Array;
  readonly dv: DataView;
  private guardSnapshot: Uint8Array;
  private controlSnapshot: Uint8Array;
  constructor(readonly capacity: number) {
    const dataOffset = CONTROL_BLOCK_SIZE + GUARD;
    this.bytes = new Uint8Array(dataOffset + capacity + GUARD);
    // A control block at offset 0 (ring id OUTBOUND's offsets shifted to 0).
    const c = ringControl(RingId.OUTBOUND);
    const base = c.PRODUCER_POSITION;
    const control = Object.fromEntries(
      Object.entries(c).map(([k, v]) => [k, v - base]),
    ) as unknown as RingDescriptor["control"];
    this.d = { dataOffset, capacity, control };
    this.i32 = new Int32Array(this.bytes.buffer);
    this.dv = new DataView(this.bytes.buffer);
    for (const start of [CONTROL_BLOCK_SIZE, dataOffset + capacity]) {
      for (let o = start; o < start + GUARD; o += 8) {
        this.dv.setUint32(o, 0, true);
        this.dv.setUint16(o + 4, RecordType.DATA, true);
        this.dv.setUint16(o + 6, 0xfeed, true);
      }
    }
    this.guardSnapshot = this.outside();
    this.controlSnapshot = new Uint8Array(0);
  }
  outside(): Uint8Array {
    const b = this.bytes, end = this.d.dataOffset + this.capacity;
    const out = new Uint8Array(GUARD * 2);
    out.set(b.subarray(CONTROL_BLOCK_SIZE, this.d.dataOffset));
    out.set(b.subarray(end, end + GUARD), GUARD);
    return out;
  }
  /** Snapshot the control block minus the consumer position word. */
  snapControl(): void {
    this.controlSnapshot = this.controlMinusConsumer();
  }
  private controlMinusConsumer(): Uint8Array {
    const s = this.bytes.slice(0, CONTROL_BLOCK_SIZE);
    s.fill(0, this.d.control.CONSUMER_POSITION, this.d.control.CONSUMER_POSITION + 4);
    return s;
  }
  assertUntouched(): void {
    assert.deepEqual(this.outside(), this.guardSnapshot, "consumer wrote outside the ring");
    assert.deepEqual(
      this.controlMinusConsumer(),
      this.controlSnapshot,
      "consumer wrote a control word it does not own",
    );
  }
  get producerPos(): number {
    return Atomics.load(this.i32, this.d.control.PRODUCER_POSITION >> 2) >>> 0;
  }
  set producerPos(v: number) {
    Atomics.store(this.i32, this.d.control.PRODUCER_POSITION >> 2, v | 0);
  }
  set consumerPos(v: number) {
    Atomics.store(this.i32, this.d.control.CONSUMER_POSITION >> 2, v | 0);
  }
  reset(pos: number): void {
    this.bytes.fill(0, this.d.dataOffset, this.d.dataOffset + this.capacity);
    this.producerPos = pos;
    this.consumerPos = pos;
  }
}

type Outcome = { delivered: number; corrupt: RingCorruptError | null };

/**
 * Poll until the ring is empty or corrupt, checking every delivered view is inside the ring
 * and that the whole drain is bounded (no hang). `mutate` may scribble during the handler.
 */
function drainChecked(
  h: Harness,
  c: RingConsumer,
  rnd: () => number,
  mutate?: () => void,
): Outcome {
  const lo = h.d.dataOffset + RECORD.HEADER_SIZE, hi = h.d.dataOffset + h.capacity;
  const maxRecords = h.capacity / RECORD.ALIGNMENT;
  let delivered = 0;
  h.snapControl();
  for (let polls = 0;; polls++) {
    // A sane consumer needs at most capacity/8 records per lap; allow a few laps of refill.
    assert.ok(polls <= 4 * maxRecords + 4, "consumer did not terminate");
    let n: number;
    try {
      n = c.poll((bytes, off, len, type, flags) => {
        assert.equal(bytes, h.bytes);
        assert.ok(Number.isInteger(off) && Number.isInteger(len), "non-integer view");
        assert.ok(
          off >= lo && off + len <= hi,
          `view [${off}, ${off + len}) outside ring [${lo}, ${hi})`,
        );
        assert.equal((off - lo) % RECORD.ALIGNMENT, 0, "misaligned body");
        assert.notEqual(flags, 0xfeed, "delivered a guard record");
        assert.ok(
          type === RecordType.DATA || type === RecordType.CONTROL,
          `delivered type ${type}`,
        );
        // touch the whole view: reads must stay inside the ring
        let sum = 0;
        for (let i = off; i < off + len; i += 61) sum += bytes[i];
        void sum;
        if (mutate) {
          mutate();
          h.snapControl(); // the mutator may change producer-owned words legitimately
        }
        delivered++;
      }, 1 + Math.floor(rnd() * 64));
    } catch (e) {
      if (e instanceof RingCorruptError) {
        h.assertUntouched();
        return { delivered, corrupt: e };
      }
      throw e; // anything else (TypeError, RangeError, assertion) is a bug
    }
    h.assertUntouched();
    if (n === 0) {
      // n === 0 can also mean only padding was consumed; stop when fully caught up.
      let avail: number;
      try {
        avail = c.available();
      } catch (e) {
        if (e instanceof RingCorruptError) return { delivered, corrupt: e };
        throw e;
      }
      if (avail === 0) return { delivered, corrupt: null };
    }
  }
}

function fillValid(h: Harness, p: RingProducer, rnd: () => number, count: number): number[] {
  const lens: number[] = [];
  for (let i = 0; i < count; i++) {
    const len = rnd() < 0.2 ? 0 : Math.floor(rnd() * Math.min(300, p.maxBodyLength));
    const at = p.tryClaim(
      len,
      rnd() < 0.1 ? RecordType.CONTROL : RecordType.DATA,
      Math.floor(rnd() * 0xfeed),
    );
    if (at < 0) break;
    for (let j = 0; j < len; j++) h.bytes[at + j] = (i + j) & 0xff;
    const commitLen = rnd() < 0.2 ? Math.floor(rnd() * (len + 1)) : len;
    p.commit(commitLen);
    lens.push(commitLen);
  }
  return lens;
}

function within(
  budget: number,
  body: (rnd: () => number, iter: number) => void,
  seed: number,
): number {
  const rnd = mulberry32(seed);
  const t0 = performance.now();
  let iter = 0;
  while (performance.now() - t0 < budget) {
    for (let k = 0; k < 50; k++) body(rnd, iter++);
  }
  console.log(`  fuzz seed 0x${(seed >>> 0).toString(16)}: ${iter} cases`);
  return iter;
}

const CAPS = [64, 128, 256, 1024, 4096];

test("fuzz: valid streams are delivered exactly (no false positives)", () => {
  const iters = within(BUDGET_MS / 4, (rnd, iter) => {
    const h = new Harness(CAPS[iter % CAPS.length]);
    const start = rnd() < 0.3
      ? (0x1_0000_0000 - 8 * Math.floor(rnd() * 64)) >>> 0
      : 8 * Math.floor(rnd() * 1000);
    h.reset(start);
    const p = new RingProducer(h.bytes, h.d), c = new RingConsumer(h.bytes, h.d);
    for (let round = 0; round < 4; round++) {
      const lens = fillValid(h, p, rnd, 1 + Math.floor(rnd() * 40));
      const got: number[] = [];
      c.poll((_b, _o, len) => void got.push(len));
      assert.deepEqual(got, lens);
    }
  }, SEED);
  assert.ok(iters > 200, `only ${iters} cases`);
});

test("fuzz: random corruption of records and positions", () => {
  let corrupt = 0, clean = 0;
  const iters = within(BUDGET_MS, (rnd, iter) => {
    const h = new Harness(CAPS[iter % CAPS.length]);
    h.reset(8 * Math.floor(rnd() * 100000));
    const p = new RingProducer(h.bytes, h.d);
    const c = new RingConsumer(h.bytes, h.d);
    fillValid(h, p, rnd, 1 + Math.floor(rnd() * 30));
    if (rnd() < 0.5) c.poll(() => {}, Math.floor(rnd() * 3)); // consumer mid-stream
    const mutations = 1 + Math.floor(rnd() * 6);
    for (let m = 0; m < mutations; m++) {
      const kind = Math.floor(rnd() * 7);
      const dataAt = h.d.dataOffset + 8 * Math.floor(rnd() * (h.capacity / 8));
      switch (kind) {
        case 0: // flip a random byte in the ring
          h.bytes[h.d.dataOffset + Math.floor(rnd() * h.capacity)] ^= 1 << Math.floor(rnd() * 8);
          break;
        case 1: // random 32-bit length at a record-aligned spot
          h.dv.setUint32(
            dataAt,
            rnd() < 0.5 ? Math.floor(rnd() * 0x1_0000_0000) : Math.floor(rnd() * 2 * h.capacity),
            true,
          );
          break;
        case 2: // random type
          h.dv.setUint16(dataAt + 4, Math.floor(rnd() * 0x10000), true);
          break;
        case 3: // producer position: anything at all
          h.producerPos = Math.floor(rnd() * 0x1_0000_0000);
          break;
        case 4: // producer position: small move either way, maybe misaligned
          h.producerPos = h.producerPos + Math.floor(rnd() * 2 * h.capacity) - h.capacity +
            (rnd() < 0.3 ? Math.floor(rnd() * 8) : 0);
          break;
        case 5: // padding record somewhere
          h.dv.setUint32(dataAt, Math.floor(rnd() * h.capacity), true);
          h.dv.setUint16(dataAt + 4, RecordType.PADDING, true);
          break;
        case 6: // random bytes over a whole stretch
          for (let i = 0; i < 32; i++) {
            h.bytes[h.d.dataOffset + Math.floor(rnd() * h.capacity)] = Math.floor(rnd() * 256);
          }
          break;
      }
    }
    const r = drainChecked(h, c, rnd);
    if (r.corrupt) corrupt++;
    else clean++;
  }, SEED ^ 0xa5a5a5a5);
  assert.ok(iters > 500, `only ${iters} cases`);
  assert.ok(corrupt > 0 && clean > 0, `corrupt ${corrupt}, clean ${clean}`);
});

test("fuzz: targeted header attacks are reported with the right reason", () => {
  const iters = within(BUDGET_MS / 2, (rnd, iter) => {
    const cap = CAPS[iter % CAPS.length];
    const h = new Harness(cap);
    const start = 8 * Math.floor(rnd() * 10000);
    h.reset(start);
    const p = new RingProducer(h.bytes, h.d);
    const c = new RingConsumer(h.bytes, h.d);
    // one valid record so that head is at a random index, consume it
    p.tryWrite(new Uint8Array(Math.floor(rnd() * (cap / 2))));
    c.poll(() => {});
    const head = c.position;
    const index = head & (cap - 1);
    const toEnd = cap - index;
    const at = h.d.dataOffset + index;
    const avail = 8 * (1 + Math.floor(rnd() * (cap / 8)));
    const setRec = (len: number, type: number) => {
      h.dv.setUint32(at, len >>> 0, true);
      h.dv.setUint16(at + 4, type, true);
    };
    const kind = iter % 8;
    let expect: string;
    switch (kind) {
      case 0: // length runs past the end of the ring
        h.producerPos = head + Math.min(avail, toEnd);
        setRec(toEnd - 8 + 1 + Math.floor(rnd() * cap), RecordType.DATA);
        expect = "record-length-invalid|record-past-producer-position|record-past-ring-end";
        break;
      case 1: // huge length
        h.producerPos = head + avail;
        setRec(0xffff_ffff - Math.floor(rnd() * 1000), RecordType.DATA);
        expect = "record-length-invalid";
        break;
      case 2: // length past what the producer published
        h.producerPos = head + 8;
        setRec(1 + Math.floor(rnd() * (cap - 8)), RecordType.DATA);
        expect = "record-past-producer-position";
        break;
      case 3: // producer position backwards
        h.producerPos = head - 8 * (1 + Math.floor(rnd() * 1000));
        expect = "producer-position-backwards";
        break;
      case 4: // producer position too far ahead
        h.producerPos = head + cap + 8 * (1 + Math.floor(rnd() * 1000));
        expect = "producer-position-past-capacity";
        break;
      case 5: // misaligned producer position
        h.producerPos = head + 1 + Math.floor(rnd() * 7);
        expect = "producer-position-misaligned";
        break;
      case 6: { // bad type
        h.producerPos = head + Math.min(avail, toEnd);
        const bad = [0, 4, 5, 0xff, 0xffff, 0x100][Math.floor(rnd() * 6)];
        setRec(0, bad);
        expect = "record-type-invalid";
        break;
      }
      default: // padding not reaching the end of the ring
        if (toEnd <= 8) {
          h.producerPos = head + 1;
          expect = "producer-position-misaligned";
          break;
        }
        h.producerPos = head + toEnd;
        setRec(Math.floor(rnd() * (toEnd - 8 - 8) / 8) * 8, RecordType.PADDING);
        expect = "padding-not-at-end";
    }
    const r = drainChecked(h, c, rnd);
    assert.ok(r.corrupt, `case ${kind}: expected ${expect}, got clean`);
    assert.match(r.corrupt!.reason, new RegExp(`^(${expect})$`), `case ${kind}`);
    assert.equal(r.delivered, 0);
    assert.equal(c.position, head, "consumer must not advance past a bad record");
  }, SEED ^ 0x0f0f0f0f);
  assert.ok(iters > 500, `only ${iters} cases`);
});

test("fuzz: producer scribbles while the consumer's handler runs", () => {
  const iters = within(BUDGET_MS / 2, (rnd, iter) => {
    const h = new Harness(CAPS[iter % CAPS.length]);
    h.reset(8 * Math.floor(rnd() * 100000));
    const p = new RingProducer(h.bytes, h.d);
    const c = new RingConsumer(h.bytes, h.d);
    fillValid(h, p, rnd, 5 + Math.floor(rnd() * 30));
    const mutate = () => {
      const r = rnd();
      if (r < 0.5) {
        // flip bytes anywhere in the ring, including headers of the current and later records
        for (let i = 0; i < 4; i++) {
          h.bytes[h.d.dataOffset + Math.floor(rnd() * h.capacity)] ^= 0xff;
        }
      } else if (r < 0.7) {
        h.dv.setUint32(
          h.d.dataOffset + 8 * Math.floor(rnd() * (h.capacity / 8)),
          Math.floor(rnd() * 0x1_0000_0000),
          true,
        );
      } else if (r < 0.85) {
        h.producerPos = h.producerPos + 8 * (Math.floor(rnd() * 9) - 4);
      } else {
        // keep producing valid records into whatever space there is
        try {
          fillValid(h, p, rnd, 2);
        } catch (e) {
          if (!(e instanceof RingCorruptError)) throw e;
        }
      }
    };
    drainChecked(h, c, rnd, mutate);
  }, SEED ^ 0x3c3c3c3c);
  assert.ok(iters > 300, `only ${iters} cases`);
});

test("fuzz: producer never writes outside the ring whatever the consumer position says", () => {
  const iters = within(BUDGET_MS / 4, (rnd, iter) => {
    const h = new Harness(CAPS[iter % CAPS.length]);
    h.reset(8 * Math.floor(rnd() * 100000));
    const p = new RingProducer(h.bytes, h.d);
    const c = new RingConsumer(h.bytes, h.d);
    const guards = h.outside();
    for (let step = 0; step < 20; step++) {
      if (rnd() < 0.3) {
        h.consumerPos = rnd() < 0.5
          ? Math.floor(rnd() * 0x1_0000_0000)
          : p.position - 8 * Math.floor(rnd() * (h.capacity / 4));
      }
      try {
        const len = Math.floor(rnd() * (h.capacity / 2));
        const at = p.tryClaim(len);
        if (at >= 0) {
          assert.ok(
            at >= h.d.dataOffset + 8 && at + len <= h.d.dataOffset + h.capacity,
            "claim outside ring",
          );
          h.bytes.fill(0xab, at, at + len);
          p.commit();
        }
      } catch (e) {
        if (!(e instanceof RingCorruptError)) throw e;
        assert.equal(e.reason, "consumer-position-invalid");
        p.abort();
      }
      assert.deepEqual(h.outside(), guards);
    }
    void c;
  }, SEED ^ 0x77777777);
  assert.ok(iters > 200, `only ${iters} cases`);
});

test("fuzz: record length arithmetic never overflows", () => {
  // recordLength is only called on validated lengths; check the boundary values directly.
  assert.equal(recordLength((1 << 30) - 8), 1 << 30);
  const h = new Harness(64);
  h.reset(0);
  const c = new RingConsumer(h.bytes, h.d);
  for (const len of [0x7fff_fff8, 0x8000_0000, 0xffff_fff8, 0xffff_ffff, 57]) {
    h.dv.setUint32(h.d.dataOffset, len, true);
    h.dv.setUint16(h.d.dataOffset + 4, RecordType.DATA, true);
    h.producerPos = 64;
    const r = drainChecked(h, c, mulberry32(len));
    assert.ok(r.corrupt, `len ${len}`);
  }
  // 56 is the exact maximum for a 64-byte ring: a valid record filling the whole ring
  h.dv.setUint32(h.d.dataOffset, 56, true);
  const ok = drainChecked(h, c, mulberry32(56));
  assert.equal(ok.corrupt, null);
  assert.equal(ok.delivered, 1);
});

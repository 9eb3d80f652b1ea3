/**
 * RingChannel's `reuseFrames` (what the broker uses): one frame object for every record, with
 * the same checks as `parseFrameAt`, so a hostile record is refused exactly as before and each
 * frame's fields are those of its own record. Real region, real rings.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import { RingProducer } from "../src/ring/ring.ts";
import { RingChannel } from "../src/shm/ring_channel.ts";
import { encodeFrame, type Frame, FrameHeader } from "../src/protocol/frame.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { Op } from "../src/protocol/ops.ts";

function setup() {
  const shared = new Uint8Array(1 << 16);
  const host = initRegion(shared);
  const guest = attachRegion(shared, "guest");
  const seen: { op: number; head: number[]; payload: number[]; same: boolean }[] = [];
  const errors: string[] = [];
  let last: Frame | undefined;
  const channel = new RingChannel(host, {
    ringDoorbell: () => {},
    reuseFrames: true,
    onFrame: (f: Frame) => {
      seen.push({ op: f.op, head: [...f.head], payload: [...f.payload], same: f === last });
      last = f;
    },
    onCorrupt: (err: Error) => errors.push(err.message),
    maxFrameBytes: 1 << 12,
  });
  const producer = new RingProducer(shared, guest.tx);
  return { channel, producer, seen, errors };
}

async function until(cond: () => boolean) {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
}

test("reuseFrames: each record's own fields, one object", async () => {
  const t = setup();
  t.channel.start();
  try {
    t.producer.tryWrite(
      encodeFrame(Op.Pub, encodeValue(["a", null, null]), new Uint8Array([1, 2])),
    );
    t.producer.tryWrite(encodeFrame(Op.Ping, encodeValue([])));
    t.producer.tryWrite(encodeFrame(Op.Pub, encodeValue(["bb", null, null]), new Uint8Array([3])));
    await until(() => t.seen.length === 3);
    assert.deepEqual(t.seen.map((s) => [s.op, s.head, s.payload]), [
      [Op.Pub, [...encodeValue(["a", null, null])], [1, 2]],
      [Op.Ping, [...encodeValue([])], []],
      [Op.Pub, [...encodeValue(["bb", null, null])], [3]],
    ]);
    assert.deepEqual(t.seen.map((s) => s.same), [false, true, true]);
    assert.deepEqual(t.errors, []);
  } finally {
    await t.channel.stop();
  }
});

for (
  const [name, mutate, message] of [
    ["bad magic", (f: Uint8Array) => (f[0] = 0), /bad frame magic/],
    ["unknown op", (f: Uint8Array) => (f[FrameHeader.OP_OFFSET] = 250), /unknown op 250/],
    [
      "lengths that do not fill the record",
      (f: Uint8Array) => (f[FrameHeader.HEAD_LENGTH_OFFSET + 3] += 1),
      /do not fill/,
    ],
    [
      "a record shorter than a frame header",
      (f: Uint8Array) => f.fill(0),
      /shorter than a frame header/,
    ],
  ] as const
) {
  test(`reuseFrames: a record with ${name} is a ring violation, as without it`, async () => {
    const t = setup();
    t.channel.start();
    try {
      let frame = encodeFrame(Op.Pub, encodeValue(["a", null, null]), new Uint8Array([1]));
      if (name.startsWith("a record shorter")) frame = new Uint8Array(FrameHeader.LENGTH - 1);
      mutate(frame);
      t.producer.tryWrite(frame);
      await until(() => t.errors.length > 0);
      assert.equal(t.seen.length, 0);
      assert.match(t.errors[0], message);
    } finally {
      await t.channel.stop();
    }
  });
}

/**
 * Ring positions published once per batch (RingChannelOptions.batchPositions, the broker's
 * rings): a record read from one ring and copied into another must never be seen consumed
 * while its copy is still unpublished. Otherwise a broker killed between the two would leave
 * the publisher believing the record was handled and the subscriber never seeing it: lost,
 * uncounted. Checked synchronously, at the moment the consumer position has been published,
 * before any microtask could publish the copies.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { attachRegion, initRegion, type Region } from "../src/ring/region.ts";
import { RingConsumer } from "../src/ring/ring.ts";
import { RingChannel, type RingChannelOptions } from "../src/shm/ring_channel.ts";
import type { Frame } from "../src/protocol/frame.ts";
import { Op } from "../src/protocol/ops.ts";

const REGION_BYTES = 1 << 16;

function options(onFrame: (f: Frame) => unknown, batchPositions: boolean): RingChannelOptions {
  return {
    ringDoorbell: () => {},
    onFrame,
    onCorrupt: (err) => {
      throw err;
    },
    maxFrameBytes: 1 << 14,
    batchPositions,
  };
}

/** A host region and the guest's view of the same memory. */
function regionPair(): { host: Region; guest: Region } {
  const bytes = new Uint8Array(REGION_BYTES);
  const host = initRegion(bytes);
  return { host, guest: attachRegion(bytes, "guest") };
}

test("batch positions: when a relay's consumer position is published, the copies it made are published too", async () => {
  const a = regionPair(); // publisher (guest of A) -> relay (host of A)
  const b = regionPair(); // relay (host of B) -> subscriber (guest of B)
  const toB: RingChannel = new RingChannel(b.host, options(() => {}, true));
  const relay = new RingChannel(
    a.host,
    options((f) => toB.tryWriteFrame(Op.Msg, f.head, f.payload), true),
  );
  const publisher = new RingChannel(a.guest, options(() => {}, false));
  const N = 10;
  for (let i = 0; i < N; i++) {
    assert.ok(publisher.tryWriteFrame(Op.Pub, new Uint8Array([0x91, i]), new Uint8Array([i])));
  }
  // The publisher's view of what the relay has consumed, read from shared memory.
  const consumedWord = new Int32Array(a.guest.bytes.buffer, 0, REGION_BYTES >> 2);
  const consumerAt = a.guest.tx.control.CONSUMER_POSITION >> 2;
  const before = Atomics.load(consumedWord, consumerAt);
  assert.ok(relay.drain());
  // Synchronously: no microtask has run since the relay published its consumer position.
  const consumed = (Atomics.load(consumedWord, consumerAt) - before) | 0;
  assert.ok(consumed > 0, "the relay published that it consumed the records");
  const subscriber = new RingConsumer(b.guest.bytes, b.guest.rx);
  const seen: number[] = [];
  subscriber.poll((bytes, offset, length) => seen.push(bytes[offset + length - 1]));
  assert.deepEqual(
    seen,
    Array.from({ length: N }, (_, i) => i),
    "every consumed record's copy is visible to the subscriber",
  );
  await Promise.all([relay.stop(), toB.stop(), publisher.stop()]);
});

test("batch positions: a copy written outside a batch is published by the end of the turn", async () => {
  const b = regionPair();
  const toB = new RingChannel(b.host, options(() => {}, true));
  assert.ok(toB.tryWriteFrame(Op.Msg, new Uint8Array([0x90]), new Uint8Array([7])));
  const subscriber = new RingConsumer(b.guest.bytes, b.guest.rx);
  assert.equal(subscriber.available(), 0, "not yet published, within the turn");
  await Promise.resolve(); // the turn's microtasks
  await new Promise((r) => setTimeout(r, 0));
  const seen: number[] = [];
  subscriber.poll((bytes, offset, length) => seen.push(bytes[offset + length - 1]));
  assert.deepEqual(seen, [7]);
  await toB.stop();
});

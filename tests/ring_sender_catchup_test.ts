/**
 * A client's outbound ring that was full once must not send every later publish of a busy
 * loop through a batch (issue 11, publisher side). Publishes that find the ring full wait
 * in batches that the sender's pump writes when room appears; a publish made after the
 * broker has made room, but before the pump's wait has ended, used to join the batches too
 * (a second copy each, for as long as the loop kept the event loop busy). Now it first
 * writes what waits and fits, then goes straight into the ring, in order. A real region and
 * rings, the broker's side read by a real RingConsumer, synchronously, in this process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import { RingConsumer } from "../src/ring/ring.ts";
import { RingChannel } from "../src/shm/ring_channel.ts";
import { RingSender } from "../src/client/ring_sender.ts";
import { PubHeads } from "../src/client/pub_heads.ts";
import { parseFrameAt } from "../src/protocol/frame.ts";
import { decodeValue } from "../src/protocol/codec.ts";

test("ring sender catch-up: after the ring was full once, a publish made once there is room goes straight in, after what waited, in order", async () => {
  const shared = new Uint8Array(1 << 16);
  initRegion(shared);
  const guest = attachRegion(shared, "guest");
  const errors: string[] = [];
  const channel = new RingChannel(guest, {
    ringDoorbell: () => {},
    onFrame: () => {},
    onCorrupt: (err: Error) => errors.push(err.message),
    maxFrameBytes: 1 << 12,
  });
  const sender = new RingSender(channel, {
    sendOversize: () => errors.push("oversize"),
  });
  // The broker's end of the client's outbound ring.
  const broker = new RingConsumer(shared, guest.tx);
  const head = new PubHeads().head("a.b", undefined, undefined);
  const seen: number[] = [];
  const read = () =>
    broker.poll((b, offset, length) => {
      seen.push(decodeValue(parseFrameAt(b, offset, length, 1 << 12).payload) as number);
    });
  try {
    // Publish (numbers 0, 1, ...) until one has to wait: the ring is full.
    let next = 0;
    const pending: Promise<void>[] = [];
    while (sender.pending === 0 && next < 100_000) {
      pending.push(sender.publish(head, next++, "a.b"));
    }
    assert.ok(sender.pending > 0, "the ring never filled");
    const waitedFrom = next - sender.pending;
    // The broker reads everything; the sender's pump has had no turn of the event loop yet.
    read();
    // This publish finds room: what waited goes first, then it, and nothing waits any more.
    pending.push(sender.publish(head, next++, "a.b"));
    assert.equal(sender.pending, 0, "a publish with room in the ring waited behind a batch");
    assert.equal(sender.tryPublish(head, next), "ok");
    next++;
    read();
    assert.deepEqual(seen, Array.from({ length: next }, (_, i) => i));
    assert.ok(waitedFrom > 0 && waitedFrom < next);
    await Promise.all(pending);
    assert.deepEqual(errors, []);
  } finally {
    sender.close();
    await channel.stop();
  }
});

/**
 * `RingChannel.drain()` (read the receive ring before acting on a port frame) reads what is in
 * the ring when it starts, and no more: a peer that keeps writing while it reads (a broker with
 * a backlog for a slow callback) held a client's event loop for as long as it went on (3 s in
 * tests/lifecycle_test.ts, every timer and pipe of that process late).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import type { Frame } from "../src/protocol/frame.ts";
import { Op } from "../src/protocol/ops.ts";
import { RingChannel } from "../src/shm/ring_channel.ts";

test("ring drain: reads what is in the ring when it starts, not what the peer writes meanwhile", async () => {
  const shared = new Uint8Array(1 << 16);
  const host = initRegion(shared);
  const guest = attachRegion(shared, "guest");
  const REFILLS = 5000; // far more than the ring holds at once
  let got = 0;
  let written = 0;
  const options = (onFrame: (frame: Frame) => void) => ({
    ringDoorbell: () => {},
    onFrame,
    onCorrupt: (err: Error) => assert.fail(`ring corrupt: ${err.message}`),
    maxFrameBytes: 1 << 20,
  });
  // The guest end reads; each frame it reads makes the host end write one more, as a peer
  // process with a backlog does while the ring has room.
  const hostEnd: RingChannel = new RingChannel(host, options(() => {}));
  const guestEnd: RingChannel = new RingChannel(
    guest,
    options(() => {
      got++;
      if (written < REFILLS && hostEnd.tryWriteFrame(Op.Ping, new Uint8Array([0x90]))) written++;
    }),
  );
  try {
    let there = 0;
    while (there < 100 && hostEnd.tryWriteFrame(Op.Ping, new Uint8Array([0x90]))) there++;
    assert.equal(there, 100);
    assert.ok(guestEnd.drain(), "drain() found the ring sound");
    assert.equal(
      got,
      there,
      `drain() read the ${there} frames there when it started (read ${got})`,
    );
    // The rest is still in the ring for the next read.
    assert.ok(guestEnd.drain());
    assert.equal(got, 2 * there);
  } finally {
    await Promise.all([hostEnd.stop(), guestEnd.stop()]);
  }
});

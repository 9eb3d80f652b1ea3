/**
 * A producer that waits for room only the consumer's retention holds (a frame larger than the
 * free half of the ring, while the consumer has read everything) gets it at once, also when
 * the consumer has been idle long enough to park in long slices: the waiting producer wakes
 * it (review of 60a4a25: it waited for the consumer's park slice to end, up to 800 ms).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import { Op } from "../src/protocol/ops.ts";
import { RingChannel } from "../src/shm/ring_channel.ts";
import { sleep } from "./fixtures/wait.ts";

/**
 * Idle times after which the consumer's park slices (50 ms, doubling to 800) have grown to their
 * longest; different ones, so that the wait does not fall just before a slice ends every time.
 */
const IDLE_MS = [2450, 2750, 3050];
/** A wake-up takes a few ms; the longest park slice is 800 ms. */
const BOUND_MS = 200;

test("ring retention: a producer waiting for room retention holds gets it at once after the consumer idled", async () => {
  const shared = new Uint8Array(1 << 18);
  const host = initRegion(shared);
  const guest = attachRegion(shared, "guest");
  const options = (onFrame: () => void, peer: () => RingChannel) => ({
    // A DOORBELL frame arrives later, on the port: a macrotask, not a call.
    ringDoorbell: (ring: number, kind: number) =>
      setTimeout(() => peer().onDoorbell(ring, kind), 0),
    onFrame,
    onCorrupt: (err: Error) => assert.fail(`ring corrupt: ${err.message}`),
    maxFrameBytes: 1 << 20,
  });
  // The host end (the broker) retains every frame it reads, as for a subscriber that reads nothing.
  const hostEnd: RingChannel = new RingChannel(
    host,
    options(() => hostEnd.retain(), () => guestEnd),
  );
  const guestEnd: RingChannel = new RingChannel(guest, options(() => {}, () => hostEnd));
  hostEnd.start();
  guestEnd.start();
  try {
    const max = guestEnd.maxFrameOut;
    const small = new Uint8Array(1000);
    const big = new Uint8Array(max - 64);
    const took: number[] = [];
    for (const idleMs of IDLE_MS) {
      // Retained frames over most of the ring (after the first attempt, behind its big frame).
      await writeWaiting(guestEnd, small, Math.floor((max * 0.9) / (small.length + 16)));
      await sleep(idleMs);
      const t0 = performance.now();
      await writeWaiting(guestEnd, big, 1);
      took.push(Math.round(performance.now() - t0));
    }
    assert.ok(
      took.every((ms) => ms < BOUND_MS),
      `the big frame fit after ${took.join(", ")} ms (each within ${BOUND_MS} ms)`,
    );
    assert.ok(hostEnd.unretained > 0, "what retention held was let go, and counted");
  } finally {
    await Promise.all([hostEnd.stop(), guestEnd.stop()]);
  }
});

/** Write `count` PING frames carrying `payload`, waiting for room as a client does. */
async function writeWaiting(ring: RingChannel, payload: Uint8Array, count: number) {
  for (let i = 0; i < count; i++) {
    for (let waits = 0; !ring.tryWriteFrame(Op.Ping, new Uint8Array([0x90]), payload); waits++) {
      assert.ok(waits < 1000, `frame ${i} of ${count} never fit`);
      await ring.waitForSpace(payload.length + 64);
    }
  }
}

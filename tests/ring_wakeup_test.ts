/**
 * A parked ring consumer woken by a DOORBELL frame goes back to polling. The port path reads
 * the ring before it acts on any port frame (`drain()`, so a port frame never overtakes what
 * was put in the ring before it), so by the time the doorbell wakes the receive loop the ring
 * is empty again. The loop used to take that for a spurious wake-up and park again at once:
 * from then on every frame needed a doorbell of its own (a socket write by the broker and a
 * read by the client per message, in a request/reply exchange 56k doorbells for 60k frames).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import { Op } from "../src/protocol/ops.ts";
import { RingChannel } from "../src/shm/ring_channel.ts";

const FRAMES = 200;
const HEAD = new Uint8Array([0x90]);

test("ring wake-up: after one doorbell, frames that follow quickly are polled, not rung", async () => {
  const shared = new Uint8Array(1 << 16);
  const host = initRegion(shared);
  const guest = attachRegion(shared, "guest");
  let doorbells = 0;
  let got = 0;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const base = {
    onCorrupt: (err: Error) => assert.fail(`ring corrupt: ${err.message}`),
    maxFrameBytes: 1 << 20,
  };
  // The host end writes; its doorbell reaches the guest as a port frame does in the client:
  // on a later turn, and after drain() has read the ring.
  const hostEnd: RingChannel = new RingChannel(host, {
    ...base,
    onFrame: () => {},
    ringDoorbell: (ring, kind) => {
      doorbells++;
      setImmediate(() => {
        guestEnd.drain();
        guestEnd.onDoorbell(ring, kind);
      });
    },
  });
  // The guest end reads; each frame it gets makes the host send the next one on the next turn,
  // far inside the guest's polling window (a request/reply exchange).
  const guestEnd: RingChannel = new RingChannel(guest, {
    ...base,
    // Long enough that a loaded machine does not make the loop park between two frames.
    spinMs: 50,
    ringDoorbell: () => {},
    onFrame: () => {
      if (++got === FRAMES) done();
      else setImmediate(() => assert.ok(hostEnd.tryWriteFrame(Op.Ping, HEAD)));
    },
  });
  hostEnd.start();
  guestEnd.start();
  const timeout = setTimeout(() => done(), 10_000);
  try {
    // Let the guest's receive loop park, so the first frame needs a doorbell.
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.ok(guestEnd.stats.parks >= 1, "the receive loop parked while the ring was empty");
    assert.ok(hostEnd.tryWriteFrame(Op.Ping, HEAD));
    await finished;
    assert.equal(got, FRAMES, `all ${FRAMES} frames arrived within 10 s`);
    assert.ok(
      doorbells < FRAMES / 10,
      `${doorbells} doorbells for ${FRAMES} frames: the woken loop must poll again, not park`,
    );
    // And once the frames stop, it parks again instead of polling on.
    const parksAtEnd = guestEnd.stats.parks;
    await new Promise((resolve) => setTimeout(resolve, 300)); // spinMs is 50
    const polls = guestEnd.stats.emptyPolls;
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.ok(guestEnd.stats.parks > parksAtEnd, "the loop parked after the last frame");
    // A parked loop polls once per park slice (50 ms, doubling); a polling one, every turn.
    const more = guestEnd.stats.emptyPolls - polls;
    assert.ok(more <= 3, `${more} empty polls in 100 ms: the loop must be parked`);
  } finally {
    clearTimeout(timeout);
    await Promise.all([hostEnd.stop(), guestEnd.stop()]);
  }
});

/**
 * A receive loop that handed its core to another process looks at its ring again as soon as it
 * has the core back, before the event loop turns. With three busy processes on two cores (a
 * requester, the broker, a replier) the process that ran meanwhile was often the peer writing
 * to this ring; waiting for the event loop first added a turn, and the other loops' polls (each
 * may give the core away again) to every hop: a request/reply through the broker took 67-76 us
 * p50 instead of 33-34 (Bun and Deno, bench/ one-way probe, 2026-12-04).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { attachRegion, initRegion } from "../src/ring/region.ts";
import { Op } from "../src/protocol/ops.ts";
import { RingChannel } from "../src/shm/ring_channel.ts";
import { IdleYield } from "../src/util/idle_yield.ts";

const FRAMES = 20;
const HEAD = new Uint8Array([0x90]);

test("ring yield: a frame written while the loop gave its core away is read before the next turn", async () => {
  const shared = new Uint8Array(1 << 16);
  const host = initRegion(shared);
  const guest = attachRegion(shared, "guest");
  const base = {
    onCorrupt: (err: Error) => assert.fail(`ring corrupt: ${err.message}`),
    maxFrameBytes: 1 << 20,
    ringDoorbell: () => {},
  };
  const hostEnd = new RingChannel(host, { ...base, onFrame: () => {} });
  // The guest's yields stand for another process taking the core: the peer writes a frame
  // while it has it, and a callback queued for the event loop's next turn marks that turn.
  let armed = true;
  let turned = false;
  let got = 0, beforeTurn = 0;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const idle = new IdleYield(() => {
    if (!armed) return;
    armed = false;
    turned = false;
    assert.ok(hostEnd.tryWriteFrame(Op.Ping, HEAD));
    setImmediate(() => (turned = true));
  });
  const guestEnd = new RingChannel(guest, {
    ...base,
    idleYield: idle,
    spinMs: 60_000, // never park: this is about the polling phase
    onFrame: () => {
      if (!turned) beforeTurn++;
      if (++got === FRAMES) done();
      // Arm again once the loop is past this frame's batch.
      else setImmediate(() => (armed = true));
    },
  });
  hostEnd.start();
  guestEnd.start();
  const timeout = setTimeout(() => done(), 10_000);
  try {
    await finished;
    assert.equal(got, FRAMES, `all ${FRAMES} frames arrived within 10 s`);
    assert.equal(
      beforeTurn,
      FRAMES,
      `${beforeTurn} of ${FRAMES} frames were read before the event loop turned after the yield`,
    );
  } finally {
    clearTimeout(timeout);
    guestEnd.stop();
    hostEnd.stop();
  }
});

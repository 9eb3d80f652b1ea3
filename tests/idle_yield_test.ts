/**
 * The idle pollers' yield policy (`src/util/idle_yield.ts`): every empty poll hands the core
 * over while yields come back late (the cores are contended), and ever fewer do while they
 * come back at once (a core to spare), never fewer than one per IDLE_YIELD_MAX_INTERVAL;
 * nothing until the FFI layer is loaded, or with VBUS_IDLE_YIELD=0.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { setImmediate } from "node:timers";
import {
  IDLE_YIELD_CONTENDED_MS,
  IDLE_YIELD_MAX_INTERVAL,
  IdleYield,
  idleYield,
} from "../src/util/idle_yield.ts";
import { loadFfi } from "../src/shm/negotiation.ts";

const POLLS = 1000;
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

/** A yield that another process's turn makes late: busy for twice the contended threshold. */
function lateYield() {
  const until = performance.now() + 2 * IDLE_YIELD_CONTENDED_MS;
  let spins = 0;
  while (performance.now() < until && spins < 1e7) spins++;
}

/** One empty poll per event-loop turn, as a receive loop does. */
async function pollTurns(idle: IdleYield, turns: number) {
  for (let i = 0; i < turns; i++) {
    idle.emptyPoll();
    await nextTurn();
  }
}

test("idle yield: every empty poll yields while the cores are contended", async () => {
  const idle = new IdleYield(lateYield);
  await pollTurns(idle, POLLS);
  assert.equal(idle.yields, POLLS);
  assert.equal(idle.contended, POLLS);
});

test("idle yield: with a core to spare, yields thin out to one per max interval", async () => {
  let calls = 0;
  const idle = new IdleYield(() => calls++);
  await pollTurns(idle, POLLS);
  assert.equal(calls, idle.yields);
  // 1, 2, 4, ... 64 polls apart: 7 yields for the first 127 polls, then one per 64.
  const fewest = 7 + Math.floor((POLLS - 127) / IDLE_YIELD_MAX_INTERVAL);
  assert.ok(idle.yields >= fewest, `${idle.yields} yields, at least ${fewest}`);
  // A preempted call counts as contended and starts again at every poll: allow for those.
  assert.ok(idle.yields <= fewest + 20 * idle.contended + 1, `${idle.yields} yields`);
});

test("idle yield: contention seen again brings back a yield per poll", async () => {
  let late = false;
  const idle = new IdleYield(() => late && lateYield());
  await pollTurns(idle, 200); // thinned out to one per 64
  const before = idle.yields;
  late = true;
  await pollTurns(idle, 200);
  // At most one interval passes before the late yield, then every poll yields.
  assert.ok(idle.yields - before >= 200 - IDLE_YIELD_MAX_INTERVAL, `${idle.yields - before}`);
});

test("idle yield: nothing until something is installed; VBUS_IDLE_YIELD=0 keeps it off", async () => {
  const idle = new IdleYield();
  idle.emptyPoll();
  assert.equal(idle.active, false);
  assert.equal(idle.yields, 0);
  let calls = 0;
  process.env.VBUS_IDLE_YIELD = "0";
  try {
    assert.equal(idle.install(() => calls++), false);
  } finally {
    delete process.env.VBUS_IDLE_YIELD;
  }
  await pollTurns(idle, 3);
  assert.equal(calls, 0);
  assert.equal(idle.install(() => calls++), true);
  await pollTurns(idle, 3);
  assert.ok(calls >= 1);
});

test("idle yield: loading the FFI layer installs sched_yield for the process's pollers", async () => {
  await loadFfi();
  assert.equal(idleYield.active, true);
  const before = idleYield.yields;
  await nextTurn();
  for (let i = 0; i < IDLE_YIELD_MAX_INTERVAL + 1; i++) {
    idleYield.emptyPoll();
    await nextTurn();
  }
  assert.ok(idleYield.yields > before, "sched_yield was called and returned");
});

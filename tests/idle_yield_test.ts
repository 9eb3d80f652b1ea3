/**
 * The idle pollers' yield policy (`src/util/idle_yield.ts`): every empty poll hands the core
 * over while yields come back late (the cores are contended), and ever fewer do while they
 * come back at once (a core to spare), never fewer than one per IDLE_YIELD_MAX_INTERVAL.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  IDLE_YIELD_CONTENDED_MS,
  IDLE_YIELD_MAX_INTERVAL,
  IdleYield,
} from "../src/util/idle_yield.ts";
import { yieldCpu } from "../ffi/mod.ts";

const POLLS = 1000;

/** A yield that another process's turn makes late: busy for twice the contended threshold. */
function lateYield() {
  const until = performance.now() + 2 * IDLE_YIELD_CONTENDED_MS;
  let spins = 0;
  while (performance.now() < until && spins < 1e7) spins++;
}

test("idle yield: every empty poll yields while the cores are contended", () => {
  const idle = new IdleYield(lateYield);
  for (let i = 0; i < POLLS; i++) idle.emptyPoll();
  assert.equal(idle.yields, POLLS);
  assert.equal(idle.contended, POLLS);
});

test("idle yield: with a core to spare, yields thin out to one per max interval", () => {
  let calls = 0;
  const idle = new IdleYield(() => calls++);
  for (let i = 0; i < POLLS; i++) idle.emptyPoll();
  assert.equal(calls, idle.yields);
  // 1, 2, 4, ... 64 polls apart: 7 yields for the first 127 polls, then one per 64.
  const fewest = 7 + Math.floor((POLLS - 127) / IDLE_YIELD_MAX_INTERVAL);
  assert.ok(idle.yields >= fewest, `${idle.yields} yields, at least ${fewest}`);
  // A preempted call counts as contended and starts again at every poll: allow a few.
  assert.ok(idle.yields <= fewest + 20 * idle.contended + 1, `${idle.yields} yields`);
});

test("idle yield: contention seen again brings back a yield per poll", () => {
  let late = false;
  const idle = new IdleYield(() => late && lateYield());
  for (let i = 0; i < 200; i++) idle.emptyPoll(); // thinned out to one per 64
  const before = idle.yields;
  late = true;
  for (let i = 0; i < 200; i++) idle.emptyPoll();
  // At most one interval passes before the late yield, then every poll yields.
  assert.ok(idle.yields - before >= 200 - IDLE_YIELD_MAX_INTERVAL, `${idle.yields - before}`);
});

test("idle yield: the default yields through sched_yield and returns", () => {
  const idle = new IdleYield();
  for (let i = 0; i < 10; i++) idle.emptyPoll();
  assert.ok(idle.yields >= 1 && idle.yields <= 10);
  yieldCpu();
});

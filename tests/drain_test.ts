import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, take } from "./helpers.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";

test("drain: a subscription drains queued messages, then ends", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const sub = host.subscribe<number>("d");
    await host.flush();
    for (let i = 0; i < 100; i++) guest.publish("d", i);
    await guest.flush();
    await sub.drain();
    const got: number[] = [];
    for await (const m of sub) got.push(m.data);
    assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => i));
    await guest.publish("d", 999);
    await guest.flush();
    assert.equal(lab.broker.stats().host.subscriptions, 0);
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("drain: bus.drain flushes publishes, ends subscriptions and closes", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const sub = host.subscribe<number>("e");
    await host.flush();
    const own = guest.subscribe("x");
    for (let i = 0; i < 50; i++) guest.publish("e", i);
    await guest.drain();
    assert.ok(guest.isClosed);
    assert.equal(await guest.closed, undefined);
    assert.ok(own.isClosed);
    assert.deepEqual(await take(sub, 50), Array.from({ length: 50 }, (_, i) => i));
    await assert.rejects(guest.publish("e", 1), (e: VbusError) => e.code === ErrorCode.Closed);
  } finally {
    await lab.close();
  }
});

test("close: pending requests reject with CLOSED and subscriptions end", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    host.subscribe("slow", { callback: () => {} });
    await host.flush();
    const pending = guest.request("slow", 1, { timeout: 10_000 });
    const sub = guest.subscribe("y");
    await guest.close();
    await assert.rejects(pending, (e: VbusError) => e.code === ErrorCode.Closed);
    await sub.closed;
  } finally {
    await lab.close();
  }
});

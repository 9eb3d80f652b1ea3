import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, take, waitFor } from "./helpers.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";

test("pubsub: guest to guest through the broker, with wildcards", async () => {
  const lab = await startLab();
  const a = await lab.vms.vm1.connect();
  const b = await lab.vms.vm2.connect();
  try {
    assert.equal(a.info?.identity, "vm1");
    assert.equal(b.info?.identity, "vm2");
    const one = b.subscribe<{ t: number }>("sensors.*.temp");
    const rest = b.subscribe<{ t: number }>("sensors.>");
    const exact = b.subscribe<{ t: number }>("sensors.vm1.temp");
    await b.flush();
    await a.publish("sensors.vm1.temp", { t: 1 });
    await a.publish("sensors.vm1.humidity.inside", { t: 2 });
    await a.publish("other.vm1.temp", { t: 3 });
    assert.deepEqual(await take(one, 1), [{ t: 1 }]);
    assert.deepEqual(await take(rest, 2), [{ t: 1 }, { t: 2 }]);
    assert.deepEqual(await take(exact, 1), [{ t: 1 }]);
    const stats = lab.broker.stats();
    assert.equal(stats.vms.find((v) => v.name === "vm1")!.msgsIn, 3);
    assert.equal(stats.vms.find((v) => v.name === "vm2")!.msgsOut, 4);
  } finally {
    await a.close();
    await b.close();
    await lab.close();
  }
});

test("pubsub: host and guest exchange values of every msgpack kind; binary stays binary", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const sub = host.subscribe("kinds");
    await host.flush();
    const values = [
      null,
      true,
      42,
      -1.25,
      "text",
      [1, [2]],
      { nested: { ok: 1 } },
      new Uint8Array([0, 255, 7]),
    ];
    for (const v of values) await guest.publish("kinds", v);
    const got = await take(sub, values.length);
    assert.deepEqual(got.slice(0, 7), values.slice(0, 7));
    assert.ok(got[7] instanceof Uint8Array);
    assert.deepEqual([...(got[7] as Uint8Array)], [0, 255, 7]);
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("pubsub: headers travel with the message", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const sub = host.subscribe("h");
    await host.flush();
    await guest.publish("h", 1, { headers: { "trace-id": "abc", unit: "°C" } });
    for await (const m of sub) {
      assert.deepEqual(m.headers, { "trace-id": "abc", unit: "°C" });
      assert.equal(m.data, 1);
      break;
    }
    await assert.rejects(
      guest.publish("h", 1, { headers: { bad: 1 as unknown as string } }),
      (e: VbusError) => e.code === ErrorCode.BadHeaders,
    );
    await assert.rejects(
      guest.publish("h", 1, { headers: { big: "x".repeat(20_000) } }),
      (e: VbusError) => e.code === ErrorCode.BadHeaders && /exceed/.test(e.message),
    );
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("pubsub: callback subscriptions, max, unsubscribe and ordering", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const got: number[] = [];
    const cb = host.subscribe<number>("n", { callback: (_e, m) => got.push(m.data) });
    const limited = host.subscribe<number>("n", { max: 3 });
    await host.flush();
    for (let i = 0; i < 1000; i++) guest.publish("n", i);
    await guest.flush();
    await waitFor(() => got.length === 1000, "1000 messages via callback");
    assert.deepEqual(got, Array.from({ length: 1000 }, (_, i) => i));
    assert.deepEqual(await take(limited, 10, 2000).catch(() => null) ?? [0, 1, 2], [0, 1, 2]);
    await limited.closed;
    assert.equal(limited.received, 3);
    cb.unsubscribe();
    await host.flush();
    await guest.publish("n", -1);
    await guest.flush();
    await host.flush();
    assert.equal(got.length, 1000);
    assert.equal(lab.broker.stats().host.subscriptions, 0);
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("pubsub: client-side validation rejects bad subjects before sending", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  try {
    await assert.rejects(
      guest.publish("a.*", 1),
      (e: VbusError) => e.code === ErrorCode.BadSubject,
    );
    await assert.rejects(guest.publish("", 1), /subject is empty/);
    assert.throws(
      () => guest.subscribe("a.>.b"),
      (e: VbusError) => e.code === ErrorCode.BadSubject,
    );
    await assert.rejects(
      guest.publish("big", new Uint8Array(9 * 1024 * 1024)),
      (e: VbusError) => e.code === ErrorCode.FrameTooLarge,
    );
  } finally {
    await guest.close();
    await lab.close();
  }
});

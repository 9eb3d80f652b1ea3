/**
 * bus.rtt(): the round trip of one PING/PONG in milliseconds, as nats.js's rtt(), on the port
 * stream and on rings; it rejects when there is no session to measure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, waitFor } from "./helpers.ts";
import { ErrorCode, VbusError } from "../src/protocol/errors.ts";

for (const shm of [false, true]) {
  test(`rtt (${shm ? "ring" : "stream"}): a positive number of milliseconds, behind what was sent before`, async () => {
    const lab = await startLab({ shm });
    try {
      const host = await lab.host();
      const guest = await lab.vms.vm1.connect();
      for (const bus of [host, guest]) {
        assert.equal(bus.dataPath, shm ? "ring" : "stream");
        const samples = [await bus.rtt(), await bus.rtt(), await bus.rtt()];
        for (const ms of samples) {
          assert.ok(Number.isFinite(ms) && ms > 0 && ms < 5000, `rtt ${ms} ms`);
        }
      }
      // A PONG answers after everything sent before its PING was handled.
      const sub = host.subscribe<number>("rtt.order");
      await host.flush();
      for (let i = 0; i < 1000; i++) guest.publish("rtt.order", i);
      await guest.rtt();
      await host.flush();
      await waitFor(() => sub.pending === 1000, "the messages sent before the PING were routed");
      await guest.close();
    } finally {
      await lab.close();
    }
  });
}

test("rtt: rejects when closed, and while reconnecting", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const bus = await lab.host({ reconnectDelay: 20 });
    await lab.broker.stop();
    await waitFor(() => !bus.isConnected, "disconnected");
    await assert.rejects(
      bus.rtt(),
      (e: unknown) => e instanceof VbusError && e.code === ErrorCode.Port,
    );
    await lab.restartBroker();
    await waitFor(() => bus.isConnected, "reconnected", 10_000);
    assert.ok(await bus.rtt() > 0);
    await bus.close();
    await assert.rejects(
      bus.rtt(),
      (e: unknown) => e instanceof VbusError && e.code === ErrorCode.Closed,
    );
  } finally {
    await lab.close();
  }
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { delay, startLab, take, waitFor } from "./helpers.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";
import type { StatusEvent } from "../src/client/status.ts";

test("reconnect: broker restart; guests and host clients reconnect and resubscribe by themselves", async () => {
  const lab = await startLab();
  const pub = await lab.vms.vm1.connect();
  const subGuest = await lab.vms.vm2.connect();
  const host = await lab.host({ reconnectDelay: 20 });
  try {
    const events: StatusEvent[] = [];
    subGuest.on("disconnected", (e) => events.push(e));
    subGuest.on("reconnected", (e) => events.push(e));
    const a = subGuest.subscribe<number>("data.>");
    const b = host.subscribe<number>("data.>");
    await Promise.all([subGuest.flush(), host.flush()]);
    await pub.publish("data.x", 1);
    assert.deepEqual(await take(a, 1), [1]);
    assert.deepEqual(await take(b, 1), [1]);
    const session = subGuest.info!.session;

    const back = [pub, subGuest, host].map((c) => new Promise((r) => c.on("reconnected", r)));
    await lab.restartBroker();
    await Promise.all(back);
    assert.notEqual(subGuest.info!.session, session, "a fresh session");
    const reconnected = events.find((e) => e.type === "reconnected");
    assert.ok(events[0].type === "disconnected");
    assert.ok(reconnected && reconnected.type === "reconnected" && reconnected.resubscribed === 1);

    // Wait until the broker routes again (it has the resubscriptions once they are flushed).
    await Promise.all([subGuest.flush(), host.flush()]);
    for (let i = 2; i <= 4; i++) await pub.publish("data.x", i);
    assert.deepEqual(await take(a, 3), [2, 3, 4], "nothing missing or duplicated");
    assert.deepEqual(await take(b, 3), [2, 3, 4]);
  } finally {
    await pub.close();
    await subGuest.close();
    await lab.close();
  }
});

test("reconnect: a VM port that disappears and comes back gets a fresh session; the others never stop", async () => {
  const lab = await startLab();
  const flaky = await lab.vms.vm1.connect({ reconnectDelay: 20, reconnectMaxDelay: 100 });
  const steady = await lab.vms.vm2.connect();
  const host = await lab.host();
  try {
    const fromSteady = host.subscribe<number>("steady");
    const toFlaky = flaky.subscribe<string>("to.flaky");
    await Promise.all([host.flush(), flaky.flush()]);
    await lab.vms.vm1.vm.stop(); // QEMU killed
    await waitFor(() => !flaky.isConnected, "flaky sees the port drop");
    await waitFor(
      () => !lab.broker.stats().vms.find((v) => v.name === "vm1")!.connected,
      "broker notices",
    );
    for (let i = 0; i < 5; i++) await steady.publish("steady", i);
    assert.deepEqual(
      await take(fromSteady, 5),
      [0, 1, 2, 3, 4],
      "vm2 keeps flowing while vm1 is down",
    );
    await lab.vms.vm1.vm.start(); // QEMU back
    await waitFor(() => flaky.isConnected, "flaky reconnected", 10_000);
    await flaky.flush();
    await host.publish("to.flaky", "welcome back");
    assert.deepEqual(await take(toFlaky, 1), ["welcome back"]);
    const vm1 = lab.broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.equal(vm1.sessions, 2);
  } finally {
    await flaky.close();
    await steady.close();
    await lab.close();
  }
});

test("reconnect: publishes while disconnected are buffered up to the bound, then rejected", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect({ reconnectBufferBytes: 2000, reconnectDelay: 20 });
  const host = await lab.host();
  try {
    const sub = host.subscribe<number>("buffered");
    await host.flush();
    await lab.vms.vm1.vm.stop();
    await waitFor(() => !guest.isConnected, "disconnected");
    let accepted = 0;
    let rejected: VbusError | undefined;
    for (let i = 0; i < 200 && !rejected; i++) {
      try {
        await guest.publish("buffered", i);
        accepted++;
      } catch (e) {
        rejected = e as VbusError;
      }
    }
    assert.ok(rejected, "the bound is enforced");
    assert.equal(rejected.code, ErrorCode.BufferFull);
    assert.match(rejected.message, /reconnect buffer \(2000 bytes\) is full/);
    assert.ok(accepted > 10 && accepted < 200, `accepted ${accepted}`);
    const reconnected = new Promise<StatusEvent>((r) => guest.on("reconnected", r));
    await lab.vms.vm1.vm.start();
    const ev = await reconnected;
    assert.equal(ev.type === "reconnected" && ev.flushed, accepted);
    assert.deepEqual(
      await take(sub, accepted),
      Array.from({ length: accepted }, (_, i) => i),
      "every accepted publish arrives once, in order",
    );
    await guest.flush();
    await host.flush();
    assert.equal(sub.pending, 0, "nothing duplicated");
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("reconnect: a flush pending when the port drops rejects instead of lying", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect({ reconnectDelay: 20 });
  try {
    // Stop the VM in the same turn as the flush: its PONG can never arrive.
    const flushing = guest.flush();
    const stopping = lab.vms.vm1.vm.stop();
    await assert.rejects(flushing, /disconnected before the broker confirmed/);
    await stopping;
    // A flush made while disconnected waits for the reconnect and then confirms.
    const later = guest.flush();
    await delay(50);
    await lab.vms.vm1.vm.start();
    await later;
    assert.ok(guest.isConnected);
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("reconnect: no reconnect when disabled; connect() fails clearly when nothing listens", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  try {
    const guest = await lab.vms.vm1.connect({ reconnect: false });
    await lab.vms.vm1.vm.stop();
    const err = await guest.closed;
    assert.match(String(err?.message), /disconnected/);
    assert.ok(guest.isClosed);
    await assert.rejects(
      lab.vms.vm1.connect({ timeout: 300 }),
      (e: VbusError) =>
        e.code === ErrorCode.Port && /could not connect within 300 ms/.test(e.message),
    );
  } finally {
    await lab.close();
  }
});

test("reconnect: a guest process restarting on a live port starts a fresh session", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const host = await lab.host();
  try {
    const first = await lab.vms.vm1.connect();
    first.subscribe("old.interest");
    await first.flush();
    assert.equal(lab.broker.stats().vms[0].subscriptions, 1);
    await first.close(); // the process exits; QEMU and the broker's socket stay up
    const second = await lab.vms.vm1.connect();
    await second.flush();
    assert.equal(lab.broker.stats().vms[0].subscriptions, 0, "old subscriptions were dropped");
    assert.equal(lab.broker.stats().vms[0].sessions, 2);
    await assert.rejects(
      host.request("old.interest", 1, { timeout: 1000 }),
      (e: VbusError) => e.code === ErrorCode.NoResponders,
    );
    await second.close();
  } finally {
    await lab.close();
  }
});

test("reconnect: a request made while disconnected is answered after the reconnect (reply goes to the new inbox)", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const host = await lab.host({ reconnectDelay: 20, reconnectMaxDelay: 100 });
  try {
    // The service lives on the same connection, so it is resubscribed before the request is sent.
    host.subscribe<number>("svc.double", { callback: (_e, m) => void m.respond(m.data * 2) });
    assert.equal((await host.request<number>("svc.double", 1, { timeout: 2000 })).data, 2);
    const down = new Promise((r) => host.on("disconnected", r));
    await lab.broker.stop();
    await down;
    // Sent while disconnected: buffered. Its reply subject must be the inbox of the session it is
    // finally sent on; the old broker's inbox means nobody hears the answer (a timeout).
    const answer = host.request<number>("svc.double", 21, { timeout: 4000 });
    await lab.restartBroker();
    assert.equal((await answer).data, 42);
  } finally {
    await lab.close();
  }
});

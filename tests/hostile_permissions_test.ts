/**
 * Hostile guests against permissions: getting the broker to publish where the guest may not,
 * and keeping a reply grant for a request it never received. (issue 9, items 5 and 15)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type Lab, startLab, waitFor } from "./helpers.ts";
import { RawChardev } from "./fixtures/raw_chardev.ts";
import { rawStreamGuest } from "./fixtures/raw_guest.ts";
import type { EndpointStats } from "../src/broker/stats.ts";
import { decodeValue, encodeValue } from "../src/protocol/codec.ts";
import { Op } from "../src/protocol/ops.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";

function vmStats(lab: Lab, name: string): EndpointStats {
  return lab.broker.stats().vms.find((v) => v.name === name)!;
}

/** How long "receives nothing" is watched before the control message proves the subscription. */
const QUIET_MS = 500;

test("hostile permissions: a request's reply subject cannot make the broker publish where the requester may not", async () => {
  const lab = await startLab({
    vms: [{ name: "vm1", permissions: { publish: ["sensors.vm1.>"] } }, "vm2"],
  });
  const host = await lab.host();
  const vm2 = await lab.vms.vm2.connect();
  const vm1 = await rawStreamGuest(() => lab.vms.vm1.vm.open());
  try {
    const got: { data: unknown; headers?: Record<string, string> }[] = [];
    vm2.subscribe("cmd.vm2.>", {
      callback: (_e, m) => got.push({ data: m.data, headers: m.headers }),
    });
    await vm2.flush();
    await vm1.hello(); // announces "no-responders"
    // Allowed subject, nobody subscribed, and a reply subject vm1 may not publish to.
    for (let i = 0; i < 3; i++) {
      vm1.send(Op.Pub, ["sensors.vm1.nobody", "cmd.vm2.reboot", null], encodeValue(i));
    }
    await vm1.ping();
    await new Promise((r) => setTimeout(r, QUIET_MS));
    assert.deepEqual([...got], [], "vm2 received nothing on cmd.vm2.> on vm1's behalf");
    await host.publish("cmd.vm2.control", "real");
    await waitFor(() => got.length > 0, "the control message reaches vm2");
    assert.deepEqual(
      got.map((m) => m.data),
      ["real"],
      "vm2's subscription works; only the real message arrived",
    );

    // Regression: a request with vm1's own inbox as reply still gets the no-responders status.
    vm1.close();
    const client = await lab.vms.vm1.connect();
    try {
      await assert.rejects(
        client.request("sensors.vm1.nobody", 1, { timeout: 3000 }),
        (e: VbusError) => e.code === ErrorCode.NoResponders,
      );
    } finally {
      await client.close();
    }
  } finally {
    vm1.close();
    await vm2.close();
    await lab.close();
  }
});

test("hostile permissions: a request dropped for a slow responder gives it no reply grant", async () => {
  const lab = await startLab({
    vms: [{ name: "vm1", permissions: { publish: ["svc.>"] } }, "vm2"],
    limits: { maxPendingBytes: 64 * 1024 },
  });
  const host = await lab.host();
  const vm2 = await rawStreamGuest(() => lab.vms.vm2.vm.open());
  // vm1's chardev is the attacker's, so its guest can stop reading for real.
  await lab.vms.vm1.vm.stop();
  const dev = await RawChardev.listen(lab.vms.vm1.vm.socketPath);
  try {
    const vm1 = await dev.nextPeer(1, 5000);
    await vm1.hello();
    vm1.send(Op.Sub, [1, "svc.x", null]);
    vm1.send(Op.Sub, [2, "bulk", null]);
    await vm1.ping();

    // vm1 stops reading; the host floods it until the kernel's socket buffer is full and the
    // broker's own queue stays above maxPendingBytes: a probe sent after a pause is dropped.
    vm1.port.pause();
    const chunk = new Uint8Array(16 * 1024);
    let backedUp = false;
    for (let round = 0; round < 50 && !backedUp; round++) {
      for (let i = 0; i < 16; i++) host.publish("bulk", chunk);
      await host.flush();
      await new Promise((r) => setTimeout(r, 100)); // let the socket take what it can
      const before = vmStats(lab, "vm1").dropped;
      await host.publish("bulk", chunk);
      await host.flush();
      backedUp = vmStats(lab, "vm1").dropped > before;
    }
    assert.ok(backedUp, "the broker drops messages for vm1 (slow consumer)");

    // vm2's request reaches the broker while vm1 is still backed up: it is dropped for vm1.
    const welcome = await vm2.hello();
    const reply = `${welcome.inbox}.t1`;
    vm2.send(Op.Sub, [1, reply, null]);
    await vm2.ping();
    const droppedBefore = vmStats(lab, "vm1").dropped;
    vm2.send(Op.Pub, ["svc.x", reply, null], encodeValue("please"));
    await vm2.ping();
    await waitFor(
      () => vmStats(lab, "vm1").dropped === droppedBefore + 1,
      "the request was dropped for vm1",
    );

    // vm1 answers the request it never got.
    vm1.send(Op.Pub, [reply, null, null], encodeValue("forged"));
    vm1.port.resume();
    const err = await vm1.waitForError(ErrorCode.PermissionDenied, 5000).catch(() => undefined);
    await vm1.ping(10_000);
    await vm2.ping();
    assert.ok(
      !vm1.messages().some((m) => m.subject === "svc.x"),
      "vm1 never received the request (it was dropped)",
    );
    const inboxPayloads = () => vm2.messages().map((m) => decodeValue(m.payload));
    assert.deepEqual(inboxPayloads(), [], "vm2's inbox got nothing from vm1");
    assert.ok(err, "vm1's publish to the reply subject was denied (PERMISSION_DENIED)");
    assert.equal(err.subject, reply);
    // vm2's inbox subscription works: an allowed publisher reaches it.
    await host.publish(reply, "real");
    await waitFor(
      () => vm2.messages().length > 0,
      "the host's message reaches vm2's inbox subscription",
    );
    assert.deepEqual(inboxPayloads(), ["real"]);
  } finally {
    await dev.close();
    vm2.close();
    await lab.close();
  }
});

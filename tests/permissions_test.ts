import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, take, waitFor } from "./helpers.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";
import type { StatusEvent } from "../src/client/status.ts";

test("permissions: denied publish and subscribe get an ERR naming the subject, and are counted", async () => {
  const lab = await startLab({
    vms: [
      {
        name: "sensor",
        permissions: { publish: ["sensors.sensor.>"], subscribe: ["cmd.sensor.>"] },
      },
      "free",
    ],
  });
  const sensor = await lab.vms.sensor.connect();
  const free = await lab.vms.free.connect();
  try {
    const errors: StatusEvent[] = [];
    sensor.on("error", (e) => errors.push(e));
    const watch = free.subscribe(">");
    await free.flush();

    await sensor.publish("sensors.sensor.temp", 1); // allowed
    await sensor.publish("cmd.other.reboot", 2); // denied
    await sensor.flush();
    const denied = sensor.subscribe("sensors.>"); // not inside cmd.sensor.>
    await assert.rejects(
      (async () => {
        for await (const _ of denied) { /* ends with the error */ }
      })(),
      (e: VbusError) => e.code === ErrorCode.PermissionDenied && e.subject === "sensors.>",
    );
    await waitFor(() => errors.length >= 2, "two ERRs");
    assert.deepEqual(
      errors.map((e) => e.type === "error" && [e.code, e.subject]),
      [[ErrorCode.PermissionDenied, "cmd.other.reboot"], [ErrorCode.PermissionDenied, "sensors.>"]],
    );
    assert.match(
      (errors[0] as { message: string }).message,
      /publish to "cmd\.other\.reboot" is not permitted/,
    );
    assert.deepEqual(await take(watch, 1), [1], "only the allowed publish was routed");
    const stats = lab.broker.stats().vms.find((v) => v.name === "sensor")!;
    assert.equal(stats.denied, 2);
    assert.equal(stats.errors[ErrorCode.PermissionDenied], 2);
    assert.ok(sensor.isConnected, "a denied operation does not end the session");
    // Allowed subscription works.
    const cmds = sensor.subscribe<string>("cmd.sensor.*");
    await sensor.flush();
    await free.publish("cmd.sensor.calibrate", "now");
    assert.deepEqual(await take(cmds, 1), ["now"]);
  } finally {
    await sensor.close();
    await free.close();
    await lab.close();
  }
});

test("permissions: a restricted VM can still make requests and answer them", async () => {
  const lab = await startLab({
    vms: [
      { name: "svc", permissions: { publish: [], subscribe: ["svc.>"] } },
      { name: "cli", permissions: { publish: ["svc.>"], subscribe: [] } },
    ],
  });
  const svc = await lab.vms.svc.connect();
  const cli = await lab.vms.cli.connect();
  try {
    svc.subscribe<number>("svc.square", { callback: (_e, m) => m.respond(m.data * m.data) });
    await svc.flush();
    assert.equal((await cli.request<number>("svc.square", 7)).data, 49);
    // The grant is one-time: svc cannot publish to that inbox again, nor to arbitrary subjects.
    const errs: StatusEvent[] = [];
    svc.on("error", (e) => errs.push(e));
    await svc.publish("anything", 1);
    await waitFor(() => errs.length === 1, "denied");
    // cli cannot snoop other sessions' inboxes.
    const snoop = cli.subscribe("_INBOX.>");
    await assert.rejects(
      (async () => {
        for await (const _ of snoop) { /* */ }
      })(),
      (e: VbusError) => e.code === ErrorCode.PermissionDenied,
    );
  } finally {
    await svc.close();
    await cli.close();
    await lab.close();
  }
});

test("permissions: $VBUS subjects are the broker's; host clients can read stats", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const stats = await host.request<{ vms: { name: string; connected: boolean }[] }>(
      "$VBUS.STATS",
    );
    assert.equal(stats.data.vms[0].name, "vm1");
    assert.equal(stats.data.vms[0].connected, true);
    const errs: StatusEvent[] = [];
    guest.on("error", (e) => errs.push(e));
    await assert.rejects(
      guest.request("$VBUS.STATS", null, { timeout: 1000 }),
      (e: VbusError) => e.code === ErrorCode.PermissionDenied,
    );
    assert.equal(errs.length, 1);
  } finally {
    await guest.close();
    await lab.close();
  }
});

/**
 * An embedded broker serves a client in its own process (`Broker.localPort`, memory_port.ts):
 * the in-process client publishes to and subscribes with guests and socket clients, answers
 * their requests, is a host client under `hostPermissions`, ends when the broker stops, and
 * cannot be had from a broker that is not running. Real broker, simulated VM port, real socket
 * client; runs under `deno test -A` and `bun test`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, take, waitFor } from "./helpers.ts";
import { connect } from "../src/client/bus.ts";
import { Broker } from "../src/broker/broker.ts";
import { parseConfig } from "../src/broker/config.ts";
import { ErrorCode, VbusError } from "../src/protocol/errors.ts";

test("local port: an in-process client talks with a guest and a socket client, both ways", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  try {
    const local = await connect({ transport: () => lab.broker.localPort(), reconnect: false });
    assert.equal(local.dataPath, "stream");
    const guest = await lab.vms.vm1.connect();
    const host = await lab.host({ shm: false });
    local.subscribe<number>("svc.double", { callback: (_e, m) => m.respond(m.data * 2) });
    const subjects: string[] = [];
    const fromGuest = local.subscribe<string>("telemetry.>");
    local.subscribe("telemetry.>", { callback: (_e, m) => subjects.push(m.subject) });
    await local.flush();
    assert.equal((await guest.request<number>("svc.double", 21, { timeout: 5000 })).data, 42);
    assert.equal((await host.request<number>("svc.double", 4, { timeout: 5000 })).data, 8);
    await guest.publish("telemetry.cpu", "busy");
    assert.deepEqual(await take(fromGuest, 1), ["busy"]);
    await waitFor(() => subjects.length === 1, "the callback subscription's message");
    assert.deepEqual(subjects, ["telemetry.cpu"]);
    // And the other way: the local client publishes, a guest receives; its requests get answers.
    const toGuest = guest.subscribe<Uint8Array>("cmd.vm1");
    guest.subscribe("guest.echo", { callback: (_e, msg) => msg.respond(msg.data) });
    await guest.flush();
    const payload = new Uint8Array(100_000).map((_, i) => i & 0xff);
    await local.publish("cmd.vm1", payload);
    const [c] = await take(toGuest, 1);
    assert.deepEqual(new Uint8Array(c), payload);
    assert.equal((await local.request<string>("guest.echo", "hi", { timeout: 5000 })).data, "hi");
    await guest.close();
    await local.close();
  } finally {
    await lab.close();
  }
});

test("local port: a host client, under hostPermissions", async () => {
  const lab = await startLab({ vms: [], hostPermissions: { publish: ["allowed.>"] } });
  try {
    const local = await connect({ transport: () => lab.broker.localPort(), reconnect: false });
    const seen = local.subscribe<number>(">");
    await local.flush();
    await local.publish("denied.x", 1);
    await local.publish("allowed.x", 2);
    assert.deepEqual(await take(seen, 1), [2]);
    assert.equal(lab.broker.stats().host.denied >= 1, true, "the denied publish was counted");
    await local.close();
  } finally {
    await lab.close();
  }
});

test("local port: the client is closed when the broker stops; no port from a stopped broker", async () => {
  const broker = new Broker(parseConfig(JSON.stringify({ vms: [] })));
  await assert.rejects(
    broker.localPort(),
    (err: unknown) => err instanceof VbusError && err.code === ErrorCode.Closed,
  );
  await broker.start();
  const local = await connect({ transport: () => broker.localPort(), reconnect: false });
  let closed = false;
  local.on("closed", () => (closed = true));
  await broker.stop();
  await waitFor(() => closed, "the in-process client closed after the broker stopped");
  await assert.rejects(
    broker.localPort(),
    (err: unknown) => err instanceof VbusError && err.code === ErrorCode.Closed,
  );
});

test("local port: connect({ broker }) takes a shared-memory ring, and answers a socket client's requests", async () => {
  const lab = await startLab({ vms: [], shm: true });
  try {
    const local = await connect({ broker: lab.broker, reconnect: false });
    assert.equal(local.dataPath, "ring");
    const streamOnly = await connect({ broker: lab.broker, reconnect: false, shm: false });
    assert.equal(streamOnly.dataPath, "stream");
    local.subscribe<Uint8Array>("echo", { callback: (_e, m) => m.respond(m.data) });
    await local.flush();
    const host = await lab.host();
    assert.equal(host.dataPath, "ring");
    const payload = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);
    for (let i = 0; i < 50; i++) {
      const reply = await host.request<Uint8Array>("echo", payload, { timeout: 5000 });
      assert.deepEqual(new Uint8Array(reply.data), payload);
    }
    assert.equal(
      (await streamOnly.request<Uint8Array>("echo", payload, { timeout: 5000 })).data.length,
      4096,
    );
    assert.ok((local.ringStats?.framesIn ?? 0) >= 51, "the requests reached it through its ring");
    await streamOnly.close();
    await local.close();
  } finally {
    await lab.close();
  }
});

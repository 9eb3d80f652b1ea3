/**
 * The client's public surface (docs/API.md): only the documented members are reachable on
 * `Bus`, `Subscription` and `Msg` (the connection's internals are not), connect option names
 * follow one convention (durations in ms without a unit, as in nats.js) and an old name is
 * refused with the new one instead of being ignored.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab } from "./helpers.ts";
import { Bus, connect, ErrorCode, Msg, Subscription, VbusError } from "../mod.ts";

const members = (c: { prototype: object }) =>
  Object.getOwnPropertyNames(c.prototype).filter((n) => n !== "constructor").sort();

test("api: Bus, Subscription and Msg expose only their documented members", async () => {
  assert.deepEqual(members(Bus), [
    "close",
    "dataPath",
    "drain",
    "flush",
    "info",
    "isClosed",
    "isConnected",
    "isDraining",
    "on",
    "publish",
    "request",
    "ringStats",
    "rtt",
    "stats",
    "status",
    "subscribe",
    "tryPublish",
  ]);
  assert.deepEqual(members(Subscription), [
    "drain",
    "dropped",
    "isClosed",
    "pending",
    "queue",
    "received",
    "unsubscribe",
  ]);
  assert.deepEqual(members(Msg), ["data", "decodeError", "raw", "respond", "toJSON"]);
  const lab = await startLab({ vms: [] });
  try {
    const bus = await lab.host();
    const sub = bus.subscribe("api.x");
    for (const name of ["start", "unsubscribeSid", "drainSid", "slowConsumer", "undecodable"]) {
      assert.equal(name in bus, false, `bus.${name} is not reachable`);
    }
    for (const name of ["dispatch", "end", "hasCallback", "opts"]) {
      assert.equal(name in sub, false, `sub.${name} is not reachable`);
    }
    assert.deepEqual(Object.keys(bus), ["closed"], "no own data but the closed promise");
    assert.deepEqual(Object.keys(sub).sort(), ["closed", "sid", "subject"]);
    await bus.publish("api.x", 1);
    for await (const m of sub) {
      assert.deepEqual(Object.keys(m).sort(), ["headers", "reply", "sid", "subject"]);
      assert.equal("expire" in m, false);
      break;
    }
  } finally {
    await lab.close();
  }
});

test("api: connect options renamed to nats.js's convention are refused under their old names", async () => {
  const renamed: Record<string, string> = {
    timeoutMs: "timeout",
    pingIntervalMs: "pingInterval",
    requestTimeoutMs: "requestTimeout",
    reconnectDelayMs: "reconnectDelay",
    reconnectMaxDelayMs: "reconnectMaxDelay",
  };
  for (const [old, now] of Object.entries(renamed)) {
    await assert.rejects(
      connect({ server: "/nonexistent.sock", [old]: 100 } as Record<string, unknown>),
      (e: unknown) =>
        e instanceof TypeError &&
        e.message === `connect option "${old}" is now "${now}" (milliseconds, as in nats.js)`,
    );
  }
});

test("api: connect({ timeout }) bounds the first connect; request({ timeout }) must be a positive number", async () => {
  const t0 = Date.now();
  await assert.rejects(
    // Waiting for a socket that is not there (yet) is asked for; by default it fails at once.
    connect({ server: "/nonexistent-vbus-api.sock", timeout: 300, waitOnFirstConnect: true }),
    /could not connect within 300 ms: cannot connect to \/nonexistent-vbus-api\.sock.*no broker listens/,
  );
  assert.ok(Date.now() - t0 < 3000, `bounded by timeout (${Date.now() - t0} ms)`);
  const lab = await startLab({ vms: [] });
  try {
    const bus = await lab.host({ requestTimeout: 100 });
    bus.subscribe("api.silent", { callback: () => {} });
    await bus.flush();
    const t1 = Date.now();
    await assert.rejects(
      bus.request("api.silent"),
      /timed out after 100 ms/,
      "the connection's default",
    );
    assert.ok(Date.now() - t1 < 2000);
    for (const timeout of [0, -1, Number.NaN, Infinity]) {
      await assert.rejects(bus.request("api.silent", 1, { timeout }), RangeError);
    }
  } finally {
    await lab.close();
  }
});

test("api: a subscription the broker refuses calls its callback once with the error (as nats.js), and fails its iterator", async () => {
  const lab = await startLab({
    vms: [],
    hostPermissions: { publish: [">"], subscribe: ["allowed.>"] },
  });
  try {
    const bus = await lab.host();
    const calls: [string | undefined, unknown][] = [];
    const viaCallback = bus.subscribe("denied.a", {
      callback: (err, msg) => void calls.push([(err as VbusError | null)?.code, msg]),
    });
    const viaIterator = bus.subscribe("denied.b");
    const iterated = (async () => {
      for await (const _ of viaIterator) { /* nothing arrives */ }
    })();
    await assert.rejects(
      iterated,
      (e: unknown) => e instanceof VbusError && e.code === ErrorCode.PermissionDenied,
    );
    await viaCallback.closed;
    assert.deepEqual(calls, [[ErrorCode.PermissionDenied, undefined]]);
    const ok = bus.subscribe<number>("allowed.x", {
      callback: (err, m) => void calls.push([err?.message, m.data]),
    });
    await bus.publish("allowed.x", 5);
    await bus.flush();
    assert.deepEqual(calls[1], [undefined, 5], "err is null for a message");
    ok.unsubscribe();
  } finally {
    await lab.close();
  }
});

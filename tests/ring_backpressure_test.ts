/**
 * A ring publisher that outruns the broker (issue 11, publisher side). Once the outbound ring
 * is full, publishes wait in the client; each is encoded at the call all the same, so the
 * caller may reuse its buffer (or change its object) as soon as `publish()` returns, as with
 * NATS clients, and what cannot be sent (too large, not encodable) fails at once. Waiting
 * publishes share promises; every one of them still resolves, in order with the SUB and PING
 * frames queued between them, and settles when the connection closes or the broker goes
 * away (then through the reconnect buffer). Real broker, real ring clients, one process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { tempDir, waitFor } from "./helpers.ts";
import { Broker, connect, parseConfig } from "../mod.ts";
import type { Bus } from "../src/client/bus.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";

/** Bytes per binary message, and how many: about 5 MiB, more than the outbound ring holds. */
const SIZE = 256;
const COUNT = 20_000;

async function withBroker(fn: (socket: string) => Promise<void>): Promise<void> {
  const { dir, cleanup } = tempDir();
  const socket = join(dir, "broker.sock");
  const broker = new Broker(parseConfig(JSON.stringify({ listen: socket, vms: [] })));
  await broker.start();
  try {
    await fn(socket);
  } finally {
    await broker.stop();
    cleanup();
  }
}

async function ringClient(socket: string, reconnect = false): Promise<Bus> {
  const bus = await connect({ server: socket, shm: true, reconnect, reconnectDelay: 20 });
  assert.equal(bus.dataPath, "ring");
  return bus;
}

/** Message `i`: its index in the first 4 bytes, then `i & 0xff` repeated. */
function fillMessage(buf: Uint8Array, i: number): void {
  buf.fill(i & 0xff);
  new DataView(buf.buffer, buf.byteOffset).setUint32(0, i);
}

/** What the caller writes into its buffer right after publishing it: no message's bytes. */
function scribble(buf: Uint8Array): void {
  buf.fill(0xee);
  buf[SIZE - 1] = 0x11;
}

/** The index of a received message, or -1 when its bytes are not those of a message. */
function messageIndex(m: Uint8Array): number {
  if (m.length !== SIZE) return -1;
  const i = new DataView(m.buffer, m.byteOffset).getUint32(0);
  for (let k = 4; k < SIZE; k++) if (m[k] !== (i & 0xff)) return -1;
  return i;
}

/** Settles within `ms`: "resolved", "rejected", or "pending". */
function settledWithin(p: Promise<unknown>, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve("pending"), ms);
    p.then(
      () => (clearTimeout(timer), resolve("resolved")),
      () => (clearTimeout(timer), resolve("rejected")),
    );
  });
}

test("ring backpressure: a buffer reused right after publish() is sent as it was at the call", async () => {
  await withBroker(async (socket) => {
    const sub = await ringClient(socket);
    const pub = await ringClient(socket);
    try {
      const got: number[] = [];
      let corrupt = 0;
      sub.subscribe<Uint8Array>("bp.bin", {
        callback: (_e, m) => {
          const i = messageIndex(m.data);
          if (i < 0) corrupt++;
          else got.push(i);
        },
      });
      await sub.flush();
      const fullBefore = pub.ringStats!.fullCount;
      const buf = new Uint8Array(SIZE);
      const publishes: Promise<void>[] = [];
      // One synchronous loop: nothing reads the ring meanwhile, so it fills and the rest waits.
      for (let i = 0; i < COUNT; i++) {
        fillMessage(buf, i);
        publishes.push(pub.publish("bp.bin", buf));
        scribble(buf); // the caller reuses its buffer at once
      }
      assert.ok(pub.ringStats!.fullCount > fullBefore, "the ring filled: publishes had to wait");
      await Promise.all(publishes);
      await pub.flush();
      await waitFor(() => got.length + corrupt >= COUNT, "every message arrived", 30_000);
      assert.equal(corrupt, 0, "no message carried the bytes written after its publish()");
      assert.deepEqual(got, Array.from({ length: COUNT }, (_, i) => i), "all, in order");
    } finally {
      await pub.close();
      await sub.close();
    }
  });
});

test("ring backpressure: an object changed right after publish() is sent as it was at the call", async () => {
  await withBroker(async (socket) => {
    const sub = await ringClient(socket);
    const pub = await ringClient(socket);
    try {
      const got: { n: number; text: string }[] = [];
      sub.subscribe<{ n: number; text: string }>("bp.obj", {
        callback: (_e, m) => void got.push(m.data),
      });
      await sub.flush();
      const fullBefore = pub.ringStats!.fullCount;
      const value = { n: 0, text: "" };
      const publishes: Promise<void>[] = [];
      for (let i = 0; i < COUNT; i++) {
        value.n = i;
        value.text = `message ${i} `.repeat(20);
        publishes.push(pub.publish("bp.obj", value));
        value.n = -1;
        value.text = "changed";
      }
      assert.ok(pub.ringStats!.fullCount > fullBefore, "the ring filled: publishes had to wait");
      await Promise.all(publishes);
      await pub.flush();
      await waitFor(() => got.length >= COUNT, "every message arrived", 30_000);
      const wrong = got.filter((v, i) => v.n !== i || v.text !== `message ${i} `.repeat(20));
      assert.equal(wrong.length, 0, `${wrong.length} messages changed after publish()`);
    } finally {
      await pub.close();
      await sub.close();
    }
  });
});

test("ring backpressure: too large or not encodable fails at the call, even while others wait", async () => {
  await withBroker(async (socket) => {
    const pub = await ringClient(socket);
    try {
      const buf = new Uint8Array(SIZE);
      const publishes: Promise<void>[] = [];
      for (let i = 0; i < COUNT; i++) publishes.push(pub.publish("bp.fill", buf));
      const huge = pub.publish("bp.fill", new Uint8Array(16 * 1024 * 1024));
      const hugeObject = pub.publish("bp.fill", { bin: new Uint8Array(16 * 1024 * 1024) });
      const broken = pub.publish("bp.fill", {
        get x() {
          throw new Error("no value");
        },
      });
      const next = pub.publish("bp.fill", buf);
      // Two microtasks: long before the broker has read the ring's worth ahead of them.
      const states: string[] = [];
      for (const p of [huge, hugeObject, broken]) p.catch((e: VbusError) => states.push(e.code));
      await Promise.resolve();
      await Promise.resolve();
      assert.deepEqual(states, [ErrorCode.FrameTooLarge, ErrorCode.FrameTooLarge, ErrorCode.Codec]);
      assert.equal(await settledWithin(Promise.all([...publishes, next]), 30_000), "resolved");
    } finally {
      await pub.close();
    }
  });
});

test("ring backpressure: SUB and PING frames queued between waiting publishes keep their place", async () => {
  await withBroker(async (socket) => {
    const pub = await ringClient(socket);
    try {
      const buf = new Uint8Array(SIZE);
      const before: Promise<void>[] = [];
      for (let i = 0; i < COUNT; i++) before.push(pub.publish("bp.own", buf));
      // Queued behind the backlog: the subscription must reach the broker before what follows.
      const got: number[] = [];
      pub.subscribe<Uint8Array>("bp.own", {
        callback: (_e, m) => void got.push(messageIndex(m.data)),
      });
      const flushed = pub.flush(); // a PING behind the subscription
      let afterResolved = 0;
      for (let i = 0; i < 100; i++) {
        fillMessage(buf, i);
        pub.publish("bp.own", buf).then(() => afterResolved++);
        scribble(buf);
      }
      await flushed;
      assert.equal(
        await settledWithin(Promise.all(before), 0),
        "resolved",
        "the flush answered after every publish before it",
      );
      await pub.flush();
      assert.equal(afterResolved, 100);
      await waitFor(() => got.length >= 100, "the publishes after the SUB came back", 10_000);
      assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => i), "none before the SUB");
    } finally {
      await pub.close();
    }
  });
});

test("ring backpressure: closing with publishes waiting settles every one of them", async () => {
  await withBroker(async (socket) => {
    const pub = await ringClient(socket);
    const buf = new Uint8Array(SIZE);
    const publishes: Promise<void>[] = [];
    for (let i = 0; i < COUNT; i++) publishes.push(pub.publish("bp.close", buf));
    await pub.close();
    const states = await Promise.all(publishes.map((p) => settledWithin(p, 10_000)));
    assert.equal(states.filter((s) => s === "pending").length, 0, "none left pending");
  });
});

test("ring backpressure: publishes waiting when the broker goes go through the reconnect buffer", async () => {
  const { dir, cleanup } = tempDir();
  const socket = join(dir, "broker.sock");
  const config = parseConfig(JSON.stringify({ listen: socket, vms: [] }));
  let broker = new Broker(config);
  await broker.start();
  const pub = await ringClient(socket, true);
  try {
    const got = new Set<number>();
    let corrupt = 0;
    // Its own subscription: re-sent first on the new session, before the buffered publishes.
    pub.subscribe<Uint8Array>("bp.again", {
      callback: (_e, m) => {
        const i = messageIndex(m.data);
        if (i < 0) corrupt++;
        else got.add(i);
      },
    });
    await pub.flush();
    let maybeLost = 0;
    pub.on("disconnected", (e) => maybeLost += e.maybeLost);
    const reconnected = new Promise((r) => pub.on("reconnected", r));
    const buf = new Uint8Array(SIZE);
    const publishes: Promise<void>[] = [];
    for (let i = 0; i < COUNT; i++) {
      fillMessage(buf, i);
      publishes.push(pub.publish("bp.again", buf));
      scribble(buf);
    }
    const stopping = broker.stop(); // while most of them wait
    const states = await Promise.all(publishes.map((p) => settledWithin(p, 10_000)));
    assert.deepEqual(
      [...new Set(states)],
      ["resolved"],
      "each resolved: into the ring, or handed to the reconnect buffer",
    );
    await stopping;
    broker = new Broker(config);
    await broker.start();
    await reconnected;
    await pub.flush();
    await waitFor(() => got.size + maybeLost >= COUNT, "the buffered publishes arrived", 30_000);
    assert.equal(corrupt, 0, "none carried the bytes written after its publish()");
    assert.ok(got.size >= COUNT - maybeLost, `${COUNT - got.size} missing, ${maybeLost} reported`);
  } finally {
    await pub.close();
    await broker.stop();
    cleanup();
  }
});

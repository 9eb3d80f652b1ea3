/**
 * `noEcho` (as nats.js's): a connection's own publishes are not delivered to its own
 * subscriptions. The broker does it (the `no-echo` feature in HELLO, docs/PROTOCOL.md), so it
 * holds on every path, for queue groups and requests too; a broker without the feature makes
 * `connect()` fail rather than echo silently.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { join } from "node:path";
import { delay, startLab, take, tempDir } from "./helpers.ts";
import { connect } from "../src/client/bus.ts";
import { ErrorCode, VbusError } from "../src/protocol/errors.ts";
import { encodeFrame, FrameDecoder } from "../src/protocol/frame.ts";
import { decodeValue, encodeValue } from "../src/protocol/codec.ts";
import { Feature, type HelloHead, Op, type WelcomeHead } from "../src/protocol/ops.ts";

for (const shm of [false, true]) {
  const path = shm ? "rings" : "the port stream";
  test(`noEcho (${path}): own publishes are not delivered to own subscriptions; others get them`, async () => {
    const lab = await startLab({ shm });
    try {
      const quiet = await lab.host({ noEcho: true });
      const echoing = await lab.host();
      const guest = await lab.vms.vm1.connect({ noEcho: true });
      assert.ok(quiet.info!.features.includes(Feature.NoEcho), "the broker granted no-echo");
      assert.ok(!echoing.info!.features.includes(Feature.NoEcho));
      const mine = quiet.subscribe<number>("chat.>");
      const theirs = echoing.subscribe<number>("chat.>");
      const guests = guest.subscribe<number>("chat.>");
      await Promise.all([quiet.flush(), echoing.flush(), guest.flush()]);
      await quiet.publish("chat.a", 1); // everyone but quiet
      await echoing.publish("chat.b", 2); // everyone: echoing did not ask for no echo
      await guest.publish("chat.c", 3); // everyone but the guest
      await Promise.all([quiet.flush(), echoing.flush(), guest.flush()]);
      assert.deepEqual((await take(mine, 2)).sort(), [2, 3]); // publishers are not ordered among each other
      assert.deepEqual((await take(theirs, 3)).sort(), [1, 2, 3]);
      assert.deepEqual((await take(guests, 2)).sort(), [1, 2]);
      await delay(50);
      assert.equal(mine.pending + guests.pending, 0, "no echo arrived late");
    } finally {
      await lab.close();
    }
  });
}

test("noEcho: a queue group passes over the publisher's own member; a request only it serves has no responders", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const a = await lab.host({ noEcho: true });
    const b = await lab.host();
    const aWork = a.subscribe<number>("jobs", { queue: "workers" });
    const bWork = b.subscribe<number>("jobs", { queue: "workers" });
    a.subscribe<number>("svc.self", { callback: (_e, m) => m.respond(m.data) });
    await Promise.all([a.flush(), b.flush()]);
    for (let i = 0; i < 10; i++) await a.publish("jobs", i);
    assert.deepEqual(
      await take(bWork, 10),
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
      "all went to the other member",
    );
    assert.equal(aWork.pending, 0);
    await assert.rejects(
      a.request("svc.self", 1, { timeout: 2000 }),
      (e: unknown) => e instanceof VbusError && e.code === ErrorCode.NoResponders,
    );
    assert.equal((await b.request<number>("svc.self", 5, { timeout: 2000 })).data, 5);
  } finally {
    await lab.close();
  }
});

test("noEcho: a broker without the no-echo feature makes connect() fail at once, saying so", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "old.sock");
  // A broker from before no-echo: it answers HELLO with the features it knows, nothing else.
  const server = createServer((socket) => {
    const decoder = new FrameDecoder(1 << 20);
    socket.on("data", (chunk: Uint8Array) =>
      decoder.push(chunk, (frame) => {
        if (frame.op !== Op.Hello) return;
        const hello = decodeValue<HelloHead>(frame.head);
        const welcome: WelcomeHead = {
          v: 1,
          features: hello.features.filter((f) =>
            f === Feature.Headers || f === Feature.NoResponders
          ),
          nonce: hello.nonce,
          identity: "host",
          session: "host#000000.1",
          inbox: "_INBOX.host.0000000000000000",
          maxFrameBytes: 1 << 20,
          maxSubjectBytes: 256,
          maxSubscriptions: 4096,
          maxHeaderBytes: 16384,
          pingIntervalMs: 10_000,
        };
        socket.write(encodeFrame(Op.Welcome, encodeValue(welcome)));
      }));
  });
  await new Promise<void>((r) => server.listen(listen, r));
  try {
    const t0 = Date.now();
    await assert.rejects(
      connect({ server: listen, noEcho: true, shm: false, timeout: 10_000 }),
      (e: unknown) =>
        e instanceof VbusError && e.code === ErrorCode.BadVersion &&
        /does not support "no-echo"/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 5000, "not retried until the timeout");
    const plain = await connect({ server: listen, shm: false, timeout: 5000 });
    assert.equal(plain.isConnected, true, "without noEcho the old broker is fine");
    await plain.close();
  } finally {
    server.close();
    cleanup();
  }
});

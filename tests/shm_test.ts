/**
 * The shared-memory fast path with simulated VMs: each VM's "ivshmem BAR" is a /dev/shm file
 * that the guest client and the broker both map, as QEMU's memory-backend-file would share it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { type Lab, SHM_SIZE, startLab, take, waitFor } from "./helpers.ts";
import { FrameDecoder } from "../src/protocol/frame.ts";
import { decodeValue } from "../src/protocol/codec.ts";
import { writeGuestNonce } from "../src/shm/negotiation.ts";
import { mapSharedSync } from "../ffi/mod.ts";
import { HEADER, ringControl, RingId } from "../src/ring/layout.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { Op } from "../src/protocol/ops.ts";
import type { StatusEvent } from "../src/client/status.ts";
import { connect } from "../src/client/bus.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

test("shm: guest to guest and guest to host travel through the rings (broker stats show it)", async () => {
  const lab = await startLab({ shm: true });
  const a = await lab.vms.vm1.connect();
  const b = await lab.vms.vm2.connect();
  const host = await lab.host();
  try {
    assert.equal(a.dataPath, "ring");
    assert.equal(b.dataPath, "ring");
    assert.equal(host.dataPath, "ring");
    const sub = b.subscribe<{ n: number; bin: Uint8Array }>("data.>");
    const hostSub = host.subscribe<number>("to.host");
    b.subscribe<number>("svc.double", { callback: (_e, m) => m.respond(m.data * 2) });
    await Promise.all([b.flush(), host.flush()]);
    for (let i = 0; i < 500; i++) {
      a.publish("data.x", { n: i, bin: new Uint8Array([i & 0xff, 1, 2]) });
    }
    const got = await take(sub, 500);
    assert.deepEqual(got.map((m) => m.n), Array.from({ length: 500 }, (_, i) => i));
    assert.deepEqual([...got[7].bin], [7, 1, 2], "binary copied out of the ring for the iterator");
    await a.publish("to.host", 42);
    assert.deepEqual(await take(hostSub, 1), [42]);
    assert.equal((await host.request<number>("svc.double", 21)).data, 42);
    assert.equal((await a.request<number>("svc.double", 4)).data, 8);
    // Large values (several ring slots' worth of headroom) go in place too.
    const big = new Uint8Array(256 * 1024).map((_, i) => i % 251);
    await a.publish("data.big", { n: -1, bin: big });
    const [bigGot] = await take(sub, 1);
    assert.deepEqual(bigGot.bin, big);

    const stats = lab.broker.stats();
    const vm1 = stats.vms.find((v) => v.name === "vm1")!;
    const vm2 = stats.vms.find((v) => v.name === "vm2")!;
    assert.equal(vm1.path, "ring");
    assert.equal(vm2.path, "ring");
    assert.ok(vm1.ringMsgsIn >= 503, `vm1 ring in ${vm1.ringMsgsIn}`);
    assert.ok(vm2.ringMsgsOut >= 502, `vm2 ring out ${vm2.ringMsgsOut}`);
    assert.equal(stats.host.path, "ring");
    assert.ok(stats.host.ringMsgsOut >= 2 && stats.host.ringMsgsIn >= 1);
  } finally {
    await a.close();
    await b.close();
    await lab.close();
  }
});

test("shm: a callback reads the payload in place; using it after the callback is a clear error", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1", "vm2"] });
  const a = await lab.vms.vm1.connect();
  const b = await lab.vms.vm2.connect();
  try {
    let kept: { data: unknown } | undefined;
    let seen: unknown;
    b.subscribe("cb", {
      callback: (_e, m) => {
        kept = m;
        seen = m.data;
      },
    });
    const late = b.subscribe("cb", { callback: (_e, m) => (kept = m) });
    await b.flush();
    await a.publish("cb", "hello");
    await waitFor(() => seen !== undefined, "callback ran");
    assert.equal(seen, "hello");
    late.unsubscribe();
    assert.throws(() => kept!.data, /only valid during the callback/);
  } finally {
    await a.close();
    await b.close();
    await lab.close();
  }
});

test("shm: without a region the guest says why and uses the port stream; both paths interoperate", async () => {
  const lab = await startLab({ shm: true });
  const events: StatusEvent[] = [];
  const plain = await lab.vms.vm1.connect({ shm: false });
  plain.on("dataPath", (e) => events.push(e));
  const fast = await lab.vms.vm2.connect();
  try {
    assert.equal(plain.dataPath, "stream");
    assert.equal(fast.dataPath, "ring");
    const sub = fast.subscribe<number>("mix");
    const back = plain.subscribe<number>("mix.back");
    await Promise.all([fast.flush(), plain.flush()]);
    await plain.publish("mix", 1);
    await fast.publish("mix.back", 2);
    assert.deepEqual(await take(sub, 1), [1]);
    assert.deepEqual(await take(back, 1), [2]);
    const vm1 = lab.broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.equal(vm1.path, "stream");
    assert.match(vm1.pathReason!, /did not offer shared memory/);
  } finally {
    await plain.close();
    await fast.close();
    await lab.close();
  }
});

test("shm: a guest mapping other memory than the broker's is refused (nonce) and falls back", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  const other = `${lab.vms.vm1.shm}-other`;
  const m = mapSharedSync(other, 4 * 1024 * 1024, { create: true });
  try {
    const events: StatusEvent[] = [];
    const guest = await lab.vms.vm1.connect({ shm: other });
    guest.on("dataPath", (e) => events.push(e));
    assert.equal(guest.dataPath, "stream");
    const stats = lab.broker.stats().vms[0];
    assert.equal(stats.path, "stream");
    await guest.close();
  } finally {
    m.unmap();
    await import("node:fs/promises").then((fs) => fs.unlink(other));
    await lab.close();
  }
});

test("shm: each session gets a new epoch; records left from an earlier session are never read", async () => {
  const lab = await startLab({ shm: true });
  const host = await lab.host();
  const bytes = mapSharedSync(lab.vms.vm1.shm!, 4 * 1024 * 1024).bytes;
  const i32 = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  try {
    const sub = host.subscribe<string>("epoch.>");
    await host.flush();
    const first = await lab.vms.vm1.connect();
    const e1 = Atomics.load(i32, HEADER.EPOCH >> 2);
    await first.publish("epoch.one", "first");
    assert.deepEqual(await take(sub, 1), ["first"]);
    await first.close();
    // QEMU dies: the broker's session ends and nothing reads the ring any more.
    await lab.vms.vm1.vm.stop();
    await waitFor(() => !lab.broker.stats().vms[0].connected, "session ended");
    // Forge a PUB record as if the dying guest had left it in its outbound ring.
    const c = ringControl(RingId.OUTBOUND);
    const pos = Atomics.load(i32, c.PRODUCER_POSITION >> 2);
    const frame = encodeFrame(
      Op.Pub,
      encodeValue(["epoch.stale", null, null]),
      encodeValue("stale"),
    );
    const dataOffset = Atomics.load(i32, HEADER.OUTBOUND_OFFSET >> 2);
    const cap = Atomics.load(i32, HEADER.OUTBOUND_CAPACITY >> 2);
    const at = dataOffset + (pos & (cap - 1));
    new DataView(bytes.buffer, bytes.byteOffset).setUint32(at, frame.length, true);
    new DataView(bytes.buffer, bytes.byteOffset).setUint16(at + 4, 1, true);
    bytes.set(frame, at + 8);
    Atomics.store(i32, c.PRODUCER_POSITION >> 2, pos + ((8 + frame.length + 7) & ~7));

    await lab.vms.vm1.vm.start();
    await waitFor(() => lab.vms.vm1.vm.hostConnected, "broker reconnected to the VM port");
    const second = await lab.vms.vm1.connect();
    const e2 = Atomics.load(i32, HEADER.EPOCH >> 2);
    assert.equal(e2, e1 + 1, "the broker re-initialised the region");
    await second.publish("epoch.two", "second");
    assert.deepEqual(await take(sub, 1), ["second"], "the stale record was not delivered");
    await second.close();
  } finally {
    await lab.close();
  }
});

test("shm: a guest that corrupts its ring gets its session reset; other VMs keep flowing; it recovers", async () => {
  const lab = await startLab({ shm: true });
  const bad = await lab.vms.vm1.connect({ reconnectDelay: 20 });
  const good = await lab.vms.vm2.connect();
  const host = await lab.host();
  const bytes = mapSharedSync(lab.vms.vm1.shm!, 4 * 1024 * 1024).bytes;
  const i32 = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  try {
    const sub = host.subscribe<number>("flow");
    await host.flush();
    const reconnected = new Promise((r) => bad.on("reconnected", r));
    // The producer position jumps past the ring's capacity: a hostile write.
    const c = ringControl(RingId.OUTBOUND);
    Atomics.add(i32, c.PRODUCER_POSITION >> 2, 1 << 28);
    await good.publish("flow", 1);
    assert.deepEqual(await take(sub, 1), [1]);
    await waitFor(
      () => (lab.broker.stats().vms[0].closed["RING_CORRUPT"] ?? 0) === 1,
      "violation counted",
    );
    await good.publish("flow", 2);
    assert.deepEqual(await take(sub, 1), [2], "the other VM kept flowing");
    await reconnected;
    await bad.publish("flow", 3);
    assert.deepEqual(await take(sub, 1), [3], "the reset guest works again on a fresh epoch");
    assert.equal(bad.dataPath, "ring");
  } finally {
    await bad.close();
    await good.close();
    await lab.close();
  }
});

/**
 * A raw guest on `vm`: speaks frames by hand, negotiates the rings, and never reads its
 * inbound ring unless the test does it. `close()` unmaps and closes.
 */
async function rawRingGuest(lab: Lab, vm: string) {
  const port = await lab.vms[vm].vm.open();
  const frames: { op: number; head: unknown }[] = [];
  const decoder = new FrameDecoder(1 << 24);
  port.start(
    (chunk) => decoder.push(chunk, (f) => frames.push({ op: f.op, head: decodeValue(f.head) })),
    () => {},
  );
  const m = mapSharedSync(lab.vms[vm].shm!, SHM_SIZE);
  const nonce = writeGuestNonce(m.bytes);
  port.write(
    encodeFrame(
      Op.Hello,
      encodeValue({ v: 1, features: [], nonce: 7, shm: { size: m.bytes.length, nonce } }),
    ),
  );
  await waitFor(() => frames.some((f) => f.op === Op.Welcome), "WELCOME");
  const welcome = frames.find((f) => f.op === Op.Welcome)!.head as { shm: { ok: boolean } };
  return {
    port,
    frames,
    welcome,
    i32: new Int32Array(m.bytes.buffer, m.bytes.byteOffset, m.bytes.byteLength >> 2),
    close() {
      m.unmap();
      port.close();
    },
  };
}

test("shm: a subscriber that stops reading: bounded backlog, oldest dropped, counted and reported", async () => {
  const lab = await startLab({ shm: true, limits: { maxPendingBytes: 64 * 1024 } });
  const pub = await lab.vms.vm1.connect();
  // vm2 is a raw guest that negotiates the rings and then never reads its inbound ring.
  const guest = await rawRingGuest(lab, "vm2");
  const { port, frames } = guest;
  try {
    assert.equal(guest.welcome.shm.ok, true);
    port.write(encodeFrame(Op.Sub, encodeValue([1, "firehose", null])));
    await waitFor(
      () => lab.broker.stats().vms.find((v) => v.name === "vm2")!.subscriptions === 1,
      "subscribed",
    );
    const payload = new Uint8Array(1024);
    for (let i = 0; i < 6000; i++) await pub.publish("firehose", payload); // ~6 MiB: ring (2 MiB) + backlog (64 KiB) overflow
    await pub.flush();
    await waitFor(
      () =>
        frames.some((f) =>
          f.op === Op.Err && (f.head as { code: string }).code === "SLOW_CONSUMER"
        ),
      "SLOW_CONSUMER reported",
    );
    const vm2 = lab.broker.stats().vms.find((v) => v.name === "vm2")!;
    assert.ok(vm2.dropped > 1000, `dropped ${vm2.dropped}`);
    const err = frames.find((f) => f.op === Op.Err)!.head as { message: string; dropped: number };
    assert.ok(err.dropped > 0);
    assert.match(err.message, /dropped/);
    assert.ok(
      vm2.ringMsgsOut + vm2.dropped <= 6000 && vm2.ringMsgsOut > 500,
      `ring out ${vm2.ringMsgsOut}`,
    );
  } finally {
    guest.close();
    await pub.close();
    await lab.close();
  }
});

test("shm: mixed runtimes in separate processes (Deno publisher, Bun subscriber) through host rings", async (t) => {
  const deno = join(ROOT, "node_modules/.bin/deno");
  const bun = join(ROOT, "node_modules/.bin/bun");
  if (!existsSync(deno) || !existsSync(bun)) {
    t.skip("deno or bun binary missing from node_modules/.bin (run npm ci)");
    return;
  }
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  const cli = join(ROOT, "src/cli/main.ts");
  const env = { ...process.env, VBUS_SERVER: lab.listen, VBUS_LOG: "warn" };
  try {
    const sub = spawn(bun, [cli, "sub", "mixed", "--count", "3"], {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    sub.stdout.on("data", (d) => out += d);
    const subDone = new Promise<number>((r) => sub.on("close", (c) => r(c ?? -1)));
    await waitFor(
      () => lab.broker.stats().host.subscriptions >= 1,
      "bun subscriber subscribed",
      20_000,
    );
    const pub = spawn(deno, [
      "run",
      "-A",
      "--quiet",
      cli,
      "pub",
      "mixed",
      '{"from":"deno"}',
      "--count",
      "3",
    ], { env, stdio: "inherit" });
    const pubCode = await new Promise<number>((r) => pub.on("close", (c) => r(c ?? -1)));
    assert.equal(pubCode, 0);
    assert.equal(await subDone, 0);
    const lines = out.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.data), [{ from: "deno" }, { from: "deno" }, {
      from: "deno",
    }]);
    const host = lab.broker.stats().host;
    assert.ok(
      host.ringMsgsIn >= 3 && host.ringMsgsOut >= 3,
      `host ring in/out ${host.ringMsgsIn}/${host.ringMsgsOut}`,
    );
  } finally {
    await lab.close();
  }
});

test('shm: a "block" subscriber that stops reading holds the publisher instead of losing messages', async () => {
  const lab = await startLab({
    shm: true,
    vms: ["vm1", { name: "vm2", permissions: { block: true } }],
    limits: { maxPendingBytes: 64 * 1024, maxBlockMs: 60_000 },
  });
  const pub = await lab.vms.vm1.connect();
  const guest = await rawRingGuest(lab, "vm2");
  const { port, frames, i32 } = guest;
  try {
    assert.equal(guest.welcome.shm.ok, true);
    port.write(encodeFrame(Op.Sub, encodeValue([1, "held", null, "block"])));
    await waitFor(
      () => lab.broker.stats().vms.find((v) => v.name === "vm2")!.subscriptions === 1,
      "subscribed",
    );
    const N = 6000;
    let resolved = 0;
    const payload = new Uint8Array(1024);
    const all = Array.from(
      { length: N },
      () => pub.publish("held", payload).then(() => resolved++),
    );
    await waitFor(
      () => lab.broker.stats().vms.find((v) => v.name === "vm1")!.blocked >= 1,
      "publisher held",
    );
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(resolved < N, `the publisher waits (${resolved}/${N} accepted)`);
    // The subscriber catches up: consume its inbound ring by hand and ring the space doorbell.
    const c = ringControl(RingId.INBOUND);
    const deadline = Date.now() + 20_000;
    const vm2Out = () => lab.broker.stats().vms.find((v) => v.name === "vm2")!.ringMsgsOut;
    while ((resolved < N || vm2Out() < N) && Date.now() < deadline) {
      Atomics.store(i32, c.CONSUMER_POSITION >> 2, Atomics.load(i32, c.PRODUCER_POSITION >> 2));
      port.write(encodeFrame(Op.Doorbell, encodeValue([RingId.INBOUND, 1])));
      await new Promise((r) => setTimeout(r, 5));
    }
    await Promise.all(all);
    await pub.flush();
    assert.equal(vm2Out(), N, "every message delivered");
    const vm2 = lab.broker.stats().vms.find((v) => v.name === "vm2")!;
    assert.equal(vm2.dropped, 0, "nothing dropped under the block policy");
    assert.equal(frames.filter((f) => f.op === Op.Err).length, 0);
  } finally {
    guest.close();
    await pub.close();
    await lab.close();
  }
});

test("shm: encoded heads stay intact when in-place encodes move msgpackr's buffer (regression)", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const sub = guest.subscribe<{ i: number }>("same.subject");
    guest.subscribe("svc", { callback: (_e, m) => m.respond({ ok: m.data }) });
    await guest.flush();
    await host.publish("warm.up", { first: true }); // an in-place encode moves msgpackr's buffer
    for (let i = 0; i < 50; i++) {
      await host.publish("same.subject", { i, pad: "x".repeat(i) }); // head cached, value in place
      await host.request("svc", { i, other: ["heads", i] }, { timeout: 2000 }); // other encodes in between
    }
    assert.deepEqual(
      (await take(sub, 50)).map((m) => m.i),
      Array.from({ length: 50 }, (_, i) => i),
    );
    assert.equal(lab.broker.stats().host.closed["RING_CORRUPT"], undefined);
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("shm: the broker removes region files left by a broker that died (kill -9), and only those", async () => {
  const { tempDir } = await import("./helpers.ts");
  const { Broker } = await import("../src/broker/broker.ts");
  const { parseConfig } = await import("../src/broker/config.ts");
  const { createLogger } = await import("../src/util/log.ts");
  const fs = await import("node:fs");
  const { dir, cleanup } = tempDir();
  try {
    // A pid that cannot be running (above the kernel's pid_max), and our own live pid.
    const stale = join(dir, "vbus-99999999-abcdef-1");
    const live = join(dir, `vbus-${process.pid}-abcdef-1`);
    const other = join(dir, "vbus-vm1");
    for (const f of [stale, live, other]) fs.writeFileSync(f, "x");
    const broker = new Broker(
      parseConfig(JSON.stringify({ listen: join(dir, "b.sock"), vms: [] })),
      {
        shmDir: dir,
        logger: createLogger("t", "silent"),
      },
    );
    await broker.start();
    await broker.stop();
    assert.equal(fs.existsSync(stale), false, "stale region removed");
    assert.equal(fs.existsSync(live), true, "a running broker's region kept");
    assert.equal(fs.existsSync(other), true, "other files untouched");
  } finally {
    cleanup();
  }
});

test("shm: close() right after publishing on the ring loses nothing the broker could still read", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  const host = await lab.vms.vm1.connect();
  try {
    const sub = host.subscribe<number>("last.words");
    await host.flush();
    // Enough to leave records in the outbound ring when the last publish resolves.
    const N = 60_000;
    for (let round = 0; round < 3; round++) {
      const guest = await connect({ server: lab.listen, timeout: 5000 });
      assert.equal(guest.dataPath, "ring");
      const sent: Promise<void>[] = [];
      for (let i = 0; i < N; i++) sent.push(guest.publish("last.words", round * N + i));
      await Promise.all(sent); // every publish resolved: handed to the ring
      await guest.close();
      const got = await take(sub, N, 20_000);
      assert.deepEqual(got, Array.from({ length: N }, (_, i) => round * N + i));
    }
  } finally {
    await host.close();
    await lab.close();
  }
});

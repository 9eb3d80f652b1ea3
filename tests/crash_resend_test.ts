/**
 * Nothing resolved is lost silently across a broker crash (issue 9). A broker in its own
 * process is killed with SIGKILL twice while three clients publish numbered streams: a
 * simulated VM and a host client on the shared-memory rings, and a host client on the port
 * stream. The second time the broker is first stopped (SIGSTOP), so publishes resolve into
 * rings and socket buffers that nobody reads any more, then killed. Each client subscribes to
 * its own stream (its subscription is re-sent before anything else on a new session), so
 * after the restarts it can check: every number whose publish() resolved arrived, or is
 * covered by the `maybeLost` counts the client reported.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { setImmediate } from "node:timers";
import { delay, SHM_SIZE, tempDir, waitFor } from "./helpers.ts";
import { cliCommand } from "./fixtures/cli_process.ts";
import { type Bus, connect } from "../src/client/bus.ts";
import type { StatusEvent } from "../src/client/status.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** `vbus broker --config FILE` in a child process of the runtime running the tests. */
function startBroker(
  config: string,
): { child: ChildProcess; exited: Promise<void>; log: () => string } {
  const { cmd, args } = cliCommand(["broker", "--config", config]);
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, VBUS_LOG: "warn" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr!.on("data", (d) => log += d);
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  return { child, exited, log: () => log };
}

/** One client publishing `{ n }` to its own subject and subscribed to it. */
interface Stream {
  name: string;
  bus: Bus;
  resolved: number[];
  received: number[];
  disconnected: Extract<StatusEvent, { type: "disconnected" }>[];
  /** Messages the broker dropped for this slow subscriber and said so (reported, not silent). */
  droppedReported: number;
  reconnected: Extract<StatusEvent, { type: "reconnected" }>[];
  running: Promise<void>;
}

function startStream(name: string, bus: Bus, stop: { now: boolean }): Stream {
  const subject = `crash.${name}`;
  const s: Stream = {
    name,
    bus,
    resolved: [],
    received: [],
    droppedReported: 0,
    disconnected: [],
    reconnected: [],
    running: Promise.resolve(),
  };
  bus.subscribe<{ n: number }>(subject, {
    callback: (_err, msg) => void s.received.push(msg.data.n),
  });
  bus.on("disconnected", (e) => s.disconnected.push(e));
  bus.on("reconnected", (e) => s.reconnected.push(e));
  bus.on("slowConsumer", (e) => s.droppedReported += e.dropped);
  s.running = (async () => {
    // Bounded: at most 5M publishes; the test stops it long before.
    for (let n = 0; n < 5_000_000 && !stop.now; n++) {
      const publishing = bus.publish(subject, { n }).then(() => void s.resolved.push(n), () => {});
      // Publishes resolve in order; a full ring or a blocked port makes this one wait.
      await publishing;
      if (n % 20 === 19) await new Promise((r) => setImmediate(r)); // let the receive loops run
      // A PING now and then: its PONG confirms what the broker handled (fewer "maybe lost").
      if (n % 500 === 499 && bus.isConnected) bus.flush().catch(() => {});
    }
  })();
  return s;
}

test("crash resend: after kill -9 of the broker, every resolved publish arrives or is counted as maybe lost", async () => {
  const { dir, cleanup } = tempDir();
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const shm = `/dev/shm/${basename(dir)}-vm1`;
  const listen = join(dir, "broker.sock");
  const config = join(dir, "broker.json");
  writeFileSync(
    config,
    JSON.stringify({
      listen,
      vms: [{ name: "vm1", socket: vm.socketPath, shm, shmSize: SHM_SIZE }],
    }),
  );
  let broker = startBroker(config);
  const stop = { now: false };
  const buses: Bus[] = [];
  const streams: Stream[] = [];
  try {
    await waitFor(
      () => vm.hostConnected,
      `the broker connected to the VM\n${broker.log()}`,
      20_000,
    );
    const fast = { reconnectDelay: 20, reconnectMaxDelay: 100, timeout: 20_000 };
    const guest = await connect({ transport: () => vm.open(), shm, ...fast });
    const hostRing = await connect({ server: listen, ...fast });
    const hostStream = await connect({ server: listen, shm: false, ...fast });
    buses.push(guest, hostRing, hostStream);
    assert.equal(guest.dataPath, "ring");
    assert.equal(hostRing.dataPath, "ring");
    assert.equal(hostStream.dataPath, "stream");
    await Promise.all(buses.map((b) => b.flush()));
    streams.push(
      startStream("guest", guest, stop),
      startStream("hostRing", hostRing, stop),
      startStream("hostStream", hostStream, stop),
    );
    /** Wait until every stream received `n` more messages than it has now. */
    const allReceivedMore = (n: number, what: string) => {
      const from = streams.map((s) => s.received.length);
      return waitFor(
        () => streams.every((s, i) => s.received.length >= from[i] + n),
        `${what}: ${streams.map((s) => `${s.name} ${s.received.length}`).join(", ")}`,
        20_000,
      );
    };

    // 1. Killed while the streams run.
    await allReceivedMore(300, "streams running");
    broker.child.kill("SIGKILL");
    await broker.exited;
    await waitFor(
      () => streams.every((s) => s.disconnected.length === 1),
      "every client saw the broker go",
    );
    broker = startBroker(config);
    await waitFor(
      () => streams.every((s) => s.reconnected.length === 1),
      `every client reconnected\n${broker.log()}`,
      20_000,
    );
    await allReceivedMore(300, "streams running again");

    // 2. Frozen, so publishes resolve into rings and socket buffers nobody reads; then killed.
    process.kill(broker.child.pid!, "SIGSTOP");
    const frozenAt = streams.map((s) => s.resolved.length);
    await delay(300);
    const resolvedWhileFrozen = streams.map((s, i) => s.resolved.length - frozenAt[i]);
    broker.child.kill("SIGKILL");
    await broker.exited;
    await waitFor(
      () => streams.every((s) => s.disconnected.length === 2),
      "every client saw the broker go again",
    );
    broker = startBroker(config);
    await waitFor(
      () => streams.every((s) => s.reconnected.length === 2),
      `every client reconnected again\n${broker.log()}`,
      20_000,
    );
    await allReceivedMore(300, "streams running after the second crash");

    stop.now = true;
    await Promise.all(streams.map((s) => s.running));
    await Promise.all(buses.map((b) => b.flush()));
    // A broker that fell behind a ring subscriber still holds some of its messages in a
    // backlog after the PONG: give them a moment (bounded) to arrive.
    const missingOf = (s: Stream) => {
      const got = new Set(s.received);
      return s.resolved.filter((n) => !got.has(n));
    };
    const maybeLostOf = (s: Stream) =>
      s.disconnected.reduce((sum, e) => sum + (e.maybeLost ?? 0), 0);
    /** What the client was told may be missing: maybe lost in a crash, or dropped (slow). */
    const allowedOf = (s: Stream) =>
      (s.name === "hostStream" ? maybeLostOf(s) : 0) + s.droppedReported;
    await waitFor(
      () => streams.every((s) => missingOf(s).length <= allowedOf(s)),
      "every resolved publish arrived or is counted",
      5000,
    ).catch(() => {}); // the assertions below say what is wrong

    for (const [i, s] of streams.entries()) {
      const missing = missingOf(s);
      const duplicates = s.received.length - new Set(s.received).size;
      const maybeLost = maybeLostOf(s);
      const stats = s.bus.stats;
      const summary =
        `${s.name}: ${s.resolved.length} resolved (${
          resolvedWhileFrozen[i]
        } while the broker was frozen), ` +
        `${missing.length} missing, ${duplicates} duplicates, maybeLost ${maybeLost}, dropped ${s.droppedReported}, ` +
        `resent ${stats?.resent} (${s.disconnected.map((e) => e.resending).join("+")})`;
      console.log(summary);
      assert.ok(
        missing.length <= maybeLost + s.droppedReported,
        `${summary}: lost silently: ${missing.slice(0, 10).join(", ")}...`,
      );
      assert.equal(
        stats.maybeLost,
        maybeLost,
        `${summary}: bus.stats.maybeLost is the sum of the events`,
      );
      assert.deepEqual(
        s.reconnected.map((e) => e.maybeLost),
        s.disconnected.map((e) => e.maybeLost),
      );
      if (s.name !== "hostStream") {
        // On the ring nothing is lost: what the broker never read is re-sent; at most the one
        // record it was handling when it died arrives twice.
        assert.ok(
          s.disconnected[1].resending > 0,
          `${summary}: resolved publishes the frozen broker never read were recovered`,
        );
        assert.equal(maybeLost, 0, summary);
        assert.ok(missing.length <= s.droppedReported, summary);
        assert.ok(
          stats.resent > 0,
          `${summary}: records unread in the frozen broker's ring were re-sent`,
        );
        assert.equal(stats.resent, s.reconnected.reduce((sum, e) => sum + e.resent, 0));
        assert.ok(duplicates <= 2, summary);
      } else {
        assert.equal(duplicates, 0, summary);
      }
    }
  } finally {
    stop.now = true;
    await Promise.all(streams.map((s) => s.running));
    for (const b of buses) await b.close();
    broker.child.kill("SIGKILL");
    await broker.exited;
    await vm.stop();
    rmSync(shm, { force: true });
    cleanup();
  }
});

test("crash resend: recovering a ring the broker scribbled on is validated and bounded", async () => {
  const { salvageOutboundRing } = await import("../src/client/ring_salvage.ts");
  const { initRegion } = await import("../src/ring/region.ts");
  const { RingProducer } = await import("../src/ring/ring.ts");
  const { encodeFrame, parseFrameAt } = await import("../src/protocol/frame.ts");
  const { decodeValue, encodeValue } = await import("../src/protocol/codec.ts");
  const { Op } = await import("../src/protocol/ops.ts");
  const bytes = new Uint8Array(64 * 1024);
  const region = initRegion(bytes, { outboundCapacity: 1024, inboundCapacity: 1024 });
  const ring = region.outbound;
  const i32 = new Int32Array(bytes.buffer);
  const consumerAt = ring.control.CONSUMER_POSITION >> 2;
  // Records of varying size, so the ring's end needs padding records.
  const pub = (n: number) =>
    encodeFrame(Op.Pub, encodeValue(["s", null, null]), encodeValue({ n, pad: "x".repeat(n % 7) }));
  const producer = new RingProducer(bytes, ring);
  // A "broker" reads all but the last 9 records; go round the ring until the unread span
  // crosses its end (bounded: a few thousand records at most).
  const starts: number[] = [];
  let written = 0;
  let wrapped = 0;
  for (; written < 5000; written++) {
    const before = producer.position;
    assert.ok(producer.tryWrite(pub(written)));
    if ((producer.position & (ring.capacity - 1)) < (before & (ring.capacity - 1))) wrapped++;
    starts.push(before);
    if (starts.length > 8) Atomics.store(i32, consumerAt, starts.shift()!);
    const unreadFrom = Atomics.load(i32, consumerAt) >>> 0;
    const crossesEnd =
      (unreadFrom & (ring.capacity - 1)) > (producer.position & (ring.capacity - 1));
    if (wrapped >= 2 && crossesEnd && starts.length === 8) break;
  }
  assert.ok(wrapped >= 2 && written < 5000, "the unread span crosses the ring's end");
  written++;
  assert.ok(
    producer.tryWrite(encodeFrame(Op.Sub, encodeValue([1, "s", null]))),
    "a SUB record too",
  );
  const numbers = (frames: Uint8Array[]) =>
    frames.map((f) =>
      (decodeValue(parseFrameAt(f, 0, f.length, 1 << 20).payload) as { n: number }).n
    );
  const whole = salvageOutboundRing(bytes, ring, 1 << 20);
  assert.equal(whole.problem, undefined);
  assert.equal(whole.skipped, 1, "the SUB is not re-sent");
  const got = numbers(whole.frames);
  assert.equal(got.length, 9, "the nine records not read");
  assert.deepEqual(got, got.map((_, i) => got[0] + i), "in order, none skipped");
  assert.equal(got.at(-1), written - 1, "up to the last one written");

  const head = Atomics.load(i32, consumerAt);
  // A consumer position that is misaligned, ahead of the producer, or a ring behind it.
  for (const forged of [head + 3, producer.position + 8, producer.position - 2048]) {
    Atomics.store(i32, consumerAt, forged);
    const r = salvageOutboundRing(bytes, ring, 1 << 20);
    assert.equal(r.frames.length, 0);
    assert.match(r.problem!, /positions out of range/);
  }
  Atomics.store(i32, consumerAt, head);
  // A record length scribbled after the first record: that one is kept, the walk stops.
  const second = ring.dataOffset + (starts[0] & (ring.capacity - 1)); // the second unread record
  new DataView(bytes.buffer).setUint32(second, 0xfffffff0, true);
  const cut = salvageOutboundRing(bytes, ring, 1 << 20);
  assert.equal(cut.frames.length, 1);
  assert.match(cut.problem!, /record of/);
  // A frame that does not fill its record (or padding that does not reach the end).
  new DataView(bytes.buffer).setUint32(second, 8, true);
  assert.match(salvageOutboundRing(bytes, ring, 1 << 20).problem!, /frame|record/);
  // Zeroed memory a whole ring long: type 0 is never a record; one step, no loop.
  bytes.fill(0, ring.dataOffset, ring.dataOffset + ring.capacity);
  Atomics.store(i32, consumerAt, producer.position - ring.capacity);
  const zero = salvageOutboundRing(bytes, ring, 1 << 20);
  assert.equal(zero.frames.length, 0);
  assert.match(zero.problem!, /record type 0/);
});

test("crash resend: a guest that hangs up on a frozen broker leaves its ring to it: nothing twice", async () => {
  const { dir, cleanup } = tempDir();
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const shm = `/dev/shm/${basename(dir)}-vm1`;
  const listen = join(dir, "broker.sock");
  const config = join(dir, "broker.json");
  writeFileSync(
    config,
    JSON.stringify({
      listen,
      vms: [{ name: "vm1", socket: vm.socketPath, shm, shmSize: SHM_SIZE }],
    }),
  );
  const broker = startBroker(config);
  const buses: Bus[] = [];
  try {
    await waitFor(
      () => vm.hostConnected,
      `the broker connected to the VM\n${broker.log()}`,
      20_000,
    );
    // Quick PINGs: three unanswered ones make the guest hang up on the frozen broker.
    const guest = await connect({
      transport: () => vm.open(),
      shm,
      pingInterval: 100,
      reconnectDelay: 20,
      reconnectMaxDelay: 100,
      timeout: 20_000,
    });
    const host = await connect({ server: listen, timeout: 20_000 });
    buses.push(guest, host);
    assert.equal(guest.dataPath, "ring");
    const received: number[] = [];
    host.subscribe<number>("hang.up", { callback: (_e, m) => void received.push(m.data) });
    await host.flush();
    const disconnected: Extract<StatusEvent, { type: "disconnected" }>[] = [];
    guest.on("disconnected", (e) => disconnected.push(e));
    for (let n = 0; n < 200; n++) await guest.publish("hang.up", n);
    await guest.flush();
    await waitFor(() => received.length === 200, "the first 200 arrived");

    process.kill(broker.child.pid!, "SIGSTOP");
    for (let n = 200; n < 700; n++) await guest.publish("hang.up", n); // into the ring, unread
    await waitFor(() => disconnected.length === 1, "the guest hung up (no PONGs)", 10_000);
    assert.match(disconnected[0].reason, /closed|PONG/i);
    process.kill(broker.child.pid!, "SIGCONT");
    await waitFor(() => guest.isConnected, `the guest is back\n${broker.log()}`, 20_000);
    await guest.flush();
    await host.flush();
    const lost = disconnected[0].maybeLost;
    await waitFor(() => received.length >= 700 - lost, "the left records arrived", 5000).catch(
      () => {},
    );
    const distinct = new Set(received);
    assert.equal(received.length, distinct.size, `nothing twice (${received.length} received)`);
    assert.equal(disconnected[0].resending, 0, "the broker still had the ring: nothing re-sent");
    assert.equal(lost, 500, "the 500 left in the ring are counted as maybe lost");
    const missing = Array.from({ length: 700 }, (_, n) => n).filter((n) => !distinct.has(n));
    assert.ok(missing.length <= lost, `${missing.length} missing`);
    console.log(`hang-up: ${received.length} of 700 arrived, maybeLost ${lost}`);
  } finally {
    for (const b of buses) await b.close();
    broker.child.kill("SIGKILL");
    await broker.exited;
    await vm.stop();
    rmSync(shm, { force: true });
    cleanup();
  }
});

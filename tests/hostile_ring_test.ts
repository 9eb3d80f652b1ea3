/**
 * Hostile guests on the shared-memory path: a VM that writes nonsense into the control words
 * of its own rings, or keeps its outbound ring full. Only that VM may be reset or slowed down;
 * the broker stays up and every other VM's traffic keeps flowing, with a bounded delay.
 * (issue 9, items 1 and 10)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { rmSync } from "node:fs";
import { type Lab, SHM_SIZE, startLab, tempDir, waitFor } from "./helpers.ts";
import { spawnBroker } from "./fixtures/child_broker.ts";
import { rawRingGuest } from "./fixtures/raw_ring_guest.ts";
import { startRingFlood } from "./fixtures/ring_flood.ts";
import { connect } from "../src/client/bus.ts";
import type { Bus } from "../src/client/bus.ts";
import type { BrokerStats, EndpointStats } from "../src/broker/stats.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { Op } from "../src/protocol/ops.ts";

const SUBJECT = "hostile.s";
const N = 1500;
/** ~1 KiB per message: 1,500 of them overflow a 1 MiB ring, so the broker must re-read the
 * consumer position the attacker wrote. */
const PAD = new Uint8Array(1000);

/** Collects `{ n }` messages in arrival order and explains gaps. */
function collector(bus: Bus, subject: string) {
  const got: number[] = [];
  bus.subscribe<{ n: number }>(subject, { callback: (_e, m) => got.push(m.data.n) });
  return {
    got,
    /** "" when `got` is exactly 0..n-1, else what is wrong. */
    problem(n: number): string {
      const missing = n - new Set(got.filter((x) => x < n)).size;
      const firstBad = got.findIndex((x, i) => x !== i);
      if (got.length === n && firstBad < 0) return "";
      return `got ${got.length}/${n} messages, ${missing} missing` +
        (firstBad >= 0 ? `, first out of place at index ${firstBad} (value ${got[firstBad]})` : "");
    },
  };
}

function vmStats(lab: Lab, name: string): EndpointStats {
  return lab.broker.stats().vms.find((v) => v.name === name)!;
}

/**
 * Wait until `count()` reaches `n`, giving up early once it has not moved for `stallMs` (a
 * stream that lost messages never gets there; no need to wait the whole `timeoutMs`).
 */
async function waitForCount(count: () => number, n: number, stallMs = 2000, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let last = -1, since = Date.now();
  while (count() < n && Date.now() < deadline) {
    if (count() !== last) [last, since] = [count(), Date.now()];
    else if (Date.now() - since > stallMs) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

for (
  const [what, delta] of [
    ["misaligned", () => 12],
    // Past anything the broker can have written before it looks again (at most a ring's worth).
    ["ahead of the producer", (capacity: number) => capacity + 4096],
  ] as const
) {
  test(`hostile ring: a bogus CONSUMER_POSITION (${what}) in a guest's inbound ring resets only that guest`, async () => {
    const lab = await startLab({ shm: true, vms: ["bad", "pub"] });
    const host = await lab.host();
    const attacker = await rawRingGuest(() => lab.vms.bad.vm.open(), lab.vms.bad.shm!, SHM_SIZE);
    let pub: Bus | undefined;
    try {
      assert.equal(host.dataPath, "ring");
      const hostSub = collector(host, SUBJECT);
      await host.flush();
      attacker.peer.send(Op.Sub, [1, SUBJECT, null]);
      await attacker.peer.ping();
      // Impossible for an honest guest: the broker's producer trusts this word for free space.
      attacker.scribbleInboundConsumerPosition(
        attacker.inboundProducerPosition() + delta(attacker.inboundCapacity),
      );

      pub = await lab.vms.pub.connect();
      assert.equal(pub.dataPath, "ring");
      let publishError = "";
      try {
        for (let i = 0; i < N; i++) {
          const p = pub.publish(SUBJECT, { n: i, pad: PAD });
          if (i % 100 === 99) await p;
        }
        await pub.flush();
      } catch (err) {
        publishError = (err as Error).message;
      }
      await waitForCount(() => hostSub.got.length, N);
      assert.equal(
        hostSub.problem(N),
        "",
        `host subscriber (publish error: ${publishError || "none"})`,
      );
      assert.equal(publishError, "", "the innocent publisher's publishes and flush succeed");
      const p = vmStats(lab, "pub");
      assert.deepEqual(p.closed, {}, "the innocent publisher's session was never closed");
      assert.equal(p.sessions, 1, "the innocent publisher was never reset");
      await waitFor(
        () => (vmStats(lab, "bad").closed["RING_CORRUPT"] ?? 0) >= 1,
        "RING_CORRUPT",
        5000,
      )
        .catch(() => {});
      assert.ok(
        (vmStats(lab, "bad").closed["RING_CORRUPT"] ?? 0) >= 1,
        `the attacker's session is closed as RING_CORRUPT (closed: ${
          JSON.stringify(vmStats(lab, "bad").closed)
        })`,
      );
    } finally {
      attacker.close();
      await pub?.close();
      await lab.close();
    }
  });
}

/** A stats snapshot from a broker in another process. */
async function remoteStats(host: Bus): Promise<BrokerStats> {
  return (await host.request<BrokerStats>("$VBUS.STATS", null, { timeout: 3000 })).data;
}

test("hostile ring: scribbling the consumer position while the broker holds a backlog for the guest", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "broker.sock");
  const vm = (name: string) => ({
    name,
    socket: join(dir, `${name}.sock`),
    shm: `/dev/shm/${dir.split("/").pop()}-${name}`,
    shmSize: SHM_SIZE,
  });
  const bad = vm("bad"), good = vm("pub");
  const vms = [new SimulatedVm(bad.name, bad.socket), new SimulatedVm(good.name, good.socket)];
  for (const v of vms) await v.start();
  const broker = await spawnBroker({ listen, vms: [bad, good] }, dir);
  let host: Bus | undefined, pub: Bus | undefined;
  let attacker: Awaited<ReturnType<typeof rawRingGuest>> | undefined;
  try {
    await waitFor(() => vms.every((v) => v.hostConnected), "broker linked to both VMs", 20_000);
    host = await connect({ server: listen, timeout: 5000 });
    const hostSub = collector(host, SUBJECT);
    await host.flush();
    attacker = await rawRingGuest(() => vms[0].open(), bad.shm, SHM_SIZE);
    attacker.peer.send(Op.Sub, [1, SUBJECT, null]);
    await attacker.peer.ping();
    pub = await connect({ transport: () => vms[1].open(), shm: good.shm, timeout: 5000 });
    assert.equal(pub.dataPath, "ring");

    // The attacker never reads: its 1 MiB inbound ring fills and the rest waits in the broker.
    for (let i = 0; i < N; i++) {
      const p = pub.publish(SUBJECT, { n: i, pad: PAD });
      if (i % 100 === 99) await p;
    }
    await pub.flush();
    await waitFor(() => hostSub.got.length >= N, "host got the first batch", 20_000);
    const cap = attacker.inboundCapacity;
    await waitFor(
      () => attacker!.inboundProducerPosition() > cap - 4096,
      "the attacker's inbound ring is full (the rest is in the broker's backlog)",
    );
    attacker.scribbleInboundConsumerPosition(attacker.inboundProducerPosition() + 12);
    attacker.peer.send(Op.Doorbell, [1, 1]); // "space freed": the broker looks at once
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(
      broker.exitCode(),
      null,
      `the broker process is still running (stderr: ${broker.stderr().slice(-1500)})`,
    );

    const M = 200;
    let publishError = "";
    try {
      for (let i = N; i < N + M; i++) await pub.publish(SUBJECT, { n: i, pad: PAD });
      await pub.flush();
    } catch (err) {
      publishError = (err as Error).message;
    }
    await waitFor(() => hostSub.got.length >= N + M, "host got the second batch", 10_000).catch(
      () => {},
    );
    assert.equal(
      hostSub.problem(N + M),
      "",
      `host subscriber (publish error: ${publishError || "none"})`,
    );
    assert.equal(
      broker.exitCode(),
      null,
      `the broker is still running (stderr: ${broker.stderr().slice(-1500)})`,
    );
    const stats = await remoteStats(host);
    const badStats = stats.vms.find((v) => v.name === "bad")!;
    const pubStats = stats.vms.find((v) => v.name === "pub")!;
    assert.deepEqual(pubStats.closed, {}, "the innocent publisher was never closed");
    assert.equal(pubStats.sessions, 1);
    assert.ok(
      (badStats.closed["RING_CORRUPT"] ?? 0) >= 1,
      `the attacker's session is closed as RING_CORRUPT (closed: ${
        JSON.stringify(badStats.closed)
      })`,
    );
  } finally {
    attacker?.close();
    await pub?.close();
    await host?.close();
    await broker.stop();
    for (const v of vms) await v.stop();
    for (const f of [bad.shm, good.shm]) rmSync(f, { force: true });
    cleanup();
  }
});

/** The p-th percentile (0..100) of `xs`. */
function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

test("hostile ring: a guest that keeps its outbound ring full and pings cannot stall another VM's round trips", async () => {
  const lab = await startLab({ shm: true, vms: ["bad", "victim"] });
  const host = await lab.host();
  const victim = await lab.vms.victim.connect();
  const FLOOD_MS = 5000;
  const PACE_MS = 10;
  // The attacker runs in its own process (as a guest does): from the test's own thread it
  // could not refill its ring while the broker reads it.
  await lab.vms.bad.vm.stop();
  const flood = startRingFlood(
    lab.vms.bad.vm.socketPath,
    lab.vms.bad.shm!,
    SHM_SIZE,
    FLOOD_MS,
    "flood.nobody",
  );
  try {
    host.subscribe<number>("svc.rtt", { callback: (_e, m) => m.respond(m.data) });
    await host.flush();
    assert.equal(victim.dataPath, "ring");
    // Warm up, then measure only while the flood runs.
    for (let i = 0; i < 20; i++) await victim.request("svc.rtt", i, { timeout: 5000 });
    await flood.ready;
    let floodOver = false;
    flood.done.finally(() => floodOver = true);
    await new Promise((r) => setTimeout(r, 200)); // the ring is full and the pings started
    // One request every PACE_MS, sequentially. The victim shares the broker's thread, so a
    // stall that starts while it sleeps between requests shows up as a late timer, not in the
    // request: each sample is measured from when the request was due, which is the round trip
    // a VM in its own process would see. (A slow round trip does not push the schedule: the
    // next one is due PACE_MS after the previous was due, or when it completed.)
    const rtts: number[] = [];
    let timeouts = 0;
    const t0 = performance.now();
    let due = t0;
    while (rtts.length < 200 && !floodOver && performance.now() - t0 < FLOOD_MS) {
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      try {
        await victim.request("svc.rtt", rtts.length, { timeout: 5000 });
      } catch {
        timeouts++;
      }
      const done = performance.now();
      rtts.push(done - due);
      due = Math.max(due + PACE_MS, done);
    }
    const during = !floodOver;
    const result = await flood.done;
    const p50 = percentile(rtts, 50), p99 = percentile(rtts, 99);
    console.log(
      `victim round trips during the ring flood: n=${rtts.length} p50=${p50.toFixed(2)} ms ` +
        `p99=${p99.toFixed(2)} ms max=${Math.max(...rtts).toFixed(1)} ms ` +
        `over 100 ms: ${rtts.filter((x) => x > 100).length}, timeouts=${timeouts}; ` +
        `attacker wrote ${result.records} records in ${result.refills} refills over ${result.ms} ms`,
    );
    assert.ok(
      result.refills > 10,
      `the attacker really refilled its ring (${result.refills} refills)`,
    );
    assert.ok(
      p99 < 250,
      `victim round-trip p99 ${p99.toFixed(1)} ms (n=${rtts.length}) must stay under 250 ms`,
    );
    assert.equal(timeouts, 0);
    assert.equal(rtts.length, 200, "200 round trips completed while the flood was running");
    assert.ok(during, "the flood lasted through the measurement");
  } finally {
    flood.kill();
    await victim.close();
    await lab.close();
  }
});

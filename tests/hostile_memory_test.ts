/**
 * Hostile guests against the broker's memory (issue 9, items 6, 11 and 12), measured from the
 * outside: the broker runs in its own process and its VmRSS is read from /proc. Each attack is
 * bounded in time and stops early once the broker's growth is far past the bound, so a broker
 * without the fix fails in seconds instead of eating the machine.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Op } from "../src/protocol/ops.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { startChildBroker } from "./fixtures/child_broker.ts";
import { MiB, percentile } from "./fixtures/measure.ts";
import { frame, repeated } from "./fixtures/raw_guest.ts";
import { sleep, until, yieldNow } from "./fixtures/wait.ts";

/** How long a flood runs at most. */
const FLOOD_MS = 5000;

test("hostile memory (item 6): a guest that never reads its port and floods PINGs gets no unbounded PONG queue", async () => {
  await controlReplyFlood("PING");
});

test("hostile memory (item 6): a guest that never reads its port and floods HELLOs gets no unbounded WELCOME queue", async () => {
  await controlReplyFlood("HELLO");
});

/**
 * vm1 never reads its port (its chardev socket is paused before the first byte) and floods
 * `kind` frames, each of which the broker answers (PONG / WELCOME). Meanwhile vm2 publishes to
 * vm3 every 20 ms. The broker's RSS must stay within 96 MiB of where it started, and vm3 must
 * get every message within 2 s.
 */
async function controlReplyFlood(kind: "PING" | "HELLO") {
  const bound = 96 * MiB;
  const b = await startChildBroker({
    vms: [
      { name: "vm1", kind: "raw", reads: false },
      { name: "vm2", kind: "sim" },
      { name: "vm3", kind: "sim" },
    ],
  });
  try {
    const pub = await b.connectVm("vm2");
    const sub = await b.connectVm("vm3");
    const latencies: number[] = [];
    sub.subscribe<{ i: number; t: number }>("victim.flow", {
      callback: (_e, m) => latencies.push(Date.now() - m.data.t),
    });
    await sub.flush();
    const attacker = b.chardev("vm1");
    await attacker.hello();
    const one = kind === "PING"
      ? frame(Op.Ping, [])
      : frame(Op.Hello, { v: 1, features: [], client: "hostile", nonce: 1 });
    const chunk = repeated(one, Math.floor(65536 / one.length));
    await sleep(300); // let the broker settle before the baseline
    const watch = b.watchRss();
    const deadline = Date.now() + FLOOD_MS;
    let stop = false;
    let sent = 0;
    const victim = (async () => {
      while (!stop && Date.now() < deadline) {
        pub.publish("victim.flow", { i: sent++, t: Date.now() });
        await sleep(20);
      }
    })();
    const t0 = Date.now();
    const bytes = await b.chardev("vm1").flood(chunk, deadline, () => watch.growth > 4 * bound);
    const floodMs = Date.now() - t0;
    stop = true;
    await victim;
    await until(() => latencies.length >= sent, "victim messages", 3000).catch(() => {});
    watch.sample();
    watch.stop();
    const frames = Math.round(bytes / one.length);
    console.log(
      `${kind} flood: ${frames} frames (${(bytes / MiB).toFixed(0)} MiB) in ${floodMs} ms; ` +
        `${watch.describe()}; victim ${latencies.length}/${sent} delivered, p50 ` +
        `${percentile(latencies, 0.5)} ms, max ${Math.max(...latencies)} ms`,
    );
    assert.ok(
      watch.growth < bound,
      `broker RSS grew ${(watch.growth / MiB).toFixed(0)} MiB (bound ${bound / MiB} MiB) while a ` +
        `guest that never reads flooded ${frames} ${kind}s: ${watch.describe()}`,
    );
    assert.equal(latencies.length, sent, "every victim message delivered during the flood");
    // "Keeps flowing": a stall detector, not a latency target (a loaded 2-core machine has
    // shown single spikes of ~1.1 s on a fixed broker; the original code stalled for seconds).
    assert.ok(Math.max(...latencies) < 2000, `victim latency max ${Math.max(...latencies)} ms`);
  } finally {
    await b.close();
  }
}

test("hostile memory (item 11): a stalled ring subscriber of 19-byte messages costs at most 2 x maxPendingBytes + 48 MiB", async () => {
  const maxPending = 16 * MiB;
  const bound = 2 * maxPending + 48 * MiB;
  const b = await startChildBroker({
    vms: [
      { name: "vm1", kind: "raw", shm: true }, // the stalled subscriber
      { name: "vm2", kind: "raw" }, // the fast publisher
    ],
    limits: { maxPendingBytes: maxPending },
  });
  const subscriber = b.ringGuest("vm1");
  try {
    await subscriber.negotiate();
    subscriber.peer.send(Op.Sub, [1, "t", null]);
    await subscriber.peer.ping();
    const publisher = b.chardev("vm2");
    await publisher.hello();
    // 19-byte messages: the PUB frame is 12 (header) + 5 (head) + 19 (payload) bytes.
    const pubFrame = encodeFrame(
      Op.Pub,
      encodeValue(["t", null, null]),
      new Uint8Array(19).fill(7),
    );
    const chunk = repeated(pubFrame, Math.floor(65536 / pubFrame.length));
    await sleep(300);
    const watch = b.watchRss();
    const dev1 = b.chardev("vm1");
    const deadline = Date.now() + 10_000;
    const tooMuch = () => watch.growth > 4 * bound;
    const t0 = Date.now();
    const dropping = () => dev1.errors("SLOW_CONSUMER").length > 0;
    let bytes = await b.chardev("vm2").flood(chunk, deadline, () => dropping() || tooMuch());
    const firstDropMs = Date.now() - t0;
    // Keep publishing a quarter as much again: the backlog stays at its bound while the
    // oldest messages are dropped.
    const more = bytes / 4;
    bytes += await b.chardev("vm2").flood(chunk, deadline, (extra) => extra >= more || tooMuch());
    await publisher.sync(20_000).catch(() => {}); // everything published has been routed
    await sleep(300);
    watch.sample();
    watch.stop();
    const vm1 = await b.vmStats("vm1", 20_000);
    const sent = Math.round(bytes / pubFrame.length);
    console.log(
      `19-byte flood: ${sent} messages, first drop after ${firstDropMs} ms; vm1 ring out ` +
        `${vm1.ringMsgsOut}, dropped ${vm1.dropped}; ${watch.describe()}`,
    );
    assert.ok(dropping() || vm1.dropped > 0, "the broker dropped for the stalled subscriber");
    assert.ok(
      watch.growth < bound,
      `broker RSS grew ${(watch.growth / MiB).toFixed(0)} MiB with maxPendingBytes ` +
        `${maxPending / MiB} MiB (bound ${bound / MiB} MiB): ${watch.describe()}`,
    );
  } finally {
    subscriber.unmap();
    await b.close();
  }
});

test("hostile memory (item 12): 2 VMs x 4096 subscriptions to '>' and 4096 distinct subjects: the match cache stays bounded", async () => {
  const bound = 96 * MiB;
  // A small pending bound keeps the non-reading subscribers' output buffers (legitimate,
  // bounded per session) out of the measure: what is left is the router's own memory.
  const b = await startChildBroker({
    vms: [
      { name: "vm1", kind: "raw", reads: false },
      { name: "vm2", kind: "raw", reads: false },
      { name: "vm3", kind: "raw" }, // the publisher
    ],
    limits: { maxSubscriptions: 4096, maxPendingBytes: 1 * MiB },
  });
  try {
    for (const name of ["vm1", "vm2"]) {
      const g = b.chardev(name);
      await g.hello();
      // One queue group per VM: every subscription matches every subject (the cache holds
      // 8192 references per subject) but each publish is delivered once per VM, so the test
      // measures the index and its cache rather than 33 million dropped deliveries.
      const subs = Array.from({ length: 4096 }, (_, i) => frame(Op.Sub, [i + 1, ">", `q-${name}`]));
      b.chardev(name).write(concat(subs));
    }
    const publisher = b.chardev("vm3");
    await publisher.hello();
    let subscribed = 0;
    for (let i = 0; i < 200 && subscribed < 8192; i++) {
      const s = await b.stats();
      subscribed = s.vms.filter((v) => v.name !== "vm3").reduce((n, v) => n + v.subscriptions, 0);
      if (subscribed < 8192) await sleep(25);
    }
    assert.equal(subscribed, 8192, "both VMs hold 4096 subscriptions");
    await sleep(300);
    const watch = b.watchRss();
    const t0 = Date.now();
    const payload = encodeValue(1);
    for (let i = 0; i < 4096; i += 256) {
      const batch = [];
      for (let j = i; j < i + 256; j++) {
        batch.push(encodeFrame(Op.Pub, encodeValue([`s.${j}`, null, null]), payload));
      }
      b.chardev("vm3").write(concat(batch));
      await yieldNow();
      if (watch.growth > 4 * bound) break;
    }
    await publisher.sync(60_000);
    const routedMs = Date.now() - t0;
    await sleep(300);
    watch.sample();
    watch.stop();
    const vm3 = await b.vmStats("vm3", 20_000);
    console.log(
      `4096 subjects x 8192 subscriptions routed in ${routedMs} ms (vm3 in ${vm3.msgsIn}); ${watch.describe()}`,
    );
    assert.ok(
      watch.growth < bound,
      `broker RSS grew ${(watch.growth / MiB).toFixed(0)} MiB (bound ${bound / MiB} MiB) after ` +
        `4096 distinct subjects matched 8192 subscriptions: ${watch.describe()}`,
    );
  } finally {
    await b.close();
  }
});

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

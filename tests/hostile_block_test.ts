/**
 * Hostile guests and the "block" slow-consumer policy (issue 9, items 7 and 8): a VM that
 * blocks on its own subject must not grow the broker without bound, and a VM that blocks on a
 * host service's subject and stops reading must not freeze that service. Who may ask for
 * "block" at all is a permission (`permissions.block`). The broker runs in its own process;
 * memory is its VmRSS; every flood and wait is bounded in time.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Op } from "../src/protocol/ops.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { type ChildBroker, startChildBroker } from "./fixtures/child_broker.ts";
import { MiB } from "./fixtures/measure.ts";
import { repeated } from "./fixtures/raw_guest.ts";
import { sleep, until, untilAsync, within, yieldNow } from "./fixtures/wait.ts";

const MAX_PENDING = 16 * MiB;
/** Item 7's bound on the broker's RSS growth. */
const SELF_BLOCK_BOUND = 2 * MAX_PENDING + 64 * MiB;
const SELF_BLOCK_FLOOD_MS = 6000;

for (const path of ["port", "ring"] as const) {
  const outcome = path === "ring" ? "drops, counted" : "drops, or holds the VM's input";
  test(
    `hostile block (item 7, ${path} path): a "block" subscription on the VM's own subject, flooded while it never reads, stays bounded (${outcome})`,
    async () => {
      const b = await startChildBroker({
        vms: [{
          name: "vm1",
          kind: "raw",
          // The port path never reads its port; the ring path reads its port but never its ring.
          reads: path === "ring",
          shm: path === "ring",
          permissions: { block: true },
        }],
        limits: { maxPendingBytes: MAX_PENDING },
      });
      const dev = b.chardev("vm1");
      const ringGuest = path === "ring" ? b.ringGuest("vm1") : undefined;
      try {
        if (ringGuest) await ringGuest.negotiate();
        else await dev.hello();
        dev.send(Op.Sub, [1, "self.loop", null, "block"]);
        await untilAsync(
          async () => (await b.vmStats("vm1")).subscriptions === 1,
          "vm1 subscribed",
        );
        const payload = new Uint8Array(1024).fill(1);
        const pubHead = encodeValue(["self.loop", null, null]);
        await sleep(300);
        const watch = b.watchRss();
        const deadline = Date.now() + SELF_BLOCK_FLOOD_MS;
        const tooMuch = () => watch.growth > 4 * SELF_BLOCK_BOUND;
        const t0 = Date.now();
        let published = 0;
        if (ringGuest) {
          let n = 0;
          while (Date.now() < deadline && !tooMuch() && !dev.closed) {
            if (ringGuest.publishRing(pubHead, payload)) {
              published++;
              if (++n % 256 === 0) await yieldNow();
            } else {
              await sleep(1); // our outbound ring is full: the broker is not reading it now
            }
          }
        } else {
          const one = encodeFrame(Op.Pub, pubHead, payload);
          const bytes = await dev.flood(repeated(one, 64), deadline, tooMuch);
          published = Math.round(bytes / one.length);
        }
        const floodMs = Date.now() - t0;
        await sleep(300);
        watch.sample();
        watch.stop();
        const first = await b.vmStats("vm1", 20_000);
        await sleep(500);
        const vm1 = await b.vmStats("vm1", 20_000);
        // The broker stopped taking vm1's PUBs (it holds the input of a session whose own output
        // is backed up) rather than reading them without bound.
        const inputHeld = vm1.msgsIn === first.msgsIn && vm1.msgsIn < published;
        const drops = JSON.stringify((vm1 as { drops?: unknown }).drops ?? {});
        console.log(
          `item 7 ${path}: ${published} x 1 KiB published to its own block subscription in ` +
            `${floodMs} ms; vm1 msgsIn ${vm1.msgsIn}, msgsOut ${vm1.msgsOut}, dropped ` +
            `${vm1.dropped} ${drops}, input held ${inputHeld}; ${watch.describe()}`,
        );
        const bound = `${SELF_BLOCK_BOUND / MiB} MiB with maxPendingBytes ${MAX_PENDING / MiB} MiB`;
        assert.ok(
          watch.growth < SELF_BLOCK_BOUND,
          `broker RSS grew ${(watch.growth / MiB).toFixed(0)} MiB (bound ${bound}): ` +
            watch.describe(),
        );
        if (path === "ring") {
          assert.ok(vm1.dropped > 0, `vm1's stats show drops (dropped ${vm1.dropped})`);
        } else {
          // On the port the broker may bound it either way: drop (counted) or stop reading vm1.
          assert.ok(
            vm1.dropped > 0 || inputHeld,
            `neither drops (${vm1.dropped}) nor a held input (${vm1.msgsIn} of ${published} PUBs taken)`,
          );
        }
      } finally {
        ringGuest?.unmap();
        await b.close();
      }
    },
  );
}

test('hostile block (item 8a): a VM without permissions.block cannot subscribe with "block"', async () => {
  const b = await startChildBroker({ vms: [{ name: "vm1", kind: "raw", shm: true }] });
  const dev = b.chardev("vm1");
  const guest = b.ringGuest("vm1");
  try {
    await guest.negotiate();
    dev.send(Op.Sub, [1, "svc.events", null, "block"]);
    dev.send(Op.Sub, [2, "svc.events", null]); // the default policy stays allowed
    await dev.sync();
    const errs = dev.errors();
    const vm1 = await b.vmStats("vm1");
    console.log(`item 8a: ERRs ${JSON.stringify(errs)}; vm1 subscriptions ${vm1.subscriptions}`);
    const denied = errs.find((e) => e.code === "PERMISSION_DENIED");
    assert.ok(
      denied,
      `the "block" SUB was refused with PERMISSION_DENIED (ERRs: ${JSON.stringify(errs)})`,
    );
    assert.match(denied.message, /block/);
    assert.equal(errs.length, 1, "only the block SUB was refused");
    assert.equal(vm1.subscriptions, 1, "the drop-policy SUB stands, the block one does not");
  } finally {
    guest.unmap();
    await b.close();
  }
});

const MAX_BLOCK_MS = 500;
const HEALTH = 40;

for (const path of ["ring", "port"] as const) {
  test(`hostile block (item 8b, ${path} path): a permitted "block" subscriber that stops reading holds a host service for at most maxBlockMs`, async () => {
    const b = await startChildBroker({
      vms: [
        {
          name: "vm1",
          kind: "raw",
          reads: path === "ring", // ring path: reads its port, never its inbound ring
          shm: path === "ring",
          permissions: { block: true },
        },
        { name: "vm2", kind: "sim" },
      ],
      limits: { maxBlockMs: MAX_BLOCK_MS, maxPendingBytes: 1 * MiB },
    });
    const dev = b.chardev("vm1");
    const ringGuest = path === "ring" ? b.ringGuest("vm1") : undefined;
    try {
      if (ringGuest) await ringGuest.negotiate();
      else await dev.hello();
      dev.send(Op.Sub, [1, "svc.events", null, "block"]);
      await untilAsync(
        async () => (await b.vmStats("vm1")).subscriptions === 1,
        "the block SUB stands",
      );
      await serviceFloodWhileBlocked(b, path);
      if (!ringGuest) dev.startReading(); // now read what the broker queued for the port
      await until(
        () => dev.errors("SLOW_CONSUMER").length > 0,
        "ERR SLOW_CONSUMER to the hostile VM",
        5000,
      )
        .catch(() => {});
      const errs = dev.errors().map((e) => e.code);
      console.log(`item 8b ${path}: ERRs to the hostile VM: ${JSON.stringify(errs)}`);
      assert.ok(
        errs.includes("SLOW_CONSUMER"),
        `the hostile VM was sent ERR SLOW_CONSUMER (got ${JSON.stringify(errs)})`,
      );
    } finally {
      ringGuest?.unmap();
      await b.close();
    }
  });
}

/**
 * A host service publishes 8000 x 4 KiB to `svc.events` (which the hostile vm1 blocks on) and,
 * interleaved, 40 health messages that vm2 subscribes to; then it flushes. Every health
 * message and the flush must get through within maxBlockMs + 3 s, and vm1's stats must show
 * drops.
 */
async function serviceFloodWhileBlocked(b: ChildBroker, path: string) {
  const victim = await b.connectVm("vm2");
  const service = await b.host({ shm: true });
  try {
    const health: number[] = [];
    victim.subscribe<{ i: number; t: number }>("health.>", {
      callback: (_e, m) => health.push(Date.now() - m.data.t),
    });
    await victim.flush();
    const event = new Uint8Array(4096).fill(9);
    const t0 = Date.now();
    const deadline = t0 + MAX_BLOCK_MS + 3000;
    const published: Promise<void>[] = [];
    for (let h = 0; h < HEALTH; h++) {
      for (let i = 0; i < 200; i++) published.push(service.publish("svc.events", event));
      published.push(service.publish("health.svc", { i: h, t: Date.now() }));
      if (h % 4 === 3) await yieldNow();
    }
    for (const p of published) p.catch(() => {});
    await until(() => health.length >= HEALTH, "health messages", deadline - Date.now()).catch(
      () => {},
    );
    const healthMs = Date.now() - t0;
    const flushed = await within(
      service.flush().then(() => true, () => false),
      Math.max(1, deadline - Date.now()),
      false,
    );
    const flushMs = Date.now() - t0;
    const vm1 = await b.vmStats("vm1", 10_000);
    const svc = (await b.stats(10_000)).host;
    console.log(
      `item 8b ${path}: ${health.length}/${HEALTH} health messages in ${healthMs} ms (max ` +
        `latency ${health.length ? Math.max(...health) : "-"} ms); service flush ` +
        `${
          flushed ? `resolved at ${flushMs} ms` : "did not resolve"
        }; vm1 dropped ${vm1.dropped}, ` +
        `service blocked ${svc.blocked} time(s)`,
    );
    assert.equal(
      health.length,
      HEALTH,
      `vm2 got ${health.length} of ${HEALTH} health messages within maxBlockMs + 3 s while vm1 held the service`,
    );
    assert.ok(flushed, `the service's flush() resolved within maxBlockMs + 3 s`);
    assert.ok(vm1.dropped > 0, `the hostile VM's stats show drops (dropped ${vm1.dropped})`);
  } finally {
    await within(victim.close(), 2000, undefined);
  }
}

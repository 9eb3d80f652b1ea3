/**
 * Host-local clients woken by futex (`wake: "futex"`): the broker calls FUTEX_WAKE on the
 * client's ring wake word instead of writing a DOORBELL frame, and a Worker sleeps for the
 * client so its event loop never blocks.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { startLab, take, waitFor } from "./helpers.ts";
import { connect } from "../mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("futex wake: a parked host subscriber is woken by FUTEX_WAKE; every message arrives in order", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  const sub = await lab.host({ wake: "futex" });
  const guest = await lab.vms.vm1.connect();
  try {
    assert.equal(sub.dataPath, "ring");
    const it = sub.subscribe<number>("tick");
    const replies = sub.subscribe<number>("svc.inc", {
      callback: (_e, m) => m.respond(m.data + 1),
    });
    await sub.flush();
    // Bursts with pauses longer than the reader's spin, so it parks between them.
    const N = 40;
    for (let i = 0; i < N; i++) {
      await guest.publish("tick", i);
      await sleep(3);
    }
    assert.deepEqual(await take(it, N), Array.from({ length: N }, (_, i) => i));
    for (let i = 0; i < 5; i++) {
      await sleep(3);
      assert.equal((await guest.request<number>("svc.inc", i)).data, i + 1);
    }
    const rs = sub.ringStats!;
    assert.ok(
      rs.futex!.data.sleeps >= N / 2,
      `the subscriber parked in FUTEX_WAIT only ${rs.futex!.data.sleeps} times`,
    );
    // Each burst wakes it: a sleep that runs the whole 50 ms slice means a lost wake-up.
    assert.ok(
      rs.futex!.data.timeouts <= 2,
      `${rs.futex!.data.timeouts} sleeps ran to their timeout`,
    );
    const host = lab.broker.stats().host;
    assert.equal(host.wake, "futex");
    assert.ok(host.futexWakes > 0, `futex wakes ${host.futexWakes}`);
    const vm1 = lab.broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.equal(vm1.wake, "doorbell", "a VM is never woken by futex");
    assert.equal(vm1.futexWakes, 0);
    replies.unsubscribe();
  } finally {
    await guest.close();
    await sub.close();
    await lab.close();
  }
});

test("futex wake: a publisher waiting for ring space is woken by futex; nothing is lost", async () => {
  const lab = await startLab({ shm: true, vms: [] });
  const pub = await lab.host({ wake: "futex" });
  const sub = await lab.host();
  try {
    const it = sub.subscribe<Uint8Array>("bulk", { slow: "block" });
    await sub.flush();
    // 64 MiB through a ring of a few MiB: the publisher fills its ring and waits for space.
    const N = 1024;
    const payload = new Uint8Array(64 * 1024).fill(7);
    const sent = (async () => {
      for (let i = 0; i < N; i++) {
        payload[0] = i & 0xff;
        await pub.publish("bulk", payload);
      }
    })();
    let n = 0;
    for await (const m of it) {
      assert.equal(m.data.length, payload.length);
      assert.equal(m.data[0], n & 0xff, `message ${n} out of order`);
      if (++n === N) break;
    }
    await sent;
    const rs = pub.ringStats!;
    assert.ok(
      rs.spaceWaits > 0,
      "the publisher never had to wait for space: make the test send more",
    );
    assert.ok(rs.futex!.space.sleeps > 0, "the publisher never slept in FUTEX_WAIT");
    assert.equal(
      rs.futex!.space.timeouts,
      0,
      "a futex sleep ran to its timeout while the broker was reading: lost wake-up",
    );
    assert.ok(lab.broker.stats().host.futexWakes > 0, "the publisher was never woken by futex");
  } finally {
    await pub.close();
    await sub.close();
    await lab.close();
  }
});

test("futex wake: asking for it as a guest is a clear error, not a silent fallback", async () => {
  await assert.rejects(
    connect({ port: "/nonexistent/vbus-port", wake: "futex", reconnect: false }),
    /only for host-local clients/,
  );
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    connect({ server: "/nonexistent.sock", wake: "sometimes" as any, reconnect: false }),
    /wake must be "doorbell" or "futex"/,
  );
});

test("futex wake: a subscriber process of the other runtime sleeps on futexes (CLI --wake futex)", async (t) => {
  const other = typeof (globalThis as Record<string, unknown>).Bun !== "undefined" ? "deno" : "bun";
  const bin = join(ROOT, "node_modules/.bin", other);
  if (!existsSync(bin)) {
    t.skip(`${other} binary missing from node_modules/.bin (run npm ci)`);
    return;
  }
  const lab = await startLab({ shm: true, vms: [] });
  const cli = join(ROOT, "src/cli/main.ts");
  const env = { ...process.env, VBUS_SERVER: lab.listen, VBUS_LOG: "warn" };
  const pub = await lab.host();
  try {
    const N = 5;
    const args = [cli, "sub", "fx", "--count", String(N), "--wake", "futex"];
    const sub = spawn(bin, other === "deno" ? ["run", "-A", "--quiet", ...args] : args, {
      env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    sub.stdout.on("data", (d) => out += d);
    const subDone = new Promise<number>((r) => sub.on("close", (c) => r(c ?? -1)));
    await waitFor(
      () => lab.broker.stats().host.subscriptions >= 1,
      `${other} subscriber subscribed`,
      20_000,
    );
    // Gaps longer than the reader's spin: it parks (in FUTEX_WAIT) before each message. A
    // message that lands in the instant between two sleep slices needs no wake, so several.
    for (let i = 0; i < N; i++) {
      await sleep(20);
      await pub.publish("fx", { i });
    }
    assert.equal(await subDone, 0);
    const lines = out.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.data), Array.from({ length: N }, (_, i) => ({ i })));
    const host = lab.broker.stats().host;
    assert.ok(host.ringMsgsOut >= N, `ring out ${host.ringMsgsOut}`);
    assert.ok(host.futexWakes > 0, "the parked subscriber was never woken by futex");
  } finally {
    await pub.close();
    await lab.close();
  }
});

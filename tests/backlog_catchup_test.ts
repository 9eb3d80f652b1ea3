/**
 * A subscriber's ring that was full once must not send every later message through the
 * broker's backlog (issue 11). Once the broker has queued messages for a ring subscriber,
 * each later message used to be queued behind them for as long as the publisher kept up its
 * pace, even when the ring had room again: two copies per message instead of one, for the
 * rest of the stream (measured with `bun bench/broker_cpu.ts`: 97% of 4M messages). Now a
 * delivery first writes what is queued and fits, then goes straight to the ring.
 *
 * Three processes, as in production: the broker here, a ring publisher and a ring
 * subscriber each in a child process of its own (so the subscriber can stall without
 * stopping the broker). The subscriber stalls 200 ms on its first message, long enough for
 * its ring to fill while the publisher goes on.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir, waitFor } from "./helpers.ts";
import { Broker, parseConfig } from "../mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const MOD = JSON.stringify(new URL("../mod.ts", import.meta.url).href);
const BUN = join(ROOT, "node_modules/.bin/bun");
/** Messages in the stream: a few seconds of publishing on this machine. */
const N = 2_000_000;

function child(code: string) {
  const proc = spawn(BUN, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  proc.stdout.on("data", (d) => out += d);
  const exited = new Promise<number>((r) => proc.on("close", (c) => r(c ?? -1)));
  return { proc, out: () => out, exited };
}

test("backlog catch-up: after a subscriber's ring was full once, later messages go straight to its ring again", async () => {
  const { dir, cleanup } = tempDir();
  const socket = join(dir, "broker.sock");
  const broker = new Broker(parseConfig(JSON.stringify({ listen: socket, vms: [] })));
  await broker.start();
  const server = JSON.stringify(socket);
  let pub: ReturnType<typeof child> | undefined;
  const sub = child(`
    import { connect } from ${MOD};
    const bus = await connect({ server: ${server}, shm: true, reconnect: false });
    if (bus.dataPath !== "ring") throw new Error("subscriber not on the ring: " + bus.dataPath);
    let n = 0, stalled = false;
    const all = new Promise((resolve) => bus.subscribe("stream", { slow: "block", callback: () => {
      if (!stalled) { stalled = true; const until = Date.now() + 200; while (Date.now() < until) {} }
      if (++n === ${N}) resolve();
    } }));
    await bus.flush();
    console.log("ready");
    await all;
    console.log("done " + n);
    await bus.close();
  `);
  try {
    await waitFor(() => sub.out().includes("ready"), "subscriber ready", 20_000);
    pub = child(`
      import { connect } from ${MOD};
      const bus = await connect({ server: ${server}, shm: true, reconnect: false });
      if (bus.dataPath !== "ring") throw new Error("publisher not on the ring: " + bus.dataPath);
      const payload = new Uint8Array(64).fill(7);
      for (let i = 0; i < ${N}; i++) if (!bus.tryPublish("stream", payload)) await bus.publish("stream", payload);
      await bus.flush();
      console.log("sent");
      await bus.close();
    `);
    assert.equal(await pub.exited, 0, "publisher failed");
    assert.equal(await sub.exited, 0, "subscriber failed");
    assert.match(sub.out(), new RegExp(`done ${N}`));
    const host = broker.stats().host;
    assert.equal(host.ringMsgsOut, N);
    // The stall did fill the ring (otherwise this test shows nothing)...
    assert.ok(
      host.ringMsgsQueued > 0,
      "the subscriber's ring never filled: no backlog to catch up",
    );
    // ...and once the subscriber caught up, messages stopped going through the backlog.
    assert.ok(
      host.ringMsgsQueued < N / 2,
      `${host.ringMsgsQueued} of ${N} messages went through the backlog`,
    );
  } finally {
    sub.proc.kill();
    pub?.proc.kill();
    await broker.stop();
    cleanup();
  }
});

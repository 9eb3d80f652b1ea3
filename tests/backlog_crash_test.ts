/**
 * A message waiting in a ring subscriber's backlog in the broker survives the broker's end
 * (issue 11's crash gap): the publisher's ring record stays unreleased until the backlog
 * wrote it, so after a crash (SIGKILL) or a stop (SIGTERM) the publisher's client finds it
 * still unread in its ring and sends it again to the next broker. And retention never stops
 * a publisher: with a subscriber that reads nothing, publishing several rings' worth goes on.
 *
 * Real processes: the broker (`vbus broker`), a subscriber and a publisher, each on the
 * shared-memory rings. The subscriber is stopped (SIGSTOP) so that its ring fills and the
 * broker queues the rest; the publisher is stopped while the broker is replaced, so that it
 * reconnects only after the subscriber subscribed again.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { tempDir } from "./helpers.ts";
import { type CliProcess, runCli } from "./fixtures/cli_process.ts";
import { type ClientProcess, startClient } from "./fixtures/run_client.ts";
import { connect } from "../src/client/bus.ts";
import { STATS_SUBJECT } from "../src/broker/broker.ts";
import type { BrokerStats } from "../src/broker/stats.ts";

/** 4 KiB payloads: a host session's 4 MiB rings hold about 1,000 of them. */
const PAYLOAD = 4096;
/**
 * Enough to fill the subscriber's ring and leave ~1.6 MiB in the broker's backlog: within the
 * half of the publisher's ring that retention covers.
 */
const COUNT = 1400;

/** `vbus broker --config FILE` in a child process of the runtime running the tests. */
const startBroker = (config: string): CliProcess =>
  runCli(["broker", "--config", config], { VBUS_LOG: "warn" });

/** Let stopped clients go on, kill them and the broker, and remove the directory. */
async function stopAll(clients: ClientProcess[], broker: CliProcess, cleanup: () => void) {
  for (const c of clients) {
    try {
      process.kill(c.pid, "SIGCONT");
    } catch { /* gone */ }
    c.kill();
    await c.exited;
  }
  broker.child.kill("SIGKILL");
  await broker.done;
  cleanup();
}

/** Counts distinct `n`s on `bk.n`; says "got all" once it has `count` of them. */
const SUBSCRIBER = (count: number) => `
import { connect } from "vbus";
const bus = await connect({ server: process.env.LISTEN, reconnectDelay: 20, reconnectMaxDelay: 100, timeout: 20000 });
const got = new Set();
bus.subscribe("bk.n", { callback: (_e, m) => {
  got.add(m.data.n);
  if (got.size === ${count}) console.log("got all");
} });
bus.on("reconnected", () => bus.flush().then(() => console.log("reconnected")));
await bus.flush();
console.log("ready", bus.dataPath);
setInterval(() => console.log("have", got.size), 1000);
`;

/** Publishes `count` messages, then waits for the broker to have read them (a PONG). */
const PUBLISHER = (count: number) => `
import { connect } from "vbus";
const bus = await connect({ server: process.env.LISTEN, reconnectDelay: 20, reconnectMaxDelay: 100, timeout: 20000 });
const pad = new Uint8Array(${PAYLOAD});
for (let n = 0; n < ${count}; n++) await bus.publish("bk.n", { n, pad });
await bus.flush();
console.log("published", bus.dataPath);
bus.on("reconnected", () => console.log("reconnected, resent", bus.stats.resent));
setInterval(() => {}, 1000);
`;

/** Fills about half its ring's worth of a stalled subscriber's backlog, then publishes 3 MiB. */
const BIG_PUBLISHER = `
import { connect } from "vbus";
const bus = await connect({ server: process.env.LISTEN, reconnect: false, timeout: 20000 });
const small = new Uint8Array(${PAYLOAD});
for (let n = 0; n < 1960; n++) await bus.publish("bk.n", { n, pad: small });
await bus.flush();
console.log("small done");
const t0 = Date.now();
await bus.publish("bk.big", new Uint8Array(3 << 20));
await bus.flush();
console.log("big done in", Date.now() - t0, "ms");
setInterval(() => {}, 1000);
`;

async function crashWithBacklog(how: "SIGKILL" | "SIGTERM") {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "broker.sock");
  const config = join(dir, "broker.json");
  writeFileSync(config, JSON.stringify({ listen, vms: [] }));
  let broker = startBroker(config);
  const clients: ClientProcess[] = [];
  try {
    await waitForBroker(listen, broker.stderr);
    const env = { LISTEN: listen };
    const sub = startClient(SUBSCRIBER(COUNT), { env, killAfterMs: 120_000 });
    clients.push(sub);
    await sub.waitFor("ready ring", 30_000);
    process.kill(sub.pid, "SIGSTOP");
    const pub = startClient(PUBLISHER(COUNT), { env, killAfterMs: 120_000 });
    clients.push(pub);
    // Every record read by the broker: the ~1,000 that fit are in the subscriber's ring, the
    // rest in the broker's backlog for it.
    await pub.waitFor("published ring", 60_000);
    process.kill(pub.pid, "SIGSTOP");
    broker.child.kill(how);
    await broker.done;
    broker = startBroker(config);
    await waitForBroker(listen, broker.stderr);
    process.kill(sub.pid, "SIGCONT");
    await sub.waitFor("reconnected", 30_000);
    process.kill(pub.pid, "SIGCONT");
    await pub.waitFor("reconnected, resent", 30_000);
    await sub.waitFor("got all", 20_000).catch((err) => {
      assert.fail(
        `the subscriber did not get all ${COUNT} messages after the broker's ${how}:\n` +
          `subscriber: ${sub.out().trim().split("\n").slice(-3).join(" | ")}\n` +
          `publisher: ${pub.out().trim()}\n${(err as Error).message.split("\n")[0]}`,
      );
    });
  } finally {
    await stopAll(clients, broker, cleanup);
  }
}

/** The broker listens (a client can connect and get a PONG). */
async function waitForBroker(listen: string, log: () => string) {
  const bus = await connect({
    server: listen,
    timeout: 20_000,
    shm: false,
    waitOnFirstConnect: true,
  }).catch((err) => {
    throw new Error(`the broker did not come up: ${(err as Error).message}\n${log()}`);
  });
  await bus.close();
}

test("backlog crash: a message queued in the broker for a ring subscriber is sent again after kill -9 of the broker", async () => {
  await crashWithBacklog("SIGKILL");
});

test("backlog crash: ... and after the broker stops (SIGTERM) with it still queued", async () => {
  await crashWithBacklog("SIGTERM");
});

/**
 * A broker, and a ring subscriber of `count` messages stopped (SIGSTOP) once it is ready: it
 * reads nothing. Then `publisher` runs, and `then` watches them.
 */
async function withStoppedSubscriber(
  count: number,
  publisher: string,
  then: (run: { listen: string; sub: ClientProcess; pub: ClientProcess }) => Promise<void>,
) {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "broker.sock");
  const config = join(dir, "broker.json");
  writeFileSync(config, JSON.stringify({ listen, vms: [] }));
  const broker = startBroker(config);
  const clients: ClientProcess[] = [];
  try {
    await waitForBroker(listen, broker.stderr);
    const env = { LISTEN: listen };
    const sub = startClient(SUBSCRIBER(count), { env, killAfterMs: 120_000 });
    clients.push(sub);
    await sub.waitFor("ready ring", 30_000);
    process.kill(sub.pid, "SIGSTOP");
    const pub = startClient(publisher, { env, killAfterMs: 120_000 });
    clients.push(pub);
    await then({ listen, sub, pub });
  } finally {
    await stopAll(clients, broker, cleanup);
  }
}

test("backlog crash: retention never stops a publisher (a subscriber that reads nothing, four rings' worth)", async () => {
  // 16 MiB to a subscriber whose 4 MiB ring is full: the broker's backlog takes the rest
  // (within maxPendingBytes), and retention lets go of what is beyond half the publisher's
  // ring instead of holding the publisher.
  await withStoppedSubscriber(4 * 1000, PUBLISHER(4 * 1000), async ({ listen, sub, pub }) => {
    await pub.waitFor("published ring", 60_000);
    process.kill(sub.pid, "SIGCONT");
    await sub.waitFor("got all", 30_000);
    // What retention let go is counted (about three quarters of the 16 MiB).
    const bus = await connect({ server: listen, shm: false, timeout: 20_000 });
    try {
      const { data } = await bus.request<BrokerStats>(STATS_SUBJECT, null, { timeout: 10_000 });
      assert.ok(
        data.host.ringUnretained > 1000 && data.host.ringUnretained < 4000,
        `ringUnretained ${data.host.ringUnretained} (queued ${data.host.ringMsgsQueued})`,
      );
    } finally {
      await bus.close();
    }
  });
});

test("backlog crash: a message larger than the half of the ring retention leaves free still goes through", async () => {
  // The broker retains half the publisher's 4 MiB ring for the stopped subscriber's backlog;
  // 3 MiB then fits only once the broker lets retention go for the waiting publisher.
  await withStoppedSubscriber(1960, BIG_PUBLISHER, async ({ pub }) => {
    await pub.waitFor("small done", 60_000);
    await pub.waitFor("big done", 15_000);
  });
});

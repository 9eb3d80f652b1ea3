/**
 * The broker as a service (issue 15, item 6): SIGTERM drains (what is queued for a slow
 * subscriber still reaches it, within drainTimeoutMs, and the process exits 0), and systemd's
 * readiness protocol: READY=1 on the NOTIFY_SOCKET the test creates (a real unix datagram
 * socket, played by the test), RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
 * The unit file in deploy/systemd/ is checked by `systemd-analyze verify` when it exists.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { delay, SHM_SIZE, tempDir, waitFor } from "./helpers.ts";
import { exitWithin, killQuietly, ROOT, runCli, signal } from "./fixtures/cli_process.ts";
import { type Bus, connect } from "../src/client/bus.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { type ClientProcess, startClient } from "./fixtures/run_client.ts";

/** Messages the test streams through a subscriber too slow for them. */
const N = 6000;
/** Each is this big: N of them are far more than the subscriber's ring holds. */
const PAYLOAD = "x".repeat(2000);
/**
 * A host client that publishes N messages of PAYLOAD to "work", flushes and says so in the
 * file `done` (a file, not its stdout: Deno reads a child's pipe late while this process's
 * slow subscriber keeps its event loop busy).
 */
const PUBLISHER = (listen: string, done: string) => `
import { writeFileSync } from "node:fs";
import { connect } from "vbus";
const bus = await connect({ server: ${JSON.stringify(listen)}, timeout: 5000, reconnect: false });
const pad = "x".repeat(${PAYLOAD.length});
for (let i = 0; i < ${N}; i++) await bus.publish("work", { i, pad });
await bus.flush();
writeFileSync(${JSON.stringify(done)}, "published");
await bus.close();
`;

test("lifecycle: SIGTERM while a slow subscriber has a backlog: all of it is delivered within the drain timeout and the broker exits 0", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "b.sock");
  const shm = `/dev/shm/${basename(dir)}-vm1`;
  const config = join(dir, "broker.jsonc");
  writeFileSync(
    config,
    JSON.stringify({
      listen,
      drainTimeoutMs: 20_000,
      vms: [{ name: "vm1", socket: join(dir, "vm1.sock"), shm, shmSize: SHM_SIZE }],
    }),
  );
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const broker = runCli(["broker", "--config", config], { VBUS_LOG: "info" });
  let subscriber: Bus | undefined;
  let publisher: ClientProcess | undefined;
  try {
    await waitFor(() => vm.hostConnected, "broker connected to vm1", 15_000);
    // The slow subscriber: a guest on the ring that spends 0.5 ms on each message.
    subscriber = await connect({
      transport: () => vm.open(),
      shm,
      timeout: 5000,
      reconnect: false,
    });
    assert.equal(subscriber.dataPath, "ring");
    const got: number[] = [];
    subscriber.subscribe("work", {
      maxPending: N * 2,
      callback: (_e, m) => {
        const until = performance.now() + 0.5;
        while (performance.now() < until) { /* a slow consumer */ }
        got.push((m.data as { i: number }).i);
      },
    });
    await subscriber.flush();
    // The publisher is a process of its own: in this one, the subscriber's busy callbacks
    // would slow it down to the subscriber's pace, and no backlog would form.
    const published = join(dir, "published");
    publisher = startClient(PUBLISHER(listen, published), { killAfterMs: 60_000 });
    await waitFor(() => existsSync(published), "the publisher's N messages", 30_000);
    const atSigterm = got.length;
    signal(broker, "SIGTERM");
    assert.ok(
      atSigterm < N / 2,
      `a backlog at SIGTERM: the subscriber had ${atSigterm} of ${N} (a ring holds far fewer)`,
    );
    const t0 = Date.now();
    await waitFor(() => /draining: accepting nothing new/.test(broker.stderr()), "draining", 5000);
    await assert.rejects(
      connect({ server: listen, timeout: 300, reconnect: false }),
      /could not connect/,
      "a new host client is refused while the broker drains",
    );
    const { code, signal: killedBy } = await exitWithin(broker, 30_000, "broker after SIGTERM");
    const drainMs = Date.now() - t0;
    await waitFor(() => got.length >= N, `all ${N} delivered (have ${got.length})`, 10_000);
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i), "in order, none lost");
    assert.equal(killedBy, null, broker.stderr());
    assert.equal(code, 0, broker.stderr());
    assert.ok(drainMs < 20_000, `drained in ${drainMs} ms, within drainTimeoutMs`);
    assert.match(broker.stderr(), /draining: accepting nothing new/);
    assert.match(broker.stderr(), /drained: everything queued was handed to its session/);
    assert.ok(!existsSync(listen), "the host socket is gone");
  } finally {
    await subscriber?.close();
    publisher?.kill();
    await publisher?.exited;
    killQuietly(broker);
    await broker.done;
    await vm.stop();
    rmSync(shm, { force: true });
    cleanup();
  }
});

test("lifecycle: a drain that cannot finish in drainTimeoutMs still stops and exits 0", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "b.sock");
  const config = join(dir, "broker.jsonc");
  writeFileSync(config, JSON.stringify({ listen, drainTimeoutMs: 300, vms: [] }));
  const broker = runCli(["broker", "--config", config], { VBUS_LOG: "info" });
  const { connect: netConnect } = await import("node:net");
  const { encodeFrame, FrameDecoder } = await import("../src/protocol/frame.ts");
  const { encodeValue } = await import("../src/protocol/codec.ts");
  const { Op, PROTOCOL_VERSION } = await import("../src/protocol/ops.ts");
  let publisher: Bus | undefined;
  const raw = { socket: undefined as ReturnType<typeof netConnect> | undefined };
  try {
    await waitFor(() => existsSync(listen), "broker listening", 15_000);
    // A subscriber that never reads: what is queued for it can never be handed over. The
    // socket file exists from bind(), a moment before listen(): a refused connect is retried.
    let socket!: ReturnType<typeof netConnect>;
    for (let attempt = 0;; attempt++) {
      socket = raw.socket = netConnect(listen);
      const err = await new Promise<Error | undefined>((resolve) =>
        socket.once("connect", () => resolve(undefined)).once("error", resolve)
      );
      if (!err) break;
      socket.destroy();
      if (attempt >= 100) throw err;
      await delay(20);
    }
    // HELLO, SUB, PING: the PONG says the broker has the subscription; then stop reading.
    const decoder = new FrameDecoder(1 << 20);
    let pong = false;
    socket.on("data", (chunk: Uint8Array) => {
      decoder.push(chunk, (f) => {
        if (f.op === Op.Pong && !pong) {
          pong = true;
          socket.pause();
        }
      });
    });
    socket.write(
      encodeFrame(Op.Hello, encodeValue({ v: PROTOCOL_VERSION, features: [], nonce: 1 })),
    );
    socket.write(encodeFrame(Op.Sub, encodeValue([1, "t", null])));
    socket.write(encodeFrame(Op.Ping, encodeValue([])));
    await waitFor(() => pong, "the raw subscriber's PONG");
    publisher = await connect({ server: listen, timeout: 5000, reconnect: false, shm: false });
    for (let i = 0; i < 40; i++) await publisher.publish("t", new Uint8Array(60_000));
    await publisher.flush();
    const t0 = Date.now();
    signal(broker, "SIGTERM");
    const { code } = await exitWithin(broker, 15_000, "broker after SIGTERM");
    assert.equal(code, 0, broker.stderr());
    assert.ok(Date.now() - t0 < 5000, "the timeout bounded the drain");
    assert.match(
      broker.stderr(),
      /drain timed out: closing with messages still queued .*pendingBytes=\d+/,
    );
  } finally {
    raw.socket?.destroy();
    await publisher?.close();
    killQuietly(broker);
    await broker.done;
    cleanup();
  }
});

test("lifecycle: READY=1 on NOTIFY_SOCKET once the broker serves; RELOADING=1 then READY=1 on SIGHUP; STOPPING=1 on SIGTERM", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "b.sock");
  const notifyPath = join(dir, "notify.sock");
  const config = join(dir, "broker.jsonc");
  writeFileSync(config, JSON.stringify({ listen, vms: [] }));
  // The test plays systemd: a unix datagram socket, read through the FFI datagram calls.
  const { listenDatagram } = await import("../ffi/unix_datagram.ts");
  const systemd = await listenDatagram(notifyPath);
  const heard: { at: number; text: string; listening: boolean }[] = [];
  const poll = setInterval(() => {
    for (let text = systemd.receive(); text !== undefined; text = systemd.receive()) {
      heard.push({ at: Date.now(), text, listening: existsSync(listen) });
    }
  }, 5);
  const broker = runCli(["broker", "--config", config], {
    NOTIFY_SOCKET: notifyPath,
    VBUS_LOG: "warn",
  });
  try {
    await waitFor(() => heard.some((h) => /^READY=1$/m.test(h.text)), "READY=1", 15_000);
    const ready = heard.find((h) => /^READY=1$/m.test(h.text))!;
    assert.ok(ready.listening, "READY=1 came once the host socket listened");
    assert.match(ready.text, /^STATUS=serving 0 VM\(s\)$/m);
    assert.match(ready.text, new RegExp(`^MAINPID=${broker.pid}$`, "m"));
    const client = await connect({ server: listen, timeout: 2000 });
    await client.close();

    heard.length = 0;
    signal(broker, "SIGHUP");
    await waitFor(() => heard.some((h) => /^READY=1$/m.test(h.text)), "READY=1 after the reload");
    assert.match(heard[0].text, /^RELOADING=1$/m);
    const usec = /^MONOTONIC_USEC=(\d+)$/m.exec(heard[0].text);
    assert.ok(usec, `MONOTONIC_USEC with RELOADING=1: ${heard[0].text}`);
    const uptimeUs = Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1e6;
    assert.ok(Math.abs(Number(usec[1]) - uptimeUs) < 60e6, "MONOTONIC_USEC is CLOCK_MONOTONIC");
    assert.match(heard[heard.length - 1].text, /^STATUS=reloaded: nothing changed$/m);

    heard.length = 0;
    signal(broker, "SIGTERM");
    const { code } = await exitWithin(broker, 15_000, "broker after SIGTERM");
    assert.equal(code, 0);
    await delay(20);
    assert.ok(heard.some((h) => /^STOPPING=1$/m.test(h.text)), JSON.stringify(heard));
  } finally {
    clearInterval(poll);
    systemd.close();
    killQuietly(broker);
    await broker.done;
    cleanup();
  }
});

test("lifecycle: deploy/systemd/vbus-broker.service is a Type=notify unit systemd accepts", (t) => {
  const unitPath = join(ROOT, "deploy/systemd/vbus-broker.service");
  const unit = readFileSync(unitPath, "utf8");
  const value = (key: string) => new RegExp(`^${key}=(.*)$`, "m").exec(unit)?.[1];
  assert.equal(value("Type"), "notify");
  assert.equal(value("NotifyAccess"), "main");
  assert.equal(value("ExecReload"), "/bin/kill -HUP $MAINPID");
  assert.equal(value("User"), "vbus");
  assert.match(value("ExecStart") ?? "", / broker --config \/etc\/vbus\/broker\.jsonc$/);
  const analyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
  if (analyze.status !== 0) {
    t.skip("systemd-analyze is not installed (apt-get install systemd): the unit was only read");
    return;
  }
  // Verified as installed: the binary it starts must exist, so point it at this checkout.
  const { dir, cleanup } = tempDir();
  try {
    const runtime = join(ROOT, "node_modules/.bin/bun");
    assert.ok(statSync(runtime).isFile());
    const local = unit.replace(/^ExecStart=\S+/m, `ExecStart=${runtime}`)
      .replace(/\/opt\/vbus\//g, `${ROOT}/`);
    mkdirSync(join(dir, "units"));
    const copy = join(dir, "units/vbus-broker.service");
    writeFileSync(copy, local);
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", copy], { encoding: "utf8" });
    const problems = (r.stdout + r.stderr).split("\n").filter((l) =>
      l.includes("vbus-broker.service") && !/Failed to .*(bus|connect)/i.test(l)
    );
    assert.deepEqual(problems, [], `systemd-analyze verify: ${r.stdout}${r.stderr}`);
  } finally {
    cleanup();
  }
});

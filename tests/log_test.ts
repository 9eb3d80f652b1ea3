/**
 * Logs (issue 15, item 7): levels that mean something (debug lines where an operator debugs:
 * negotiation, reconnects, drops), an unknown `VBUS_LOG` is an error at start, JSON lines with
 * `VBUS_LOG_FORMAT=json`, a `logger` option on `connect()`, and errors that say what to do.
 * Real brokers (in process, and as a CLI process), real sockets.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { join } from "node:path";
import process from "node:process";
import { delay, startLab, tempDir, waitFor } from "./helpers.ts";
import { exitWithin, killQuietly, runCli } from "./fixtures/cli_process.ts";
import { connect } from "../src/client/bus.ts";
import { createLogger, type Logger } from "../src/util/log.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { Op, PROTOCOL_VERSION } from "../src/protocol/ops.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";

/** A logger that keeps its lines (JSON, so tests read fields). */
function capture(
  level: "debug" | "info" = "debug",
): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger("t", { level, format: "json", write: (l) => lines.push(JSON.parse(l)) });
  return { log, lines };
}

const msgs = (lines: Record<string, unknown>[]) => lines.map((l) => `${l.level} ${l.msg}`);

/** Run `fn` with environment variables set, restoring them after. */
async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test("log: levels filter, text and JSON lines, and a bad level or format is refused with the choices", () => {
  const text: string[] = [];
  const info = createLogger("c", { level: "info", format: "text", write: (l) => text.push(l) });
  info.debug("hidden");
  info.info("shown", { vm: "vm1", why: "two words", n: 3, err: new Error("boom") });
  assert.equal(text.length, 1, "debug is below info");
  assert.match(text[0], /^\S+Z INFO \[c\] shown vm=vm1 why="two words" n=3 err=boom$/);
  const { log, lines } = capture();
  log.debug("d", { msg: "a field named like a key", big: 12n });
  assert.deepEqual(
    { level: lines[0].level, component: lines[0].component, msg: lines[0].msg },
    { level: "debug", component: "t", msg: "d" },
  );
  assert.equal(lines[0]["field.msg"], "a field named like a key");
  assert.equal(lines[0].big, "12");
  assert.throws(
    () => createLogger("c", { level: "loud" as "info" }),
    /"loud" is not a log level: use one of debug, info, warn, error, silent/,
  );
});

test("log: an unknown VBUS_LOG or VBUS_LOG_FORMAT stops the broker and client commands at start, saying what is allowed", async () => {
  const { dir, cleanup } = tempDir();
  const config = join(dir, "broker.jsonc");
  writeFileSync(config, JSON.stringify({ listen: join(dir, "b.sock"), vms: [] }));
  const procs = [];
  try {
    for (
      const [env, message] of [
        [
          { VBUS_LOG: "verbose" },
          /VBUS_LOG="verbose" is not a log level: use one of debug, info, warn, error, silent/,
        ],
        [
          { VBUS_LOG_FORMAT: "xml" },
          /VBUS_LOG_FORMAT="xml" is not a log format: use one of text, json/,
        ],
      ] as const
    ) {
      const broker = runCli(["broker", "--config", config], env);
      procs.push(broker);
      const { code } = await exitWithin(broker, 8000, `broker with ${JSON.stringify(env)}`);
      assert.equal(code, 2, broker.stderr());
      assert.match(broker.stderr(), message);
      assert.doesNotMatch(broker.stderr(), /broker started/);
    }
    const pub = runCli(["pub", "a", "1", "--server", join(dir, "b.sock")], { VBUS_LOG: "loud" });
    procs.push(pub);
    const { code } = await exitWithin(pub, 8000, "pub with VBUS_LOG=loud");
    assert.equal(code, 2);
    assert.match(pub.stderr(), /VBUS_LOG="loud" is not a log level/);
  } finally {
    procs.forEach(killQuietly);
    cleanup();
  }
});

test("log: VBUS_LOG=debug VBUS_LOG_FORMAT=json: one JSON object per line, with the VM link's retries and the shared-memory negotiation", async () => {
  const { dir, cleanup } = tempDir();
  const vmSock = join(dir, "vm1.sock");
  const shm = `/dev/shm/vbus-logtest-${process.pid}`;
  const config = join(dir, "broker.jsonc");
  writeFileSync(
    config,
    JSON.stringify({
      listen: join(dir, "b.sock"),
      vms: [{ name: "vm1", socket: vmSock, shm, shmSize: 1 << 20 }],
    }),
  );
  const broker = runCli(["broker", "--config", config], {
    VBUS_LOG: "debug",
    VBUS_LOG_FORMAT: "json",
  });
  const vm = new SimulatedVm("vm1", vmSock);
  try {
    const lines = () =>
      broker.stderr().split("\n").filter((l) => l !== "").map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          assert.fail(`not a JSON line: ${l}`);
        }
      });
    // The VM is not there yet: the link retries, and each retry is a debug line.
    await waitFor(
      () => lines().filter((l) => l.level === "debug" && /retry/.test(String(l.msg))).length >= 2,
      "two debug lines about retrying the VM port",
      10_000,
    );
    await vm.start();
    await waitFor(() => vm.hostConnected, "broker connected to vm1", 10_000);
    const guest = await connect({ transport: () => vm.open(), shm, timeout: 5000 });
    assert.equal(guest.dataPath, "ring");
    await guest.close();
    await waitFor(
      () => lines().some((l) => l.msg === "shared-memory negotiation" && l.ok === true),
      "a debug line on the negotiation",
      5000,
    );
    const all = lines();
    for (const l of all) {
      assert.equal(typeof l.time, "string");
      assert.ok(["debug", "info", "warn", "error"].includes(String(l.level)), String(l.level));
      assert.equal(typeof l.component, "string");
      assert.equal(typeof l.msg, "string");
    }
    const negotiation = all.find((l) => l.msg === "shared-memory negotiation")!;
    assert.equal(negotiation.level, "debug");
    assert.match(String(negotiation.session), /^vm1#/);
    assert.ok(all.some((l) => l.level === "info" && l.msg === "broker started"));
  } finally {
    killQuietly(broker);
    await broker.done;
    await vm.stop();
    rmSync(shm, { force: true });
    cleanup();
  }
});

test("log: debug lines on the broker's drop decisions, none at info", async () => {
  for (const level of ["debug", "info"] as const) {
    const { log, lines } = capture(level);
    const lab = await startLab({
      vms: [],
      limits: { maxPendingBytes: 4096 },
      broker: { logger: log },
    });
    // A host client that subscribes and never reads: its socket fills, the broker drops.
    const raw = netConnect(lab.listen);
    try {
      await new Promise<void>((resolve, reject) =>
        raw.once("connect", resolve).once("error", reject)
      );
      raw.pause();
      raw.write(
        encodeFrame(Op.Hello, encodeValue({ v: PROTOCOL_VERSION, features: [], nonce: 1 })),
      );
      raw.write(encodeFrame(Op.Sub, encodeValue([1, "t", null])));
      const pub = await lab.host({ shm: false });
      await waitFor(() => lab.broker.stats().host.subscriptions === 1, "raw subscriber counted");
      const payload = new Uint8Array(60_000);
      for (let i = 0; i < 200 && lab.broker.stats().host.dropped === 0; i++) {
        await pub.publish("t", payload);
        if (i % 20 === 19) await pub.flush();
      }
      await pub.flush();
      await waitFor(
        () => lab.broker.stats().host.dropped > 0,
        "the broker dropped for the raw subscriber",
      );
      const debug = lines.filter((l) => l.msg === "dropping messages for a session");
      if (level === "debug") {
        assert.ok(debug.length >= 1, msgs(lines).join("\n"));
        assert.equal(debug[0].reason, "slow_consumer");
        assert.equal(debug[0].maxPendingBytes, 4096);
      } else {
        assert.equal(debug.length, 0, "no debug line at info");
        assert.ok(lines.every((l) => l.level !== "debug"));
      }
    } finally {
      raw.destroy();
      await lab.close();
    }
  }
});

test("log: connect({ logger }) gets the client's lines: connected, disconnected and retries at debug", async () => {
  const lab = await startLab({ vms: [] });
  const { log, lines } = capture();
  const bus = await connect({ server: lab.listen, logger: log, shm: false, reconnectDelay: 20 });
  try {
    await lab.broker.stop();
    await waitFor(() => lines.some((l) => l.msg === "disconnected"), "a disconnected line");
    await waitFor(
      () => lines.some((l) => l.msg === "connect attempt failed, retrying"),
      "a retry line",
    );
    await lab.restartBroker();
    await waitFor(() => lines.some((l) => l.msg === "reconnected"), "a reconnected line");
    const first = lines.find((l) => l.msg === "connected")!;
    assert.equal(first.level, "debug");
    assert.equal(first.identity, "host");
    assert.equal(first.path, "stream");
    assert.equal(first.why, "disabled by the shm option");
  } finally {
    await bus.close();
    await lab.close();
  }
});

test("log: a bad VBUS_LOG makes connect() fail with the choices; with a logger it is not read", async () => {
  const lab = await startLab({ vms: [] });
  try {
    await withEnv({ VBUS_LOG: "chatty" }, async () => {
      await assert.rejects(
        connect({ server: lab.listen, timeout: 2000 }),
        /VBUS_LOG="chatty" is not a log level: use one of debug, info, warn, error, silent/,
      );
      const bus = await connect({ server: lab.listen, logger: capture().log, timeout: 2000 });
      await bus.close();
    });
  } finally {
    await lab.close();
  }
});

test("log: a client that finds no broker is told what to do", async () => {
  const { dir, cleanup } = tempDir();
  try {
    await assert.rejects(
      connect({ server: join(dir, "none.sock"), timeout: 300, logger: capture().log }),
      /no broker listens on .*none\.sock, there is no socket file: .*Start one with `vbus broker --config FILE`/,
    );
  } finally {
    cleanup();
  }
  await delay(0);
});

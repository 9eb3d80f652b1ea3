/**
 * Hostile payloads (issue 9, item 13): a VM publishes values no client should decode, a
 * truncated msgpack value and a cyclic structured-clone graph, as raw frames. Every receiver,
 * the library (callback and iterator, on the port stream and on the rings) and the real CLI
 * processes (`vbus sub`, `vbus reply`, `vbus req`), must report the bad message and still
 * receive the next good one.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { Packr } from "msgpackr";
import { type Lab, startLab, waitFor } from "./helpers.ts";
import { cliCommand } from "./fixtures/cli_process.ts";
import { decodeValueAt, encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame, FrameDecoder } from "../src/protocol/frame.ts";
import { Op, PROTOCOL_VERSION } from "../src/protocol/ops.ts";
import type { Bus } from "../src/client/bus.ts";
import type { Msg } from "../src/client/msg.ts";
import type { StatusEvent } from "../src/client/status.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A msgpack map cut short: the decoder runs out of bytes in the middle of a string. */
const TRUNCATED = (() => {
  const whole = encodeValue({ reading: "a value long enough to be cut", n: 42 });
  return whole.subarray(0, whole.length - 5);
})();
/** An object that contains itself, as msgpackr's structured clone writes it (ext 0x69/0x70). */
const CYCLIC = (() => {
  const loop: Record<string, unknown> = { name: "loop" };
  loop.self = loop;
  return new Packr({ structuredClone: true }).pack(loop);
})();

/** A guest speaking raw frames on `vm`'s port: publishes any bytes as a payload. */
async function rawGuest(lab: Lab, vm: string) {
  const port = await lab.vms[vm].vm.open();
  const frames: { op: number; head: unknown[] }[] = [];
  const onMsg: ((head: unknown[]) => void)[] = [];
  const decoder = new FrameDecoder(1 << 24);
  port.start((chunk) =>
    decoder.push(chunk, (f) => {
      const head = decodeValueAt(f.buf, f.headStart, f.headEnd) as unknown[];
      frames.push({ op: f.op, head });
      if (f.op === Op.Msg) { for (const h of onMsg) h(head); }
    }), () => {});
  port.write(encodeFrame(Op.Hello, encodeValue({ v: PROTOCOL_VERSION, features: [], nonce: 7 })));
  await waitFor(() => frames.some((f) => f.op === Op.Welcome), "WELCOME to the raw guest");
  const welcome = frames.find((f) => f.op === Op.Welcome)!.head as unknown as { inbox: string };
  let sid = 0;
  return {
    welcome,
    frames,
    onMsg,
    publish(subject: string, payload: Uint8Array, reply: string | null = null) {
      port.write(encodeFrame(Op.Pub, encodeValue([subject, reply, null]), payload));
    },
    subscribe(subject: string) {
      port.write(encodeFrame(Op.Sub, encodeValue([++sid, subject, null])));
    },
    /** Resolves when the broker answered a PING: it has handled everything sent before. */
    async flush() {
      const pongs = frames.filter((f) => f.op === Op.Pong).length;
      port.write(encodeFrame(Op.Ping, encodeValue([])));
      await waitFor(() => frames.filter((f) => f.op === Op.Pong).length > pongs, "PONG");
    },
    close: () => port.close(),
  };
}

type Outcome = { data: unknown } | { error: string; code: string };

/** Read `msg.data` as an application would, catching what it throws. */
function outcome(msg: Msg): Outcome {
  try {
    return { data: msg.data };
  } catch (err) {
    return { error: (err as Error).message, code: (err as { code?: string }).code ?? "?" };
  }
}

/** The outcomes every receiver must see for: truncated, cyclic, then { good: 1 }. */
function assertOutcomes(got: Outcome[], who: string) {
  assert.equal(got.length, 3, `${who}: three messages`);
  const [truncated, cyclic, good] = got;
  assert.ok(
    "error" in cyclic && cyclic.code === "CODEC",
    `${who}: the cyclic graph must not be built -> ${
      "data" in cyclic ? "built" : JSON.stringify(cyclic)
    }`,
  );
  assert.match(cyclic.error, /structured-clone/);
  assert.ok(
    "error" in truncated && truncated.code === "CODEC",
    `${who}: truncated -> ${JSON.stringify(truncated)}`,
  );
  assert.match(
    truncated.error,
    /"hostile\.x".*truncated/,
    `${who}: the error names the subject and the problem`,
  );
  assert.deepEqual(good, { data: { good: 1 } }, `${who}: the good message after them`);
}

/** A callback and an iterator subscription on `bus`, each collecting three outcomes. */
function receivers(bus: Bus, who: string) {
  const viaCallback: Outcome[] = [];
  const errs: (Error | null)[] = [];
  bus.subscribe("hostile.x", {
    callback: (err, msg) => {
      errs.push(err);
      viaCallback.push(outcome(msg)); // read inside the callback: on the ring it is in place
    },
  });
  const sub = bus.subscribe("hostile.x");
  const viaIterator = (async () => {
    const got: Outcome[] = [];
    for await (const msg of sub) {
      got.push(outcome(msg)); // the consumer catches and goes on
      if (got.length === 3) break;
    }
    return got;
  })();
  const events: StatusEvent[] = [];
  bus.on("error", (e) => events.push(e));
  return {
    async check() {
      await waitFor(() => viaCallback.length >= 3, `${who}: callback got 3 messages`);
      assertOutcomes(viaCallback, `${who} callback`);
      assert.deepEqual(errs, [null, null, null], `${who}: err is for subscription errors`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const iterated = await Promise.race([
        viaIterator,
        new Promise<never>((_, reject) =>
          timer = setTimeout(() => reject(new Error(`${who}: iterator stalled`)), 5000)
        ),
      ]).finally(() => clearTimeout(timer));
      assertOutcomes(iterated, `${who} iterator`);
      // Each subscription decoded the two bad payloads: four reports, each naming the subject.
      const codec = events.filter((e) => e.type === "error" && e.code === "CODEC");
      assert.equal(
        codec.length,
        4,
        `${who}: one error event per bad message and subscription (${JSON.stringify(events)})`,
      );
      assert.ok(codec.every((e) => e.type === "error" && e.subject === "hostile.x"));
      assert.equal(bus.stats.undecodable, 4, `${who}: stats.undecodable`);
      assert.ok(bus.isConnected, `${who}: still connected`);
    },
  };
}

test("hostile payload: library subscribers (callback and iterator, port stream and rings) report and go on", async () => {
  const lab = await startLab({ shm: true });
  const attacker = await rawGuest(lab, "vm1");
  const guestRing = await lab.vms.vm2.connect();
  const hostRing = await lab.host();
  const hostStream = await lab.host({ shm: false });
  try {
    assert.equal(guestRing.dataPath, "ring");
    assert.equal(hostRing.dataPath, "ring");
    assert.equal(hostStream.dataPath, "stream");
    const checks = [
      receivers(guestRing, "guest on rings"),
      receivers(hostRing, "host on rings"),
      receivers(hostStream, "host on the port stream"),
    ];
    await Promise.all([guestRing.flush(), hostRing.flush(), hostStream.flush()]);
    attacker.publish("hostile.x", TRUNCATED);
    attacker.publish("hostile.x", CYCLIC);
    attacker.publish("hostile.x", encodeValue({ good: 1 }));
    for (const c of checks) await c.check();
  } finally {
    attacker.close();
    await guestRing.close();
    await lab.close();
  }
});

/** Start the CLI under the current runtime. */
function vbus(args: string[], env: Record<string, string>) {
  const { cmd, args: argv } = cliCommand(args);
  const child = spawn(cmd, argv, {
    cwd: ROOT,
    env: { ...process.env, VBUS_LOG: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d) => out += d);
  child.stderr!.on("data", (d) => err += d);
  const done = new Promise<number>((resolve) => child.on("close", (code) => resolve(code ?? -1)));
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000); // bounded, whatever happens
  done.then(() => clearTimeout(timer));
  return { child, done, output: () => out, errors: () => err };
}

test("hostile payload: vbus sub, reply and req print an error line for a bad message and go on", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  const attacker = await rawGuest(lab, "vm1");
  const env = { VBUS_SERVER: lab.listen };
  const host = await lab.host();
  const procs: ReturnType<typeof vbus>[] = [];
  try {
    const hostSubs = () => lab.broker.stats().host.subscriptions;
    // sub: two bad messages, then a good one; --count 3 counts every message delivered.
    const sub = vbus(["sub", "hostile.x", "--count", "3"], env);
    procs.push(sub);
    await waitFor(() => hostSubs() >= 1, "vbus sub subscribed", 20_000);
    attacker.publish("hostile.x", TRUNCATED);
    attacker.publish("hostile.x", CYCLIC);
    attacker.publish("hostile.x", encodeValue({ good: 1 }));
    assert.equal(await sub.done, 0, `vbus sub exit code; stderr: ${sub.errors()}`);
    assert.deepEqual(sub.output().trim().split("\n").map((l) => JSON.parse(l)), [{
      subject: "hostile.x",
      data: { good: 1 },
    }]);
    const subErrors = sub.errors().trim().split("\n");
    assert.equal(subErrors.length, 2, sub.errors());
    assert.match(subErrors[0], /^vbus sub: skipped a bad message: .*"hostile\.x".*truncated/);
    assert.match(subErrors[1], /^vbus sub: skipped a bad message: .*structured-clone/);

    // reply: answers two bad requests (their senders need not time out), then a good one.
    const before = hostSubs();
    const replier = vbus(["reply", "svc.hostile", '"ok"', "--count", "3"], env);
    procs.push(replier);
    await waitFor(() => hostSubs() > before, "vbus reply subscribed", 20_000);
    attacker.subscribe(`${attacker.welcome.inbox}.*`);
    await attacker.flush();
    attacker.publish("svc.hostile", TRUNCATED, `${attacker.welcome.inbox}.1`);
    attacker.publish("svc.hostile", CYCLIC, `${attacker.welcome.inbox}.2`);
    await attacker.flush();
    const answer = await host.request<string>("svc.hostile", { fine: true }, { timeout: 5000 });
    assert.equal(answer.data, "ok", "the good request is answered after the bad ones");
    assert.equal(await replier.done, 0, `vbus reply exit code; stderr: ${replier.errors()}`);
    const lines = replier.output().trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, 1);
    assert.deepEqual(lines[0].data, { fine: true });
    assert.equal(replier.errors().trim().split("\n").length, 2, replier.errors());
    assert.match(replier.errors(), /vbus reply: skipped a bad message: .*truncated/);
    await waitFor(
      () => attacker.frames.filter((f) => f.op === Op.Msg).length >= 2,
      "the bad requests were answered too",
    );

    // req: the reply itself is bad: a clear error and exit code 1, not a crash.
    attacker.subscribe("svc.bad");
    await attacker.flush();
    attacker.onMsg.push(([, , reply]) => {
      if (typeof reply === "string" && !reply.startsWith(attacker.welcome.inbox)) {
        attacker.publish(reply, CYCLIC);
      }
    });
    const req = vbus(["req", "svc.bad", "null", "--timeout", "5000"], env);
    procs.push(req);
    assert.equal(await req.done, 1, `vbus req exit code; stderr: ${req.errors()}`);
    assert.equal(req.output(), "");
    assert.match(
      req.errors(),
      /^vbus req: the reply to "svc\.bad" could not be read: .*structured-clone/,
    );
  } finally {
    for (const p of procs) p.child.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.done));
    attacker.close();
    await lab.close();
  }
});

/**
 * Hostile guests: a raw writer on a VM's port sends malformed, oversized and flooding input.
 * Each gets a clear ERR, and the broker keeps serving the other VMs throughout.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, take, waitFor } from "./helpers.ts";
import type { Port } from "../src/port/port.ts";
import { encodeFrame, type Frame, FrameDecoder } from "../src/protocol/frame.ts";
import { decodeValue, encodeValue } from "../src/protocol/codec.ts";
import { decodeErrHead } from "../src/protocol/heads.ts";
import { Op, PROTOCOL_VERSION } from "../src/protocol/ops.ts";
import { ErrorCode } from "../src/protocol/errors.ts";
import type { Lab } from "./helpers.ts";

/** A guest that speaks frames by hand. */
async function rawGuest(lab: Lab, vm: string) {
  const port: Port = await lab.vms[vm].vm.open();
  const frames: Frame[] = [];
  let closed = false;
  const decoder = new FrameDecoder(1 << 24);
  port.start(
    (chunk) => decoder.push(chunk, (f) => frames.push({ ...f, head: f.head.slice() })),
    () => closed = true,
  );
  const send = (op: number, head: unknown, payload = new Uint8Array(0)) =>
    port.write(encodeFrame(op, encodeValue(head), payload));
  const errs = () => frames.filter((f) => f.op === Op.Err).map((f) => decodeErrHead(f.head));
  return {
    port,
    frames,
    send,
    errs,
    get closed() {
      return closed;
    },
  };
}

async function hello(g: Awaited<ReturnType<typeof rawGuest>>) {
  g.send(Op.Hello, { v: PROTOCOL_VERSION, features: [], nonce: 1 });
  await waitFor(() => g.frames.some((f) => f.op === Op.Welcome), "WELCOME");
}

/** A healthy pair (vm2 -> host) that must keep flowing whatever vm1 does. */
async function healthyFlow(lab: Lab) {
  const good = await lab.vms.vm2.connect();
  const host = await lab.host();
  const sub = host.subscribe<number>("alive");
  await host.flush();
  return {
    async check(n: number) {
      await good.publish("alive", n);
      // Skip anything a misbehaving VM managed to publish on the same subject before.
      let got: number;
      do [got] = await take(sub, 1); while (got !== n && got < 0);
      assert.equal(got, n);
    },
    sub,
    close: () => good.close(),
  };
}

test("bad input: garbage bytes get BAD_FRAME, the session is reset, others keep flowing", async () => {
  const lab = await startLab();
  const healthy = await healthyFlow(lab);
  try {
    const g = await rawGuest(lab, "vm1");
    await hello(g);
    g.port.write(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
    await waitFor(() => g.closed, "broker drops the desynchronised stream");
    assert.equal(g.errs()[0].code, ErrorCode.BadFrame);
    assert.equal(g.errs()[0].fatal, true);
    const vm1 = lab.broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.equal(vm1.closed[ErrorCode.BadFrame], 1);
    await healthy.check(1);
    // The broker reconnects to the VM's port: a new client on vm1 works.
    await waitFor(() => lab.vms.vm1.vm.hostConnected, "broker reconnected to vm1");
    const again = await lab.vms.vm1.connect();
    assert.equal(again.info?.identity, "vm1");
    await again.close();
  } finally {
    await healthy.close();
    await lab.close();
  }
});

test("bad input: an oversized frame is refused before it is buffered", async () => {
  const lab = await startLab({ limits: { maxFrameBytes: 4096 } });
  const healthy = await healthyFlow(lab);
  try {
    const g = await rawGuest(lab, "vm1");
    await hello(g);
    assert.equal(decodeWelcome(g.frames).maxFrameBytes, 4096);
    // Only the header is sent: the broker must not wait for (or buffer) 1 GB.
    const header = encodeFrame(Op.Pub, encodeValue(["x", null, null]), new Uint8Array(0));
    new DataView(header.buffer).setUint32(8, 1 << 30);
    g.port.write(header);
    await waitFor(() => g.closed, "session closed");
    assert.equal(g.errs()[0].code, ErrorCode.FrameTooLarge);
    assert.match(g.errs()[0].message, /exceeds the limit of 4096/);
    await healthy.check(2);
  } finally {
    await healthy.close();
    await lab.close();
  }
});

test("bad input: malformed heads, invalid subjects, unknown sids, PUB before HELLO, bad version", async () => {
  const lab = await startLab();
  const healthy = await healthyFlow(lab);
  try {
    const g = await rawGuest(lab, "vm1");
    g.send(Op.Pub, ["early", null, null]);
    await waitFor(() => g.errs().length === 1, "ERR for PUB before HELLO");
    assert.equal(g.errs()[0].code, ErrorCode.BadState);
    await hello(g);
    g.send(Op.Sub, { not: "an array" });
    g.send(Op.Sub, [1, "a..b", null]);
    g.send(Op.Pub, ["bad subject", null, null]);
    g.send(Op.Pub, ["wild.*", null, null]);
    g.send(Op.Pub, ["x".repeat(300), null, null]);
    g.send(Op.Unsub, [99, 0]); // unknown sid: harmless
    g.send(Op.Sub, [1, "ok", null]);
    g.send(Op.Sub, [1, "dup", null]);
    g.send(Op.Welcome, {});
    await waitFor(() => g.errs().length === 8, "eight ERRs");
    assert.deepEqual(g.errs().map((e) => e.code), [
      ErrorCode.BadState,
      ErrorCode.BadFrame,
      ErrorCode.BadSubject,
      ErrorCode.BadSubject,
      ErrorCode.BadSubject,
      ErrorCode.BadSubject,
      ErrorCode.BadState,
      ErrorCode.BadState,
    ]);
    assert.equal(g.errs()[4].subject, "wild.*");
    assert.ok(!g.closed, "recoverable errors keep the session");
    await healthy.check(3);
    // A wrong protocol version is fatal.
    g.send(Op.Hello, { v: 99, features: [], nonce: 2 });
    await waitFor(() => g.closed, "closed on bad version");
    assert.equal(g.errs().at(-1)!.code, ErrorCode.BadVersion);
    await healthy.check(4);
  } finally {
    await healthy.close();
    await lab.close();
  }
});

test("bad input: too many subscriptions, too many errors", async () => {
  const lab = await startLab({ limits: { maxSubscriptions: 3, maxErrors: 5 } });
  try {
    const g = await rawGuest(lab, "vm1");
    await hello(g);
    for (let i = 1; i <= 4; i++) g.send(Op.Sub, [i, `s.${i}`, null]);
    await waitFor(() => g.errs().length === 1, "limit ERR");
    assert.equal(g.errs()[0].code, ErrorCode.TooManySubscriptions);
    assert.match(g.errs()[0].message, /at most 3 subscriptions/);
    for (let i = 0; i < 10; i++) g.send(Op.Pub, ["bad subject", null, null]);
    await waitFor(() => g.closed, "closed after too many errors");
    assert.equal(g.errs().at(-1)!.code, ErrorCode.SessionClosed);
    assert.equal(lab.broker.stats().vms[0].closed["TOO_MANY_ERRORS"], 1);
  } finally {
    await lab.close();
  }
});

test("bad input: a flooding VM is rate limited with FLOOD errors; others keep flowing", async () => {
  const lab = await startLab({ limits: { maxMsgsPerSecond: 200 } });
  const healthy = await healthyFlow(lab);
  try {
    const flooder = await lab.vms.vm1.connect();
    const errors: string[] = [];
    let reported = 0;
    flooder.on("error", (e) => {
      errors.push(e.code);
      if (e.code === ErrorCode.Flood) {
        reported += Number(/: (\d+) message/.exec(e.message)?.[1] ?? 0);
      }
    });
    for (let i = 0; i < 2000; i++) flooder.publish("alive", -1);
    await flooder.flush();
    await waitFor(() => errors.includes(ErrorCode.Flood), "FLOOD error");
    const vm1 = lab.broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.ok(vm1.dropped >= 1000, `dropped ${vm1.dropped}`);
    assert.ok(vm1.msgsIn <= 400, `accepted ${vm1.msgsIn}`);
    // Every rejected message is reported to the flooder, including the tail of the burst.
    await waitFor(
      () => reported === vm1.dropped,
      `all ${vm1.dropped} drops reported (got ${reported})`,
      4000,
    );
    await flooder.close();
    await healthy.check(5);
  } finally {
    await healthy.close();
    await lab.close();
  }
});

function decodeWelcome(frames: Frame[]): { maxFrameBytes: number } {
  return decodeValue(frames.find((x) => x.op === Op.Welcome)!.head);
}

test("bad input: a stale batch of frames before HELLO (a guest write that was blocked while no host was connected) gets one ERR and never closes the session", async () => {
  const lab = await startLab();
  const healthy = await healthyFlow(lab);
  try {
    const g = await rawGuest(lab, "vm1");
    for (let i = 0; i < 300; i++) g.send(Op.Pub, ["stale", null, null]);
    g.send(Op.Ping, []);
    await hello(g);
    assert.ok(!g.closed, "the session survives stale frames");
    assert.deepEqual(
      g.errs().map((e) => e.code),
      [ErrorCode.BadState],
      "one ERR, not one per stale frame",
    );
    const vm1 = lab.broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.equal(vm1.msgsIn, 0, "nothing stale was routed");
    await healthy.check(5);
  } finally {
    await healthy.close();
    await lab.close();
  }
});

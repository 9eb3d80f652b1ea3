import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame, type Frame, FrameDecoder, FrameHeader } from "../src/protocol/frame.ts";
import { Op } from "../src/protocol/ops.ts";
import { decodeValue, encodeValue } from "../src/protocol/codec.ts";
import { decodePubHead, decodeSubHead } from "../src/protocol/heads.ts";
import { ErrorCode, VbusError } from "../src/protocol/errors.ts";

function collect(decoder: FrameDecoder, chunks: Uint8Array[]): Frame[] {
  const out: Frame[] = [];
  for (const c of chunks) {
    decoder.push(c, (f) => out.push({ ...f, head: f.head.slice(), payload: f.payload.slice() }));
  }
  return out;
}

test("frame: round trip, split at every byte boundary", () => {
  const a = encodeFrame(Op.Pub, encodeValue(["a.b", null, null]), encodeValue({ x: 1 }));
  const b = encodeFrame(Op.Ping, encodeValue([]));
  const stream = new Uint8Array([...a, ...b]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const frames = collect(new FrameDecoder(1 << 20), [
      stream.subarray(0, cut),
      stream.subarray(cut),
    ]);
    assert.equal(frames.length, 2, `cut at ${cut}`);
    assert.equal(frames[0].op, Op.Pub);
    assert.deepEqual(decodePubHead(frames[0].head), ["a.b", null, null]);
    assert.deepEqual(decodeValue(frames[0].payload), { x: 1 });
    assert.equal(frames[1].op, Op.Ping);
  }
});

test("frame: a large frame arriving in small chunks is assembled once", () => {
  const payload = new Uint8Array(300_000).map((_, i) => i & 0xff);
  const f = encodeFrame(Op.Pub, encodeValue(["big", null, null]), payload);
  const chunks = [];
  for (let i = 0; i < f.length; i += 4096) chunks.push(f.subarray(i, i + 4096));
  const frames = collect(new FrameDecoder(1 << 20), chunks);
  assert.equal(frames.length, 1);
  assert.deepEqual(frames[0].payload, payload);
});

test("frame: bad magic, unknown op, oversized frames are errors with codes", () => {
  const good = encodeFrame(Op.Ping, encodeValue([]));
  const badMagic = good.slice();
  badMagic[0] = 0;
  assert.throws(
    () => new FrameDecoder(1024).push(badMagic, () => {}),
    (e) => e instanceof VbusError && e.code === ErrorCode.BadFrame,
  );
  const badOp = good.slice();
  badOp[FrameHeader.OP_OFFSET] = 99;
  assert.throws(() => new FrameDecoder(1024).push(badOp, () => {}), /unknown op 99/);
  const big = encodeFrame(Op.Pub, encodeValue(["a", null, null]), new Uint8Array(2000));
  assert.throws(
    () => new FrameDecoder(1024).push(big.subarray(0, FrameHeader.LENGTH), () => {}),
    (e) =>
      e instanceof VbusError && e.code === ErrorCode.FrameTooLarge &&
      /exceeds the limit of 1024/.test(e.message),
  );
});

test("frame: resync skips garbage up to the next frame", () => {
  const good = encodeFrame(Op.Pong, encodeValue([]));
  const garbage = new Uint8Array([1, 2, 3, 0x76, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
  const d = new FrameDecoder(1024);
  const out: Frame[] = [];
  const stream = new Uint8Array([...garbage, ...good]);
  for (let tries = 0; tries < 10; tries++) {
    try {
      d.push(tries === 0 ? stream : new Uint8Array(0), (f) => out.push(f));
      if (out.length) break;
    } catch {
      d.resync();
    }
  }
  assert.equal(out.length, 1);
  assert.equal(out[0].op, Op.Pong);
});

test("heads: malformed heads are rejected with BAD_FRAME", () => {
  assert.throws(() => decodeSubHead(encodeValue([0, "a", null])), /malformed SUB sid/);
  assert.throws(() => decodeSubHead(encodeValue({ sid: 1 })), /malformed SUB head/);
  assert.throws(() => decodePubHead(encodeValue([1, null, null])), /malformed PUB subject/);
  assert.throws(() => decodePubHead(encodeValue(["a", null, { k: 1 }])), /malformed PUB headers/);
  assert.throws(() => decodePubHead(new Uint8Array([0xc1])), /malformed PUB/);
  assert.throws(() => decodePubHead(new Uint8Array([0x93, 0xa5, 0x61])), /not msgpack/);
});

test("codec: binary travels as binary, values round trip", () => {
  const bin = new Uint8Array([1, 2, 3]);
  const back = decodeValue<Uint8Array>(encodeValue(bin));
  assert.ok(back instanceof Uint8Array);
  assert.deepEqual([...back], [1, 2, 3]);
  const v = {
    a: [1, "two", null, true],
    n: -1.5,
    big: 2 ** 40,
    nested: { x: new Uint8Array([9]) },
  };
  const r = decodeValue<typeof v>(encodeValue(v));
  assert.deepEqual(r.a, v.a);
  assert.equal(r.n, -1.5);
  assert.equal(r.big, 2 ** 40);
  assert.deepEqual([...r.nested.x], [9]);
  assert.equal(decodeValue(new Uint8Array(0)), undefined);
});

test("heads: the fast head reader agrees with msgpackr, and declines what it does not handle", async () => {
  const { HeadReader } = await import("../src/protocol/fast_heads.ts");
  const reader = new HeadReader();
  let seed = 7;
  const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
  const word = () => Array.from({ length: 1 + rnd(40) }, () => "abcxyz._-09AZ"[rnd(13)]).join("");
  for (let i = 0; i < 2000; i++) {
    const subject = word();
    const reply = rnd(2) ? null : word();
    const sid = [1, 127, 128, 255, 256, 65535, 65536, 2 ** 31][rnd(8)];
    const pub = encodeValue([subject, reply, null]);
    assert.deepEqual(reader.pub(pub, 0, pub.length), [subject, reply, null]);
    const msg = encodeValue([sid, subject, reply, null]);
    assert.deepEqual(reader.msg(msg, 0, msg.length), [sid, subject, reply, null]);
  }
  const unusual = [
    encodeValue(["é.x", null, null]),
    encodeValue(["a", null, { k: "v" }]),
    encodeValue(["a", null]),
    encodeValue(["a".repeat(300), null, null]),
  ];
  for (const u of unusual) assert.equal(reader.pub(u, 0, u.length), undefined);
  const truncated = encodeValue(["abc", null, null]).subarray(0, 4);
  assert.equal(reader.pub(truncated, 0, truncated.length), undefined);
});

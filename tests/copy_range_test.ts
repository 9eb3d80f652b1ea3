/**
 * The broker copies a message's payload from the publisher's frame into the subscriber's ring
 * without a view when it is small (src/util/copy_range.ts, Outbox.deliverRange): every byte
 * must arrive as published, on each side of the loop/`set` threshold, to ring and port-stream
 * subscribers alike, and copyRange must touch nothing outside its range.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, waitFor } from "./helpers.ts";
import { COPY_LOOP_MAX, copyRange } from "../src/util/copy_range.ts";

/** Bytes that differ per size and per message, so a shifted or stale copy cannot pass. */
function payload(size: number, seed: number): Uint8Array {
  const p = new Uint8Array(size);
  for (let i = 0; i < size; i++) p[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return p;
}

test("copyRange: lengths around the loop threshold copy exactly the range", () => {
  for (
    const length of [0, 1, COPY_LOOP_MAX - 1, COPY_LOOP_MAX, COPY_LOOP_MAX + 1, 4 * COPY_LOOP_MAX]
  ) {
    const source = payload(length + 10, length);
    const target = new Uint8Array(length + 20).fill(0xee);
    copyRange(target, 7, source, 3, length);
    assert.deepEqual(target.subarray(7, 7 + length), source.subarray(3, 3 + length), `${length}`);
    assert.ok(target.subarray(0, 7).every((b) => b === 0xee), `before the range (${length})`);
    assert.ok(target.subarray(7 + length).every((b) => b === 0xee), `after the range (${length})`);
  }
  // The whole source, long enough for `set`.
  const whole = payload(3 * COPY_LOOP_MAX, 1);
  const into = new Uint8Array(whole.length + 1);
  copyRange(into, 1, whole, 0, whole.length);
  assert.deepEqual(into.subarray(1), whole);
});

test("broker copy: binary payloads around the threshold arrive byte for byte at ring and port-stream subscribers (cached route)", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1", "vm2"] });
  const sizes = [
    0,
    1,
    COPY_LOOP_MAX - 3,
    COPY_LOOP_MAX - 2, // with its 2-byte bin header, exactly the threshold
    COPY_LOOP_MAX - 1,
    COPY_LOOP_MAX + 1,
    1000,
    70_000,
  ];
  const rounds = 20; // the head is cached after the first: the rest take the forward path
  try {
    const ringHost = await lab.host();
    const streamHost = await lab.host({ shm: false });
    const vm2 = await lab.vms.vm2.connect();
    assert.equal(ringHost.dataPath, "ring");
    assert.equal(streamHost.dataPath, "stream");
    assert.equal(vm2.dataPath, "ring");
    const got = new Map<string, Uint8Array[]>();
    for (const [name, bus] of [["ring", ringHost], ["stream", streamHost], ["vm2", vm2]] as const) {
      const list: Uint8Array[] = [];
      got.set(name, list);
      bus.subscribe<Uint8Array>("copy.bin", {
        callback: (_e, m) => list.push(Uint8Array.from(m.data as Uint8Array)),
      });
      await bus.flush();
    }
    const vm1 = await lab.vms.vm1.connect();
    assert.equal(vm1.dataPath, "ring");
    const sent: Uint8Array[] = [];
    for (let r = 0; r < rounds; r++) {
      for (const size of sizes) {
        const p = payload(size, r);
        sent.push(p);
        await vm1.publish("copy.bin", p);
      }
    }
    await vm1.flush();
    for (const [name, list] of got) {
      await waitFor(() => list.length === sent.length, `${name}: every message`, 10_000);
      for (let i = 0; i < sent.length; i++) {
        assert.deepEqual(list[i], sent[i], `${name}: message ${i} (${sent[i].length} B)`);
      }
    }
    await vm1.close();
  } finally {
    await lab.close();
  }
});

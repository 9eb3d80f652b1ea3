/**
 * The zero-copy rule is the same on every data path (docs/API.md): a callback's message is
 * readable until the callback returns or, when it returns a promise, until that promise
 * settles; then `data` and `raw` throw. On the ring a synchronous callback reads the slot in
 * place; an async one gets a copy, so what it reads after an await is the message's own value
 * even when later messages reused the slot. Iterated messages and replies are kept.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { delay, type Lab, startLab, waitFor } from "./helpers.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import type { Bus } from "../src/client/bus.ts";
import type { Msg } from "../src/client/msg.ts";

/** Big enough that a burst of them wraps the 4 MiB rings several times. */
const BIN = 64 * 1024;
const BURST = 200;

function payload(i: number): { n: number; bin: Uint8Array } {
  return { n: i, bin: new Uint8Array(BIN).fill(i & 0xff) };
}

function intact(v: { n: number; bin: Uint8Array }, i: number): boolean {
  return v.n === i && v.bin.length === BIN && v.bin.every((b) => b === (i & 0xff));
}

/** Each path: the two clients of a case, and the path their session runs on. */
const PATHS: { name: string; path: "ring" | "stream"; clients(lab: Lab): Promise<[Bus, Bus]> }[] = [
  {
    name: "host clients on the port stream",
    path: "stream",
    clients: async (lab) => [await lab.host({ shm: false }), await lab.host({ shm: false })],
  },
  {
    name: "host clients on rings",
    path: "ring",
    clients: async (lab) => [await lab.host(), await lab.host()],
  },
  {
    name: "guests on their ivshmem rings",
    path: "ring",
    clients: async (lab) => [await lab.vms.vm1.connect(), await lab.vms.vm2.connect()],
  },
];

for (const p of PATHS) {
  test(`zero copy (${p.name}): a message kept past a synchronous callback throws the same error`, async () => {
    const lab = await startLab({ shm: true });
    const [pub, sub] = await p.clients(lab);
    try {
      assert.equal(sub.dataPath, p.path);
      let kept: Msg<string> | undefined;
      let inside: string | undefined;
      sub.subscribe<string>("zc.sync", {
        callback: (_e, m) => {
          inside = m.data;
          assert.deepEqual([...m.raw], [...encodeValue("hello")], "raw is the encoded value");
          kept = m;
        },
      });
      await sub.flush();
      await pub.publish("zc.sync", "hello");
      await waitFor(() => kept !== undefined, "callback ran");
      assert.equal(inside, "hello");
      assert.throws(() => kept!.data, /only valid during the callback/);
      assert.throws(() => kept!.raw, /only valid during the callback/);
      assert.equal(kept!.subject, "zc.sync", "subject and headers stay readable");
    } finally {
      await pub.close();
      await sub.close();
      await lab.close();
    }
  });

  test(`zero copy (${p.name}): an async callback reads its own message after awaiting, while later ones reuse the ring`, async () => {
    const lab = await startLab({ shm: true });
    const [pub, sub] = await p.clients(lab);
    try {
      assert.equal(sub.dataPath, p.path);
      const ok: boolean[] = [];
      const settled: Msg<unknown>[] = [];
      sub.subscribe<{ n: number; bin: Uint8Array }>("zc.async", {
        callback: async (_e, m) => {
          await delay(30); // the rest of the burst goes through the ring meanwhile
          const v = m.data;
          ok[v.n] = intact(v, v.n);
          settled.push(m);
        },
      });
      // Not an async function, but it returns a promise: the same lifetime.
      const viaThen: boolean[] = [];
      sub.subscribe<{ n: number; bin: Uint8Array }>("zc.then", {
        callback: (_e, m) =>
          delay(30).then(() => void (viaThen[m.data.n] = intact(m.data, m.data.n))),
      });
      await sub.flush();
      for (let i = 0; i < BURST; i++) {
        await pub.publish("zc.async", payload(i));
        await pub.publish("zc.then", payload(i));
      }
      await waitFor(
        () => settled.length === BURST && viaThen.filter(Boolean).length === BURST,
        "every callback done",
        20_000,
      );
      assert.equal(
        ok.filter(Boolean).length,
        BURST,
        "every async callback saw its own payload intact",
      );
      await delay(10);
      assert.throws(
        () => settled[0].data,
        /only valid during the callback/,
        "and not after its promise settled",
      );
    } finally {
      await pub.close();
      await sub.close();
      await lab.close();
    }
  });

  test(`zero copy (${p.name}): iterated messages are the application's to keep`, async () => {
    const lab = await startLab({ shm: true });
    const [pub, sub] = await p.clients(lab);
    try {
      const it = sub.subscribe<{ n: number; bin: Uint8Array }>("zc.iter", { max: BURST });
      await sub.flush();
      const publishing = (async () => {
        for (let i = 0; i < BURST; i++) await pub.publish("zc.iter", payload(i));
      })();
      const kept: Msg<{ n: number; bin: Uint8Array }>[] = [];
      for await (const m of it) kept.push(m); // not read yet: read after the whole burst
      await publishing;
      assert.equal(kept.length, BURST);
      assert.ok(
        kept.every((m, i) => intact(m.data, i)),
        "every kept message intact after the burst",
      );
      assert.deepEqual([...kept[0].raw], [...encodeValue(payload(0))]);
    } finally {
      await pub.close();
      await sub.close();
      await lab.close();
    }
  });
}

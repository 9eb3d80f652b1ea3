/**
 * msg.respond(): as in nats.js it returns false (and sends nothing) for a message without a
 * reply subject, so a responder never crashes its process when someone publishes to its
 * subject instead of requesting; a callback that throws or rejects is logged, not fatal.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { delay, startLab, waitFor } from "./helpers.ts";
import { startClient } from "./fixtures/run_client.ts";
import { ErrorCode, VbusError } from "../src/protocol/errors.ts";
import type { Msg } from "../src/client/msg.ts";
import type { Logger } from "../src/util/log.ts";

for (const shm of [false, true]) {
  const path = shm ? "ring" : "stream";
  test(`respond (${path}): false without a reply subject, true with one; the answer arrives`, async () => {
    const lab = await startLab({ shm, vms: [] });
    try {
      const svc = await lab.host();
      const client = await lab.host();
      assert.equal(svc.dataPath, path);
      const results: boolean[] = [];
      svc.subscribe<number>("math.double", {
        callback: (_e, m) => void results.push(m.respond(m.data * 2)),
      });
      await svc.flush();
      await client.publish("math.double", 1); // no reply subject
      const answer = await client.request<number>("math.double", 21, { timeout: 2000 });
      assert.equal(answer.data, 42);
      await waitFor(() => results.length === 2, "both messages handled");
      assert.deepEqual(results, [false, true]);
    } finally {
      await lab.close();
    }
  });
}

test("respond: the README's responder pattern keeps serving after a publish without a reply subject (no unhandled rejection)", async () => {
  const lab = await startLab({ shm: true, vms: [] });
  const child = startClient(`
    import { connect } from "vbus";
    const bus = await connect({ server: ${JSON.stringify(lab.listen)}, timeout: 5000 });
    bus.subscribe("math.double", { queue: "math", callback: (_e, m) => m.respond(m.data * 2) });
    bus.subscribe("quit", { callback: () => void bus.drain().then(() => console.log("BYE")) });
    await bus.flush();
    console.log("READY");
  `);
  try {
    await child.waitFor("READY");
    const client = await lab.host();
    for (let i = 0; i < 5; i++) await client.publish("math.double", i); // nobody to answer
    await client.flush();
    await delay(300); // an unhandled rejection would have ended the process by now
    const answer = await client.request<number>("math.double", 21, { timeout: 3000 });
    assert.equal(answer.data, 42, child.out());
    await client.publish("quit");
    const run = await child.exited;
    assert.equal(run.code, 0, run.out);
    assert.match(run.out, /BYE/);
    assert.doesNotMatch(run.out, /uncaught|unhandled|no reply subject/i, run.out);
  } finally {
    child.kill();
    await lab.close();
  }
});

test("respond: a callback that throws or returns a rejected promise is logged; later messages still arrive", async () => {
  const lab = await startLab({ vms: [] });
  const logged: { msg: string; fields?: Record<string, unknown> }[] = [];
  const log: Logger = {
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (msg, fields) => void logged.push({ msg, fields }),
  };
  try {
    const svc = await lab.host({ logger: log });
    const client = await lab.host();
    const seen: number[] = [];
    svc.subscribe<number>("boom.sync", {
      callback: (_e, m) => {
        seen.push(m.data);
        if (m.data === 1) throw new Error("sync boom");
      },
    });
    svc.subscribe<number>("boom.async", {
      callback: async (_e, m) => {
        await delay(1);
        seen.push(m.data);
        if (m.data === 3) throw new Error("async boom");
      },
    });
    await svc.flush();
    for (
      const [s, v] of [["boom.sync", 1], ["boom.sync", 2], ["boom.async", 3], ["boom.async", 4]]
    ) {
      await client.publish(s as string, v);
    }
    await waitFor(() => seen.length === 4, "every message handled");
    await waitFor(() => logged.length === 2, "both failures logged");
    assert.deepEqual(seen.sort(), [1, 2, 3, 4]);
    assert.deepEqual(logged.map((l) => [l.msg, l.fields?.subject]), [
      ["subscription callback failed", "boom.sync"],
      ["subscription callback failed", "boom.async"],
    ]);
    assert.match(String(logged[1].fields?.error), /async boom/);
  } finally {
    await lab.close();
  }
});

test("respond: on a closed connection it throws CLOSED (as nats.js does), never an unhandled rejection", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const svc = await lab.host();
    const client = await lab.host();
    const sub = svc.subscribe<number>("svc.later");
    await svc.flush();
    const pending = client.request("svc.later", 1, { timeout: 300 }).catch((e) => e);
    let msg: Msg<number> | undefined;
    for await (const m of sub) {
      msg = m;
      break;
    }
    await svc.close();
    assert.throws(
      () => msg!.respond(2),
      (e: unknown) => e instanceof VbusError && e.code === ErrorCode.Closed,
    );
    const err = await pending;
    assert.ok(err instanceof VbusError && err.code === ErrorCode.Timeout, String(err));
  } finally {
    await lab.close();
  }
});

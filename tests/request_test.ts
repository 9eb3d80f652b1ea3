import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab } from "./helpers.ts";
import { ErrorCode, type VbusError } from "../src/protocol/errors.ts";

test("request/reply: guest asks a service in another guest, and the host asks a guest", async () => {
  const lab = await startLab();
  const service = await lab.vms.vm1.connect();
  const client = await lab.vms.vm2.connect();
  const host = await lab.host();
  try {
    service.subscribe<{ a: number; b: number }>("math.add", {
      callback: (_e, m) => m.respond(m.data.a + m.data.b, { headers: { served: "vm1" } }),
    });
    await service.flush();
    const r = await client.request<number>("math.add", { a: 2, b: 40 }, { timeout: 2000 });
    assert.equal(r.data, 42);
    assert.deepEqual(r.headers, { served: "vm1" });
    const many = await Promise.all(
      Array.from({ length: 50 }, (_, i) => host.request<number>("math.add", { a: i, b: 1 })),
    );
    assert.deepEqual(many.map((m) => m.data), Array.from({ length: 50 }, (_, i) => i + 1));
  } finally {
    await service.close();
    await client.close();
    await lab.close();
  }
});

test("request/reply: no responders fails at once, a silent service times out", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const guest = await lab.vms.vm1.connect();
  const host = await lab.host();
  try {
    const t0 = Date.now();
    await assert.rejects(
      guest.request("nobody.home", 1, { timeout: 5000 }),
      (e: VbusError) => e.code === ErrorCode.NoResponders && /nobody\.home/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 2000, "no-responders is immediate, not a timeout");
    host.subscribe("silent", { callback: () => {} });
    await host.flush();
    await assert.rejects(
      guest.request("silent", 1, { timeout: 150 }),
      (e: VbusError) => e.code === ErrorCode.Timeout && /150 ms/.test(e.message),
    );
  } finally {
    await guest.close();
    await lab.close();
  }
});

test("request/reply: queue-group services answer once each", async () => {
  const lab = await startLab({ vms: ["vm1", "vm2"] });
  const s1 = await lab.vms.vm1.connect();
  const s2 = await lab.vms.vm2.connect();
  const host = await lab.host();
  try {
    for (const s of [s1, s2]) {
      s.subscribe("echo", {
        queue: "svc",
        callback: (_e, m) => m.respond({ by: s.info!.identity, v: m.data }),
      });
      await s.flush();
    }
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => host.request<{ by: string; v: number }>("echo", i)),
    );
    assert.deepEqual(replies.map((r) => r.data.v), Array.from({ length: 20 }, (_, i) => i));
    const by = new Set(replies.map((r) => r.data.by));
    assert.deepEqual([...by].sort(), ["vm1", "vm2"]);
  } finally {
    await s1.close();
    await s2.close();
    await lab.close();
  }
});

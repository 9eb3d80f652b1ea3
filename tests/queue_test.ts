import { test } from "node:test";
import assert from "node:assert/strict";
import { startLab, waitFor } from "./helpers.ts";

test("queue groups: each message goes to exactly one member; plain subscribers get all", async () => {
  const lab = await startLab({ vms: ["vm1", "vm2", "vm3"] });
  const pub = await lab.host();
  const w1 = await lab.vms.vm1.connect();
  const w2 = await lab.vms.vm2.connect();
  const watcher = await lab.vms.vm3.connect();
  try {
    const seen: number[][] = [[], []];
    const all: number[] = [];
    w1.subscribe<number>("jobs.>", { queue: "workers", callback: (_e, m) => seen[0].push(m.data) });
    w2.subscribe<number>("jobs.>", { queue: "workers", callback: (_e, m) => seen[1].push(m.data) });
    watcher.subscribe<number>("jobs.>", { callback: (_e, m) => all.push(m.data) });
    await Promise.all([w1.flush(), w2.flush(), watcher.flush()]);
    const N = 200;
    for (let i = 0; i < N; i++) pub.publish(`jobs.${i % 3}`, i);
    await pub.flush();
    await waitFor(
      () => seen[0].length + seen[1].length === N && all.length === N,
      "all jobs delivered",
    );
    const union = [...seen[0], ...seen[1]].sort((a, b) => a - b);
    assert.deepEqual(union, Array.from({ length: N }, (_, i) => i), "each job exactly once");
    assert.ok(
      seen[0].length > N / 4 && seen[1].length > N / 4,
      `load shared: ${seen[0].length}/${seen[1].length}`,
    );
    // A member leaving: the other gets everything.
    await w1.drain();
    const before = seen[1].length;
    for (let i = 0; i < 20; i++) pub.publish("jobs.x", 1000 + i);
    await pub.flush();
    await waitFor(() => seen[1].length === before + 20, "remaining member gets all");
  } finally {
    await w2.close();
    await watcher.close();
    await lab.close();
  }
});

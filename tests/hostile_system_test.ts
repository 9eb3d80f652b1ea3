/**
 * What the broker itself says must go only to whoever asked: a `$VBUS.STATS` request names a
 * reply subject, and the answer reaches the requester's own subscriptions, never another
 * session's (another VM subscribed to that subject would otherwise be fed broker statistics
 * on demand, e.g. on its command subject).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { delay, startLab, take, waitFor } from "./helpers.ts";
import { STATS_SUBJECT } from "../src/broker/broker.ts";

test("hostile system: a $VBUS.STATS answer goes only to the requester, not to the reply subject's subscribers", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const victim = await lab.vms.vm1.connect();
  const asker = await lab.host();
  try {
    const got: unknown[] = [];
    victim.subscribe("cmd.vm1.reboot", { callback: (_e, m) => got.push(m.data) });
    await victim.flush();
    await waitFor(() => lab.broker.stats().vms[0].subscriptions === 1, "victim subscribed");
    // The host client asks for stats with the victim's command subject as its reply subject.
    await asker.publish(STATS_SUBJECT, null, { reply: "cmd.vm1.reboot" });
    await asker.flush();
    await delay(200);
    assert.deepEqual(got, [], "the victim received nothing from the broker");
    // A requester that subscribes to the reply subject itself gets its answer.
    const mine = asker.subscribe<{ vms: unknown[] }>("my.stats.answer");
    await asker.flush();
    await asker.publish(STATS_SUBJECT, null, { reply: "my.stats.answer" });
    const [stats] = await take(mine, 1);
    assert.ok(Array.isArray(stats.vms));
    // And the victim's subscription works for real traffic.
    await asker.publish("cmd.vm1.reboot", "real");
    await waitFor(() => got.length === 1, "a real message reaches the victim");
    assert.deepEqual(got, ["real"]);
  } finally {
    await victim.close();
    await lab.close();
  }
});

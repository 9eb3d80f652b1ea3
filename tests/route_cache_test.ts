/**
 * The broker's per-session route cache (src/broker/publish_path.ts): a PUB head's checks are
 * cached by its bytes, so every way the answer can change must reach the very next message:
 * a permission change by reload, a limits change by reload, an UNSUB, a head rewritten in
 * place in shared memory, and a publish allowed only by a one-time reply grant. Real brokers,
 * real rings; the unit tests drive a real PublishPath, Router and PermissionGuard.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { delay, SHM_SIZE, startLab, waitFor } from "./helpers.ts";
import { validateConfig } from "../src/broker/config.ts";
import { PublishPath } from "../src/broker/publish_path.ts";
import { PermissionGuard } from "../src/broker/permissions.ts";
import { type RouteEntry, Router } from "../src/broker/router.ts";
import { newEndpointStats } from "../src/broker/stats.ts";
import { FloodGuard } from "../src/broker/flood_guard.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame, parseFrameAt } from "../src/protocol/frame.ts";
import { DEFAULT_LIMITS } from "../src/protocol/limits.ts";
import { Feature, Op } from "../src/protocol/ops.ts";
import type { VbusError } from "../src/protocol/errors.ts";

test("route cache: a permission change by reload denies the very next PUB of a cached subject (ring)", async () => {
  const lab = await startLab({
    shm: true,
    vms: [{ name: "vm1", permissions: { publish: ["a.>", "m"] } }],
  });
  try {
    const host = await lab.host();
    const got: string[] = [];
    host.subscribe(">", { callback: (_e, m) => got.push(`${m.subject}=${m.data}`) });
    await host.flush();
    const vm1 = await lab.vms.vm1.connect();
    assert.equal(vm1.dataPath, "ring");
    const errors: string[] = [];
    vm1.on("error", (e) => errors.push(e.message));
    for (let i = 0; i < 20; i++) await vm1.publish("a.1", i); // the head is cached now
    await vm1.flush();
    await waitFor(() => got.length === 20, "20 messages on a.1");
    const denied = lab.broker.stats().vms.find((v) => v.name === "vm1")!.denied;
    await lab.broker.reload(validateConfig({
      listen: lab.listen,
      vms: [{
        name: "vm1",
        socket: join(lab.dir, "vm1.sock"),
        shm: lab.vms.vm1.shm,
        shmSize: SHM_SIZE,
        permissions: { publish: ["b.>", "m"] },
      }],
    }, "test-config"));
    await vm1.publish("a.1", 20); // the very next message: same head bytes as the cached ones
    await vm1.publish("m", "marker");
    await vm1.flush();
    await waitFor(() => got.includes("m=marker"), "marker delivered");
    assert.equal(
      got.filter((g) => g.startsWith("a.1")).length,
      20,
      "a.1 after the reload was not delivered",
    );
    await waitFor(
      () => errors.some((m) => /publish to "a.1" is not permitted/.test(m)),
      "a.1 denied",
    );
    const after = lab.broker.stats().vms.find((v) => v.name === "vm1")!.denied;
    assert.equal(after - denied, 1, "exactly one denial counted");
    await vm1.close();
  } finally {
    await lab.close();
  }
});

test("route cache: a limits change by reload (maxSubjectBytes) refuses the very next PUB of a cached subject", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  try {
    const host = await lab.host();
    const got: string[] = [];
    host.subscribe(">", { callback: (_e, m) => got.push(m.subject) });
    await host.flush();
    const vm1 = await lab.vms.vm1.connect();
    const errors: string[] = [];
    vm1.on("error", (e) => errors.push(`${e.code}: ${e.message}`));
    const long = "subject.of.thirty.two.bytes.xyz";
    for (let i = 0; i < 10; i++) await vm1.publish(long, i);
    await vm1.flush();
    await waitFor(() => got.length === 10, "10 messages");
    await lab.broker.reload(validateConfig({
      listen: lab.listen,
      limits: { maxSubjectBytes: 16 },
      vms: [{
        name: "vm1",
        socket: join(lab.dir, "vm1.sock"),
        shm: lab.vms.vm1.shm,
        shmSize: SHM_SIZE,
      }],
    }, "test-config"));
    // The client checks subjects against its WELCOME's limits (the old ones); the broker must
    // check against the new ones.
    await vm1.publish(long, 10);
    await vm1.publish("m", "marker");
    await vm1.flush();
    await waitFor(() => got.includes("m"), "marker delivered");
    assert.equal(got.filter((s) => s === long).length, 10, "the over-long subject was refused");
    await waitFor(
      () => errors.some((m) => /^BAD_SUBJECT: .*longer than 16 bytes/.test(m)),
      "BAD_SUBJECT",
    );
    await vm1.close();
  } finally {
    await lab.close();
  }
});

test("route cache: an UNSUB takes effect on the very next PUB of a cached subject (rings both ways)", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  try {
    const host = await lab.host();
    assert.equal(host.dataPath, "ring");
    const got: string[] = [];
    const sub = host.subscribe("c.1", { callback: (_e, m) => got.push(`c.1=${m.data}`) });
    host.subscribe("m", { callback: () => got.push("m") });
    await host.flush();
    const vm1 = await lab.vms.vm1.connect();
    for (let i = 0; i < 20; i++) await vm1.publish("c.1", i);
    await vm1.flush();
    await waitFor(() => got.length === 20, "20 on c.1");
    sub.unsubscribe();
    await host.flush(); // the broker has acted on the UNSUB
    await vm1.publish("c.1", 20);
    await vm1.publish("m", 0);
    await vm1.flush();
    await waitFor(() => got.includes("m"), "marker delivered");
    await delay(50);
    assert.equal(got.filter((g) => g.startsWith("c.1")).length, 20, "nothing after the UNSUB");
    await vm1.close();
  } finally {
    await lab.close();
  }
});

/** A real PublishPath for one session with the given publish permissions. */
function path(publish?: string[]) {
  const router = new Router();
  const delivered: string[] = [];
  const target = { deliver: (_e: RouteEntry, subject: string) => void delivered.push(subject) };
  const entry: RouteEntry = { sid: 1, subject: ">", queue: null, max: 0, delivered: 0, target };
  router.add(entry);
  const stats = newEndpointStats("t");
  const p = new PublishPath({
    self: { deliver: () => true },
    limits: { ...DEFAULT_LIMITS },
    stats,
    router,
    host: false,
    setPublishing: () => {},
  });
  const guard = new PermissionGuard(publish ? { publish } : undefined, "_INBOX.t.x");
  p.open(guard, publish, new Set());
  const flood = new FloodGuard(1e9, () => {});
  p.flood = flood;
  return { p, delivered, guard, stats, router, stop: () => flood.stop() };
}

function pubFrame(subject: string) {
  const bytes = encodeFrame(Op.Pub, encodeValue([subject, null, null]), encodeValue(1));
  return { bytes, frame: parseFrameAt(bytes, 0, bytes.length, 1 << 20) };
}

test("route cache: a head rewritten in place (same position, same length) is checked again", () => {
  const t = path(["a.>"]);
  try {
    const { bytes, frame } = pubFrame("a.1");
    t.p.publish(frame, true);
    t.p.publish(frame, true);
    assert.equal(t.p.cachedRoutes, 1);
    // The guest rewrites its ring: "a.1" becomes "b.1" in the same record.
    const at = bytes.indexOf(0x61, /* a */ 12);
    bytes[at] = 0x62;
    assert.throws(() => t.p.publish(frame, true), (e: VbusError) => e.code === "PERMISSION_DENIED");
    assert.deepEqual(t.delivered, ["a.1", "a.1"]);
    bytes[at] = 0x61;
    t.p.publish(frame, true);
    assert.deepEqual(t.delivered, ["a.1", "a.1", "a.1"]);
  } finally {
    t.stop();
  }
});

test("route cache: a publish allowed only by a one-time reply grant is never cached", () => {
  const t = path(["a.>"]);
  try {
    t.guard.grantReply("_INBOX.r.1");
    const { frame } = pubFrame("_INBOX.r.1");
    t.p.publish(frame, true);
    assert.equal(t.p.cachedRoutes, 0);
    assert.throws(() => t.p.publish(frame, true), (e: VbusError) => e.code === "PERMISSION_DENIED");
    assert.deepEqual(t.delivered, ["_INBOX.r.1"]);
  } finally {
    t.stop();
  }
});

test("route cache: open() with new permissions and invalidate() empty it", () => {
  const t = path(["a.>"]);
  try {
    const { frame } = pubFrame("a.1");
    t.p.publish(frame, false);
    assert.equal(t.p.cachedRoutes, 1);
    t.p.open(new PermissionGuard({ publish: ["b.>"] }, "_INBOX.t.y"), ["b.>"], new Set());
    assert.equal(t.p.cachedRoutes, 0);
    assert.throws(
      () => t.p.publish(frame, false),
      (e: VbusError) => e.code === "PERMISSION_DENIED",
    );
    t.p.open(new PermissionGuard(undefined, "_INBOX.t.z"), undefined, new Set());
    t.p.publish(frame, false);
    assert.equal(t.p.cachedRoutes, 1);
    t.p.invalidate();
    assert.equal(t.p.cachedRoutes, 0);
  } finally {
    t.stop();
  }
});

test("route cache: a cached route's targets follow every SUB and UNSUB from the very next PUB (plain, queue group, max, a failing target, no echo)", () => {
  const t = path();
  try {
    const { frame } = pubFrame("a.1");
    const got: string[] = [];
    const sub = (name: string, subject: string, queue: string | null = null, max = 0) => {
      const entry: RouteEntry = {
        sid: 9,
        subject,
        queue,
        max,
        delivered: 0,
        target: { deliver: () => void got.push(name) },
      };
      t.router.add(entry);
      return entry;
    };
    t.p.publish(frame, true);
    t.p.publish(frame, true); // from the cache
    assert.equal(t.p.cachedRoutes, 1);
    assert.equal(t.delivered.length, 2);
    const b = sub("b", "a.*");
    t.p.publish(frame, true);
    assert.deepEqual(got, ["b"]);
    // A queue group: one member per message, in turn, while plain subscribers get each one.
    const q1 = sub("q1", "a.1", "g"), q2 = sub("q2", "a.1", "g");
    got.length = 0;
    for (let i = 0; i < 4; i++) t.p.publish(frame, true);
    assert.equal(got.filter((n) => n === "b").length, 4);
    assert.deepEqual(got.filter((n) => n !== "b").sort(), ["q1", "q1", "q2", "q2"]);
    t.router.remove(q1);
    t.router.remove(q2);
    t.router.remove(b);
    // A max: exactly that many, then it is gone.
    sub("m", "a.>", null, 2);
    got.length = 0;
    for (let i = 0; i < 4; i++) t.p.publish(frame, true);
    assert.deepEqual(got, ["m", "m"]);
    assert.equal(t.router.size, 1);
    // A target that throws is told (fail) and the others still get the message.
    const failed: unknown[] = [];
    const bad: RouteEntry = {
      sid: 3,
      subject: "a.1",
      queue: null,
      max: 0,
      delivered: 0,
      target: {
        deliver: () => {
          throw new Error("its ring broke");
        },
        fail: (err) => void failed.push(err),
      },
    };
    t.router.add(bad);
    sub("after", "a.1");
    const before = t.delivered.length;
    t.p.publish(frame, true);
    assert.equal(failed.length, 1);
    assert.deepEqual(got, ["m", "m", "after"]);
    assert.equal(t.delivered.length, before + 1);
    t.router.remove(bad);
    // No echo: the publisher's own subscription is passed over, cached or not.
    const self = { deliver: () => void got.push("self") };
    t.router.add({ sid: 4, subject: "a.1", queue: null, max: 0, delivered: 0, target: self });
    const echo = new PublishPath({
      self,
      limits: { ...DEFAULT_LIMITS },
      stats: t.stats,
      router: t.router,
      host: false,
      setPublishing: () => {},
    });
    echo.open(new PermissionGuard(undefined, "_INBOX.t.e"), undefined, new Set([Feature.NoEcho]));
    const flood = new FloodGuard(1e9, () => {});
    echo.flood = flood;
    got.length = 0;
    for (let i = 0; i < 3; i++) echo.publish(frame, true);
    flood.stop();
    assert.deepEqual(got, ["after", "after", "after"]);
    t.p.publish(frame, true);
    assert.deepEqual(got, ["after", "after", "after", "after", "self"]);
  } finally {
    t.stop();
  }
});

test("route cache: an UNSUB with a max ends a cached route's deliveries at that max, and the broker forgets the subscription (rings both ways)", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  try {
    const host = await lab.host();
    assert.equal(host.dataPath, "ring");
    let got = 0, marks = 0;
    const sub = host.subscribe("c.1", { callback: () => got++ });
    host.subscribe("m", { callback: () => marks++ });
    await host.flush();
    const stats = () => lab.broker.stats().host;
    const subsBefore = stats().subscriptions;
    const vm1 = await lab.vms.vm1.connect();
    for (let i = 0; i < 5; i++) await vm1.publish("c.1", i); // the head is cached by now
    await vm1.flush();
    await waitFor(() => got === 5, "5 on c.1");
    const outBefore = stats().msgsOut;
    sub.unsubscribe(8); // three more, then it ends: on the broker too
    await host.flush(); // the broker has the max
    for (let i = 5; i < 20; i++) await vm1.publish("c.1", i);
    await vm1.publish("m", 0);
    await vm1.flush();
    await waitFor(() => marks === 1, "marker delivered");
    await delay(50);
    assert.equal(got, 8);
    // What the broker sent this host after the max: 3 on c.1 and the marker, nothing more.
    assert.equal(stats().msgsOut - outBefore, 4, "MSGs sent past the max");
    assert.equal(stats().subscriptions, subsBefore - 1, "the broker still holds the subscription");
    await vm1.close();
  } finally {
    await lab.close();
  }
});

test("route cache: the router drops the target lists it handed out at its next change, so no cache keeps a closed session's subscriptions", () => {
  const router = new Router();
  const target = { deliver: () => {} };
  const entry: RouteEntry = { sid: 1, subject: "a.*", queue: null, max: 0, delivered: 0, target };
  router.add(entry);
  const holder: { targets: RouteEntry[] | null } = { targets: null };
  const list = router.forwardTargets("a.1", holder)!;
  assert.deepEqual(list, [entry]);
  assert.equal(holder.targets, list);
  const generation = router.generation;
  router.remove(entry); // e.g. its session closed
  assert.notEqual(router.generation, generation);
  assert.equal(holder.targets, null);
  assert.deepEqual(list, [entry], "a list being walked is never changed");
  // A max given later (UNSUB with a count) changes the router too.
  router.add(entry);
  router.forwardTargets("a.1", holder);
  router.limit(entry, 3);
  assert.equal(holder.targets, null);
  assert.equal(router.forwardTargets("a.1", holder), null);
});

test("route cache: a delivery that removes another subscription while a cached route is forwarding (a session reset mid-publish) neither fails the publisher nor skips the rest", () => {
  // Seen in the chaos soak: a hostile VM's ring violation reset its session inside another
  // VM's publish; the target list was emptied under the forwarding loop, which then threw
  // ("undefined is not an object") and the innocent publisher's session was reset.
  const t = path();
  try {
    const { frame } = pubFrame("a.1");
    const got: string[] = [];
    const victim: RouteEntry = {
      sid: 3,
      subject: "a.1",
      queue: null,
      max: 0,
      delivered: 0,
      target: { deliver: () => void got.push("victim") },
    };
    const remover: RouteEntry = {
      sid: 2,
      subject: "a.1",
      queue: null,
      max: 0,
      delivered: 0,
      target: {
        deliver: () => {
          got.push("remover");
          t.router.remove(victim);
        },
      },
    };
    t.router.add(remover);
    t.router.add(victim);
    t.p.publish(frame, true);
    t.p.publish(frame, true); // cached: the forwarding loop walks the route's list
    assert.equal(t.p.cachedRoutes, 1);
    // The first publish already removed the victim, before the second one took its list.
    assert.deepEqual(got, ["remover", "victim", "remover"]);
    t.router.add(victim);
    got.length = 0;
    t.p.publish(frame, true); // a new list with the victim again, removed mid-loop
    assert.deepEqual(got, ["remover", "victim"]);
    t.p.publish(frame, true);
    assert.deepEqual(got, ["remover", "victim", "remover"]);
  } finally {
    t.stop();
  }
});

/**
 * Reload without restart (issue 15, item 4): with simulated VMs streaming numbered messages,
 * a reload adds a VM, removes one, changes another's permissions and the limits, and the VMs
 * whose entry did not change never notice (same session, no disconnect, nothing lost). A new
 * config with an error, or one that changes what needs a restart, is refused and the old one
 * keeps running. SIGHUP and `vbus reload` on a broker process. Real brokers, real sockets,
 * real shared memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { basename } from "node:path";
import { rmSync } from "node:fs";
import { delay, SHM_SIZE, startLab, tempDir, waitFor } from "./helpers.ts";
import { exitWithin, killQuietly, runCli, signal } from "./fixtures/cli_process.ts";
import { type Bus, connect } from "../src/client/bus.ts";
import { Broker } from "../src/broker/broker.ts";
import { validateConfig } from "../src/broker/config.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { createLogger } from "../src/util/log.ts";
import type { StatusEvent } from "../src/client/status.ts";

const quiet = createLogger("test-broker", "silent");

/** Publish 0, 1, 2, ... on `subject` until `stop.now`; resolves with how many. */
async function stream(bus: Bus, subject: string, stop: { now: boolean }): Promise<number> {
  let n = 0;
  const deadline = Date.now() + 10_000;
  while (!stop.now && Date.now() < deadline) {
    await bus.publish(subject, n++);
    if (n % 20 === 0) await delay(1);
  }
  await bus.flush();
  return n;
}

/** Every status event of `bus`, kept. */
function events(bus: Bus): StatusEvent[] {
  const out: StatusEvent[] = [];
  for (const t of ["disconnected", "reconnected", "error"] as const) {
    bus.on(t, (e) => out.push(e));
  }
  return out;
}

test("reload: under streaming VMs, add vm4, remove vm3, change vm2's permissions and the limits; vm1 and vm2 never reconnect and nothing is lost", async () => {
  const vm2Before = { publish: ["s.vm2", "x.>"], subscribe: ["cmd.vm2.>", "y.>"] };
  const lab = await startLab({
    shm: true,
    vms: ["vm1", { name: "vm2", permissions: vm2Before }, "vm3"],
  });
  const extra = new SimulatedVm("vm4", join(lab.dir, "vm4.sock"));
  await extra.start();
  const clients: Bus[] = [];
  try {
    const host = await lab.host();
    const got: Record<string, number[]> = { "s.vm1": [], "s.vm2": [] };
    host.subscribe("s.*", { callback: (_e, m) => got[m.subject]?.push(m.data as number) });
    await host.flush();
    const vm1 = await lab.vms.vm1.connect();
    const vm2 = await lab.vms.vm2.connect();
    const vm3 = await lab.vms.vm3.connect({ reconnectDelay: 50 });
    clients.push(vm1, vm2, vm3);
    assert.equal(vm1.dataPath, "ring");
    // vm1 also receives a numbered stream from the host while the reload happens.
    const toVm1: number[] = [];
    vm1.subscribe("cmd.vm1", { callback: (_e, m) => toVm1.push(m.data as number) });
    const vm2Ys: unknown[] = [];
    vm2.subscribe("y.>", { callback: (_e, m) => vm2Ys.push(m.data) });
    await vm1.flush();
    await vm2.flush();
    const [ev1, ev2, ev3] = [events(vm1), events(vm2), events(vm3)];
    const sessions = { vm1: vm1.info!.session, vm2: vm2.info!.session };

    const stop = { now: false };
    const streams = [
      stream(vm1, "s.vm1", stop),
      stream(vm2, "s.vm2", stop),
      stream(host, "cmd.vm1", stop),
    ];
    await delay(150);
    const next = validateConfig({
      listen: lab.listen,
      limits: { maxSubscriptions: 8 },
      vms: [
        { name: "vm1", socket: join(lab.dir, "vm1.sock"), shm: lab.vms.vm1.shm, shmSize: SHM_SIZE },
        {
          name: "vm2",
          socket: join(lab.dir, "vm2.sock"),
          shm: lab.vms.vm2.shm,
          shmSize: SHM_SIZE,
          permissions: { publish: ["s.vm2"], subscribe: ["cmd.vm2.>"] },
        },
        { name: "vm4", socket: join(lab.dir, "vm4.sock") },
      ],
    }, "test-config");
    const changes = await lab.broker.reload(next);
    assert.deepEqual(changes.sort(), [
      "added vm4",
      "limits: maxSubscriptions",
      "removed vm3",
      "vm2: permissions",
    ]);
    await delay(150);
    stop.now = true;
    const [n1, n2, nCmd] = await Promise.all(streams);
    await waitFor(
      () => got["s.vm1"].length >= n1 && got["s.vm2"].length >= n2 && toVm1.length >= nCmd,
      "every streamed message delivered",
    );
    const upTo = (n: number) => Array.from({ length: n }, (_, i) => i);
    assert.ok(n1 > 50 && n2 > 50 && nCmd > 50, `streams ran: ${n1}, ${n2}, ${nCmd}`);
    assert.deepEqual(got["s.vm1"], upTo(n1), "vm1's stream: in order, no loss, no duplicate");
    assert.deepEqual(got["s.vm2"], upTo(n2), "vm2's stream: in order, no loss, no duplicate");
    assert.deepEqual(toVm1, upTo(nCmd), "the host's stream to vm1");

    // Untouched (vm1) and changed-in-place (vm2) VMs kept their sessions.
    assert.equal(vm1.info!.session, sessions.vm1);
    assert.equal(vm2.info!.session, sessions.vm2);
    assert.equal(ev1.length, 0, `vm1 saw nothing: ${JSON.stringify(ev1)}`);
    assert.equal(vm1.dataPath, "ring");
    const stats = lab.broker.stats();
    const byName = Object.fromEntries(stats.vms.map((v) => [v.name, v]));
    assert.equal(byName.vm1.sessions, 1);
    assert.equal(byName.vm2.sessions, 1);
    assert.equal(byName.vm3, undefined, "vm3 is gone from the stats");

    // vm2's new permissions apply to its live session.
    assert.ok(
      ev2.some((e) =>
        e.type === "error" && e.code === "PERMISSION_DENIED" && /"y\.>" removed/.test(e.message)
      ),
      `vm2 was told its y.> subscription is gone: ${JSON.stringify(ev2)}`,
    );
    await host.publish("y.1", "after");
    await host.flush();
    await vm2.publish("x.1", 1);
    await vm2.flush();
    await waitFor(
      () =>
        ev2.some((e) => e.type === "error" && /publish to "x.1" is not permitted/.test(e.message)),
      "vm2's publish to x.1 denied",
    );
    assert.deepEqual(vm2Ys, [], "vm2 no longer receives y.>");
    assert.ok(!ev2.some((e) => e.type === "disconnected"), "vm2 was not disconnected");

    // The new limit applies to vm1's live session.
    for (let i = 0; i < 9; i++) vm1.subscribe(`more.${i}`);
    await vm1.flush();
    await waitFor(
      () => ev1.some((e) => e.type === "error" && e.code === "TOO_MANY_SUBSCRIPTIONS"),
      "vm1 refused beyond the new maxSubscriptions",
    );

    // vm3 was closed and is not served again; vm4 is.
    await waitFor(() => !lab.vms.vm3.vm.hostConnected, "vm3's port closed");
    assert.ok(ev3.some((e) => e.type === "disconnected"));
    await waitFor(() => extra.hostConnected, "broker connected to vm4");
    const vm4 = await connect({ transport: () => extra.open(), timeout: 5000 });
    clients.push(vm4);
    const hello = host.subscribe("hello.vm4", { max: 1 });
    await host.flush();
    await vm4.publish("hello.vm4", "hi");
    for await (const m of hello) assert.equal(m.data, "hi");
    await delay(300);
    assert.ok(!lab.vms.vm3.vm.hostConnected, "vm3 stays unserved");
  } finally {
    for (const c of clients) await c.close();
    await lab.close();
    await extra.stop();
  }
});

test("reload: a VM whose socket changes reconnects there; host permissions apply to live host clients", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const moved = new SimulatedVm("vm1", join(lab.dir, "vm1-new.sock"));
  await moved.start();
  try {
    const host = await lab.host({ shm: false });
    const errors: string[] = [];
    host.on("error", (e) => errors.push(e.message));
    const sub = host.subscribe("a.>");
    await host.flush();
    await lab.broker.reload(validateConfig({
      listen: lab.listen,
      host: { permissions: { subscribe: ["b.>"] } },
      vms: [{ name: "vm1", socket: join(lab.dir, "vm1-new.sock") }],
    }, "test-config"));
    await waitFor(() => moved.hostConnected, "broker connected to vm1's new socket");
    await waitFor(() => !lab.vms.vm1.vm.hostConnected, "the old socket is let go");
    await waitFor(() => errors.some((m) => /"a\.>" removed/.test(m)), "host told a.> is gone");
    assert.equal(lab.broker.stats().host.subscriptions, 0);
    host.subscribe("c.1");
    await host.flush();
    await waitFor(
      () => errors.some((m) => /subscribe to "c.1" is not permitted/.test(m)),
      "c.1 denied",
    );
    sub.unsubscribe();
  } finally {
    await lab.close();
    await moved.stop();
  }
});

test("reload: refused, changing nothing, when a new VM is served by another broker", async () => {
  const lab = await startLab({ vms: ["vm1"] });
  const { dir, cleanup } = tempDir();
  const vm9 = { name: "vm9", socket: join(dir, "vm9.sock") };
  const other = new Broker(validateConfig({ vms: [vm9] }, "other"), { logger: quiet });
  await other.start();
  try {
    const vm1 = await lab.vms.vm1.connect();
    const session = vm1.info!.session;
    await assert.rejects(
      lab.broker.reload(validateConfig({
        listen: lab.listen,
        limits: { maxSubscriptions: 3 },
        vms: [{ name: "vm1", socket: join(lab.dir, "vm1.sock") }, vm9],
      }, "test-config")),
      /VM vm9 is served by another broker/,
    );
    assert.deepEqual(lab.broker.config.vms.map((v) => v.name), ["vm1"]);
    assert.equal(lab.broker.config.limits.maxSubscriptions, 4096, "limits unchanged");
    assert.equal(vm1.info!.session, session);
    await vm1.close();
  } finally {
    await other.stop();
    await lab.close();
    cleanup();
  }
});

test("reload: SIGHUP and `vbus reload` on a broker process; bad configs are refused with the usual message and the old one keeps serving", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "b.sock");
  const configPath = join(dir, "broker.jsonc");
  const shm = `/dev/shm/${basename(dir)}-vm1`;
  const vm1Entry = { name: "vm1", socket: join(dir, "vm1.sock"), shm, shmSize: SHM_SIZE };
  const write = (text: string) => writeFileSync(configPath, text);
  write(JSON.stringify({ listen, vms: [vm1Entry] }));
  const vm1 = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  const vm2 = new SimulatedVm("vm2", join(dir, "vm2.sock"));
  await vm1.start();
  await vm2.start();
  const broker = runCli(["broker", "--config", configPath], { VBUS_LOG: "info" });
  const procs = [broker];
  const reload = async () => {
    const p = runCli(["reload", "--server", listen], { VBUS_LOG: "warn" });
    procs.push(p);
    const { code } = await exitWithin(p, 20_000, "vbus reload");
    return { code, out: p.stdout(), err: p.stderr() };
  };
  let guest: Bus | undefined;
  let host: Bus | undefined;
  try {
    await waitFor(() => vm1.hostConnected, "broker connected to vm1", 15_000);
    guest = await connect({ transport: () => vm1.open(), shm, timeout: 5000 });
    host = await connect({ server: listen, timeout: 5000 });
    const session = guest.info!.session;
    const guestEvents = events(guest);
    const got: number[] = [];
    host.subscribe("s.vm1", { callback: (_e, m) => got.push(m.data as number) });
    await host.flush();
    const stop = { now: false };
    const streaming = stream(guest, "s.vm1", stop);

    write(`{ "listen": "${listen}", "vms": [ `); // cut short
    let r = await reload();
    assert.equal(r.code, 1, r.err);
    assert.match(
      r.err,
      /refused, the broker keeps its running config: .*broker\.jsonc: \(syntax, line 1 column \d+\): invalid JSON/,
    );
    write(JSON.stringify({ listen, vms: [vm1Entry], bogus: 1 }));
    r = await reload();
    assert.equal(r.code, 1);
    assert.match(r.err, /broker\.jsonc: bogus: unknown key/);
    write(JSON.stringify({ listen: join(dir, "other.sock"), vms: [vm1Entry] }));
    r = await reload();
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /listen: changed from .* a reload cannot change the host socket's path: restart the broker/,
    );

    write(
      JSON.stringify({ listen, vms: [vm1Entry, { name: "vm2", socket: join(dir, "vm2.sock") }] }),
    );
    signal(broker, "SIGHUP");
    await waitFor(() => vm2.hostConnected, "SIGHUP: broker connected to the added vm2", 10_000);
    r = await reload();
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out.trim(), "reloaded: nothing changed");

    stop.now = true;
    const n = await streaming;
    await waitFor(() => got.length >= n, "vm1's stream delivered");
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
    assert.equal(guest.info!.session, session, "vm1 kept its session through five reloads");
    assert.equal(guestEvents.length, 0, JSON.stringify(guestEvents));
    assert.match(broker.stderr(), /config reload refused; the running configuration stays/);
    assert.match(broker.stderr(), /config reloaded .*added vm2/);
  } finally {
    await guest?.close();
    await host?.close();
    procs.forEach(killQuietly);
    await broker.done;
    await vm1.stop();
    await vm2.stop();
    rmSync(shm, { force: true });
    cleanup();
  }
});

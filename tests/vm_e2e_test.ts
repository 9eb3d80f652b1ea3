// End-to-end tests on real QEMU guests (issue "Real guests"). Two micro-VMs are booted with the
// lab (lab/vm.ts) from exactly `qemuArgs(vm)` of a broker config (`parseConfig`), in parallel,
// and reused by every test in this file:
//   vm1: Deno, vm2: Bun, both running tests/fixtures/vm_agent.ts on the default port org.vbus.0.
// The broker is a `vbus broker --config` child process (src/cli/main.ts under the runtime running
// this test), so it can be SIGKILLed and restarted; the test itself is a host client on the
// broker's socket. Guests are driven over the bus (request `e2e.ctl.<vm>`) and write what they
// received / got confirmed to a writable 9p share, never through the slow serial console.
// Skips, printing why, when the lab cannot run here (no qemu, setup failed, not Linux x86_64).
// Runs under `deno test -A` and `bun test --timeout 600000`.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import {
  chmodSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  bootGuest,
  detectAccelerator,
  ensureLab,
  type GuestHandle,
  LabUnavailableError,
  LOG_DIR,
  PROJECT_ROOT,
} from "../lab/vm.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import { type BrokerConfig, type BrokerStats, type Bus, connect, parseConfig } from "../mod.ts";

/** Bound of each guest's whole life (they serve every test in this file). */
const GUEST_LIFETIME_MS = 420_000;
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";

let skip: string | false = false;
try {
  ensureLab();
  const a = await detectAccelerator();
  console.log(`lab accelerator: ${a.accelerator} (${a.reason})`);
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skip = `micro-VM lab unavailable: ${err.message}`;
  console.log(`SKIP vm e2e tests: ${skip}`);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let v: T | undefined;
    try {
      v = await fn();
    } catch { /* retry */ }
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    }
    await sleep(100);
  }
}

/** Everything the tests share: one broker, one host client, two guests. */
interface World {
  dir: string;
  out: string;
  configPath: string;
  config: BrokerConfig;
  broker?: ChildProcess;
  brokerStarts: number;
  host: Bus;
  guests: Record<string, GuestHandle>;
  scripts: Record<string, string>;
  /** Prefix of console log names, so the ring pair does not overwrite the stream pair's logs. */
  tag: string;
}
let world: World | undefined;

function startBroker(w: World): ChildProcess {
  const main = join(PROJECT_ROOT, "src", "cli", "main.ts");
  const bin = join(PROJECT_ROOT, "node_modules", ".bin", RUNTIME);
  const args = RUNTIME === "deno" ? ["run", "-A", main] : [main];
  const child = spawn(bin, [...args, "broker", "--config", w.configPath], {
    stdio: ["ignore", "ignore", "pipe"],
    cwd: PROJECT_ROOT,
  });
  mkdirSync(LOG_DIR, { recursive: true });
  const log = createWriteStream(
    join(LOG_DIR, `e2e-broker-${RUNTIME}${w.tag ? `-${w.tag}` : ""}.log`),
    {
      flags: w.brokerStarts ? "a" : "w",
    },
  );
  log.write(`# broker start #${++w.brokerStarts} (${RUNTIME}) ${w.tag}\n`);
  child.stderr!.pipe(log);
  w.broker = child;
  return child;
}

async function killBroker(w: World) {
  const b = w.broker;
  w.broker = undefined;
  if (!b || b.exitCode !== null || b.signalCode !== null) return;
  const gone = new Promise((r) => b.once("exit", r));
  b.kill("SIGKILL");
  await gone;
}

function bootVm(w: World, name: string, tag: string): Promise<GuestHandle> {
  const vm = w.config.vms.find((v) => v.name === name)!;
  return bootGuest({
    name: `e2e-${RUNTIME}-${w.tag}${tag}`,
    deviceArgs: qemuArgs(vm),
    script: w.scripts[name],
    timeoutMs: GUEST_LIFETIME_MS,
    writableBinds: [w.out],
    env: { VBUS_E2E_OUT: w.out },
  });
}

async function ctl<T = Record<string, unknown>>(
  w: World,
  vm: string,
  cmd: Record<string, unknown>,
  timeout = 5000,
): Promise<T> {
  const r = await w.host.request<T>(`e2e.ctl.${vm}`, cmd, { timeout });
  return r.data;
}

/** Wait until a guest's agent answers over the bus. */
async function agentUp(
  w: World,
  vm: string,
  timeoutMs: number,
): Promise<{ me: string; runtime: string; session: string }> {
  const g = w.guests[vm];
  let exited = false;
  g.exited.then(() => exited = true);
  return await until(`agent in ${vm} to answer`, timeoutMs, async () => {
    if (exited) {
      const r = await g.exited;
      throw new Error(
        `${vm} exited (code ${r.code}, ${r.error ?? ""}):\n${r.consoleLog.slice(-3000)}`,
      );
    }
    return await ctl<{ me: string; runtime: string; session: string }>(w, vm, { op: "ping" }, 1000);
  }).catch((err) => {
    if (exited) throw err;
    throw new Error(
      `${(err as Error).message}\n--- ${vm} console (${g.consoleLogPath}) ---\n${
        tail(g.consoleLogPath)
      }`,
    );
  });
}

function tail(path: string, n = 40): string {
  try {
    return readFileSync(path, "utf8").trim().split("\n").slice(-n).join("\n");
  } catch {
    return "(no console log)";
  }
}

async function stats(w: World): Promise<BrokerStats> {
  return (await w.host.request<BrokerStats>("$VBUS.STATS", null, { timeout: 5000 })).data;
}

function vmStats(s: BrokerStats, name: string) {
  const v = s.vms.find((x) => x.name === name);
  assert.ok(v, `no stats for ${name}`);
  return v;
}

/** Numbers a guest received on `e2e.to.<vm>.<stream>`, in arrival order. */
function received(w: World, vm: string, stream: string): number[] {
  const file = join(w.out, `${vm}.recv`);
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).map((l) => {
    try {
      return JSON.parse(l) as { s: string; n: number };
    } catch {
      return { s: "", n: -1 }; // a line being written right now
    }
  }).filter((r) => r.s === stream).map((r) => r.n);
}

function numbersIn(w: World, file: string): number[] {
  const p = join(w.out, file);
  if (!existsSync(p)) return [];
  return readFileSync(p, "utf8").split("\n").filter((l) => /^\d+$/.test(l)).map(Number);
}

async function publishFromGuest(
  w: World,
  vm: string,
  job: {
    subject: string;
    from: number;
    to: number;
    intervalMs: number;
    peer: string;
    flushEvery?: number;
  },
) {
  const r = await ctl<{ ok: boolean; error?: string }>(w, vm, { op: "publish", ...job });
  assert.equal(r.ok, true, `publish job refused: ${r.error}`);
}

async function publisherDone(w: World, vm: string, timeoutMs: number) {
  return await until(`publisher in ${vm} to finish`, timeoutMs, async () => {
    const s = await ctl<{ done: boolean; confirmed: number; unconfirmed: number }>(w, vm, {
      op: "pubstatus",
    }, 2000);
    return s.done ? s : undefined;
  });
}

function dupes(xs: number[]): number[] {
  const seen = new Set<number>();
  return xs.filter((x) => seen.has(x) || !seen.add(x));
}

async function teardown() {
  const w = world;
  world = undefined;
  if (!w) return;
  for (const g of Object.values(w.guests)) g.kill();
  await Promise.all(Object.values(w.guests).map((g) => g.exited));
  await w.host.close().catch(() => {});
  await killBroker(w);
  rmSync(w.dir, { recursive: true, force: true });
  for (const vm of w.config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
}
after(teardown);

/** Boot vm1 (Deno) and vm2 (Bun) with the agent, a broker child process and the host client. */
async function bootWorld(opts: { shm: boolean; tag: string }): Promise<World> {
  const dir = mkdtempSync(join(tmpdir(), "vbus-e2e-"));
  const out = join(dir, "out");
  mkdirSync(out);
  chmodSync(out, 0o777);
  const shmFile = (vm: string) => `/dev/shm/vbus-e2e-${RUNTIME}-${process.pid}-${vm}`;
  const raw = {
    listen: join(dir, "broker.sock"),
    vms: ["vm1", "vm2"].map((name) => ({
      name,
      socket: join(dir, `${name}.sock`),
      ...(opts.shm ? { shm: shmFile(name), shmSize: 1 << 20 } : {}),
    })),
  };
  const configPath = join(dir, "broker.jsonc");
  writeFileSync(configPath, `// vbus e2e test broker\n${JSON.stringify(raw, null, 2)}\n`);
  const config = parseConfig(readFileSync(configPath, "utf8"), configPath);
  const w: World = {
    dir,
    out,
    configPath,
    config,
    brokerStarts: 0,
    host: undefined as unknown as Bus,
    guests: {},
    scripts: {
      vm1: "exec ./node_modules/.bin/deno run -A tests/fixtures/vm_agent.ts",
      vm2: "exec ./node_modules/.bin/bun tests/fixtures/vm_agent.ts",
    },
    tag: opts.tag,
  };
  world = w;
  const t0 = Date.now();
  // Guests first: their QEMU chardev sockets appear at once, the broker links to them whenever
  // it is up, and the guests' clients retry (EOF while no host is connected) until then.
  const [g1, g2] = await Promise.all([bootVm(w, "vm1", "vm1"), bootVm(w, "vm2", "vm2")]);
  w.guests = { vm1: g1, vm2: g2 };
  startBroker(w);
  w.host = await until(
    "broker socket",
    30_000,
    () =>
      existsSync(config.listen!)
        ? connect({
          server: config.listen!,
          name: "e2e-host",
          timeout: 5000,
          reconnectMaxDelay: 300,
        })
        : undefined,
  );
  const boots = await Promise.all([g1.ready, g2.ready]);
  const [a1, a2] = await Promise.all([agentUp(w, "vm1", 120_000), agentUp(w, "vm2", 120_000)]);
  console.log(
    `vm e2e (${RUNTIME}${opts.shm ? ", shm" : ""}): accelerator=${g1.accelerator} ` +
      `boot vm1=${boots[0]} ms vm2=${boots[1]} ms, agents answering after ${Date.now() - t0} ms`,
  );
  assert.deepEqual([a1.me, a1.runtime], ["vm1", "deno"]);
  assert.deepEqual([a2.me, a2.runtime], ["vm2", "bun"]);
  return w;
}

test("vm e2e: boot a Deno guest and a Bun guest from qemuArgs(vm), with a vbus broker", {
  skip,
  timeout: 180_000,
}, async () => {
  // No "shm": these VMs use the port stream. The ring path has its own pair, at the end.
  await bootWorld({ shm: false, tag: "" });
});

test(
  "vm e2e: Deno publisher in vm1 -> Bun subscriber in vm2 through the host broker (port stream)",
  {
    skip,
    timeout: 120_000,
  },
  async () => {
    const w = world;
    assert.ok(w, "guests not booted");
    const before = await stats(w);
    const N = 200;
    await publishFromGuest(w, "vm1", {
      subject: "e2e.to.vm2.stream",
      from: 1,
      to: N,
      intervalMs: 0,
      peer: "vm2",
    });
    const done = await publisherDone(w, "vm1", 60_000);
    assert.equal(done.confirmed, N, `every publish confirmed by flush (${done.unconfirmed} not)`);
    const got = await until("vm2 to record every message", 20_000, () => {
      const r = received(w, "vm2", "stream");
      return r.length >= N ? r : undefined;
    });
    assert.deepEqual(got, range(1, N), "vm2 received 1..N once each, in order");
    assert.deepEqual(numbersIn(w, "vm1.e2e.to.vm2.stream.confirmed"), range(1, N));

    const s = await stats(w);
    const [v1, v2] = [vmStats(s, "vm1"), vmStats(s, "vm2")];
    assert.equal(v1.connected, true, "vm1 connected");
    assert.equal(v2.connected, true, "vm2 connected");
    assert.ok(
      v1.msgsIn - vmStats(before, "vm1").msgsIn >= N,
      `vm1 msgsIn grew by >= ${N}: ${JSON.stringify(v1)}`,
    );
    assert.ok(
      v2.msgsOut - vmStats(before, "vm2").msgsOut >= N,
      `vm2 msgsOut grew by >= ${N}: ${JSON.stringify(v2)}`,
    );
    assert.equal(v1.path, "stream");
    assert.equal(v2.path, "stream");
    assert.ok(v2.subscriptions >= 3, "vm2's agent subscriptions are live");
  },
);

// The ring-path variant of this stream (VMs configured with `shm`) is the last test of the file.

test("vm e2e: request/reply between guests and a host process, both directions", {
  skip,
  timeout: 60_000,
}, async () => {
  const w = world;
  assert.ok(w, "guests not booted");
  // Host asks a guest service.
  const d1 = await w.host.request<{ n: number; by: string }>("svc.vm1.double", 21, {
    timeout: 5000,
  });
  assert.deepEqual(d1.data, { n: 42, by: "deno" });
  const d2 = await w.host.request<{ n: number; by: string }>("svc.vm2.double", 50, {
    timeout: 5000,
  });
  assert.deepEqual(d2.data, { n: 100, by: "bun" });

  // Guest asks a host service.
  const service = w.host.subscribe<number>("host.triple", {
    callback: (_e, m) => void m.respond(m.data * 3),
  });
  await w.host.flush();
  try {
    const r1 = await ctl<{ ok: boolean; data: number; error?: string }>(w, "vm1", {
      op: "ask",
      subject: "host.triple",
      value: 7,
    });
    assert.deepEqual(r1, { ok: true, data: 21 }, `vm1 asking the host: ${r1.error}`);
    const r2 = await ctl<{ ok: boolean; data: number; error?: string }>(w, "vm2", {
      op: "ask",
      subject: "host.triple",
      value: 9,
    });
    assert.deepEqual(r2, { ok: true, data: 27 }, `vm2 asking the host: ${r2.error}`);
    // And guest to guest (Bun asks Deno), through the host broker.
    const r3 = await ctl<{ ok: boolean; data: unknown; error?: string }>(w, "vm2", {
      op: "ask",
      subject: "svc.vm1.double",
      value: 4,
    });
    assert.deepEqual(r3, { ok: true, data: { n: 8, by: "deno" } }, `vm2 asking vm1: ${r3.error}`);
    // No responders is reported as such, from inside a guest too.
    const r4 = await ctl<{ ok: boolean; error?: string }>(w, "vm1", {
      op: "ask",
      subject: "nobody.home",
      value: 1,
    });
    assert.equal(r4.ok, false);
    assert.match(r4.error ?? "", /no responders/i);
  } finally {
    service.unsubscribe();
  }
});

test(
  "vm e2e: broker killed and restarted while guests run: reconnect, resubscribe, nothing confirmed lost or duplicated",
  {
    skip,
    timeout: 180_000,
  },
  async () => {
    const w = world;
    assert.ok(w, "guests not booted");
    // VBUS_E2E_BURST=N: publish N numbers back to back, flushing every 200, so that writes
    // blocked in the guest's kernel while the broker is down carry whole batches of frames.
    const burst = Number(process.env.VBUS_E2E_BURST ?? 0);
    const N = burst || 400;
    await publishFromGuest(w, "vm1", {
      subject: "e2e.to.vm2.restart",
      from: 1,
      to: N,
      intervalMs: burst ? 0 : 15,
      flushEvery: burst ? 200 : 1,
      peer: "vm2",
    });
    await until(
      `vm2 to receive the first ${N / 10} messages`,
      30_000,
      () => received(w, "vm2", "restart").length >= N / 10 || undefined,
    );

    await killBroker(w); // SIGKILL: no goodbye on any port
    await sleep(1500); // guests see EOF and retry against a port with no host
    // Everything the old broker delivered has arrived by now (vm2 cannot receive without a host).
    const lastBefore = Math.max(0, ...received(w, "vm2", "restart"));
    startBroker(w);
    const t0 = Date.now();
    await until("both guests back with the new broker", 60_000, async () => {
      const s = await stats(w);
      return vmStats(s, "vm1").connected && vmStats(s, "vm2").connected &&
          vmStats(s, "vm2").subscriptions >= 3 || undefined;
    });
    console.log(
      `vm e2e (${RUNTIME}): guests reconnected ${Date.now() - t0} ms after the broker restart`,
    );

    const done = await publisherDone(w, "vm1", 90_000);
    await w.host.request("e2e.ctl.vm2", { op: "ping" }, { timeout: 5000 }); // vm2 processed all before
    await sleep(300);
    const got = received(w, "vm2", "restart");
    const confirmed = numbersIn(w, "vm1.e2e.to.vm2.restart.confirmed");
    const unconfirmed = numbersIn(w, "vm1.e2e.to.vm2.restart.unconfirmed");
    const summary =
      `received ${got.length}, confirmed ${done.confirmed}, unconfirmed ${done.unconfirmed} ` +
      `(${unconfirmed.slice(0, 20).join(",")}${unconfirmed.length > 20 ? ",..." : ""}), ` +
      `last before kill ${lastBefore}`;
    console.log(`vm e2e (${RUNTIME}): broker restart: ${summary}`);
    assert.equal(confirmed.length, done.confirmed, summary);
    assert.deepEqual(dupes(got), [], `no duplicates: ${summary}`);
    const gotSet = new Set(got);
    const missing = confirmed.filter((n) => !gotSet.has(n));
    assert.deepEqual(missing, [], `every confirmed message arrived: ${summary}`);
    assert.deepEqual(got, [...got].sort((a, b) => a - b), "in order");
    const after = got.filter((n) => n > lastBefore);
    assert.ok(
      after.length >= 50,
      `messages published after the restart arrive (${after.length}): ${summary}`,
    );
    assert.ok(done.confirmed + done.unconfirmed === N);

    const s = await stats(w);
    console.log(
      `vm e2e (${RUNTIME}): new broker: vm1 sessions ${vmStats(s, "vm1").sessions} errors ` +
        `${JSON.stringify(vmStats(s, "vm1").errors)}, vm2 sessions ${vmStats(s, "vm2").sessions} ` +
        `errors ${JSON.stringify(vmStats(s, "vm2").errors)}`,
    );
    assert.equal(vmStats(s, "vm1").connected, true);
    assert.equal(vmStats(s, "vm2").connected, true);
    assert.ok(vmStats(s, "vm2").msgsOut >= after.length);
  },
);

test(
  "vm e2e: QEMU of vm1 killed and started again gets a fresh session; vm2 never stops receiving",
  {
    skip,
    timeout: 240_000,
  },
  async () => {
    const w = world;
    assert.ok(w, "guests not booted");
    const s0 = vmStats(await stats(w), "vm1");
    const oldSession = (await ctl<{ session: string }>(w, "vm1", { op: "ping" })).session;

    // The host streams numbered messages to vm2 the whole time.
    let stop = false;
    const marks: Record<string, number> = {};
    const confirmed: number[] = [];
    let n = 0;
    const steady = (async () => {
      while (!stop) {
        n++;
        try {
          await w.host.publish("e2e.to.vm2.steady", n);
          await w.host.flush();
          confirmed.push(n);
        } catch { /* unconfirmed */ }
        await sleep(20);
      }
    })();
    try {
      await until(
        "vm2 receiving the steady stream",
        20_000,
        () => received(w, "vm2", "steady").length >= 10 || undefined,
      );
      marks.kill = n;
      w.guests.vm1.kill();
      await w.guests.vm1.exited;
      await until(
        "the broker to notice vm1 is gone",
        20_000,
        async () => !vmStats(await stats(w), "vm1").connected || undefined,
      );
      marks.down = n;
      const t0 = Date.now();
      w.guests.vm1 = await bootVm(w, "vm1", "vm1-again");
      const bootMs = await w.guests.vm1.ready;
      const a1 = await agentUp(w, "vm1", 120_000);
      marks.up = n;
      console.log(
        `vm e2e (${RUNTIME}): vm1 rebooted (boot ${bootMs} ms, agent answering after ${
          Date.now() - t0
        } ms)`,
      );
      assert.notEqual(a1.session, oldSession, "a fresh session");
      await until(
        "vm2 to keep receiving after vm1 is back",
        20_000,
        () => received(w, "vm2", "steady").some((x) => x >= marks.up + 10) || undefined,
      );
    } finally {
      stop = true;
      await steady;
    }
    await w.host.request("e2e.ctl.vm2", { op: "ping" }, { timeout: 5000 });
    await sleep(300);
    const got = received(w, "vm2", "steady");
    const summary =
      `host published ${n}, confirmed ${confirmed.length}, vm2 received ${got.length}; ` +
      `kill at ${marks.kill}, broker saw vm1 gone at ${marks.down}, vm1 answering at ${marks.up}`;
    console.log(`vm e2e (${RUNTIME}): ${summary}`);
    assert.deepEqual(dupes(got), [], summary);
    const gotSet = new Set(got);
    assert.deepEqual(
      confirmed.filter((x) => !gotSet.has(x)),
      [],
      `every confirmed message reached vm2: ${summary}`,
    );
    assert.ok(
      got.filter((x) => x > marks.kill && x <= marks.up).length >= 20,
      `vm2 received while vm1 was down: ${summary}`,
    );

    const s1 = vmStats(await stats(w), "vm1");
    assert.ok(s1.sessions > s0.sessions, `sessions incremented: ${s0.sessions} -> ${s1.sessions}`);
    assert.equal(s1.connected, true);

    // The restarted guest publishes again, to vm2.
    await publishFromGuest(w, "vm1", {
      subject: "e2e.to.vm2.again",
      from: 1,
      to: 20,
      intervalMs: 0,
      peer: "vm2",
    });
    await publisherDone(w, "vm1", 30_000);
    const again = await until("vm2 to get vm1's messages after the reboot", 10_000, () => {
      const r = received(w, "vm2", "again");
      return r.length >= 20 ? r : undefined;
    });
    assert.deepEqual(again, range(1, 20));
  },
);

test("vm e2e: both agents exit cleanly", { skip, timeout: 60_000 }, async () => {
  const w = world;
  assert.ok(w, "guests not booted");
  await Promise.all(["vm1", "vm2"].map((vm) => ctl(w, vm, { op: "exit" }).catch(() => {})));
  const results = await Promise.all(["vm1", "vm2"].map((vm) => w.guests[vm].exited));
  for (const [i, r] of results.entries()) {
    assert.equal(
      r.code,
      0,
      `vm${i + 1} exit code ${r.code} (${r.error ?? ""})\n${r.consoleLog.slice(-3000)}`,
    );
  }
  await teardown();
});

test(
  "vm e2e: ring path: with shm (ivshmem in both guests) the Deno -> Bun stream goes through shared memory",
  { skip, timeout: 240_000 },
  async () => {
    const w = await bootWorld({ shm: true, tag: "ring-" });
    try {
      const before = await stats(w);
      for (const vm of ["vm1", "vm2"]) {
        const v = vmStats(before, vm);
        assert.equal(v.path, "ring", `${vm} path ${v.path} (${v.pathReason ?? ""})`);
      }
      const N = 2000;
      await publishFromGuest(w, "vm1", {
        subject: "e2e.to.vm2.ring",
        from: 1,
        to: N,
        intervalMs: 0,
        flushEvery: 100,
        peer: "vm2",
      });
      const done = await publisherDone(w, "vm1", 60_000);
      assert.equal(done.confirmed, N, `every batch confirmed by flush (${done.unconfirmed} not)`);
      const got = await until("vm2 to record every message", 20_000, () => {
        const r = received(w, "vm2", "ring");
        return r.length >= N ? r : undefined;
      });
      assert.deepEqual(got, range(1, N), "vm2 received 1..N once each, in order");
      const s = await stats(w);
      const [v1, v2] = [vmStats(s, "vm1"), vmStats(s, "vm2")];
      console.log(
        `vm e2e (${RUNTIME}, shm): vm1 ringMsgsIn ${v1.ringMsgsIn} msgsIn ${v1.msgsIn}, ` +
          `vm2 ringMsgsOut ${v2.ringMsgsOut} msgsOut ${v2.msgsOut}`,
      );
      assert.equal(v1.path, "ring");
      assert.equal(v2.path, "ring");
      assert.ok(
        v1.ringMsgsIn - vmStats(before, "vm1").ringMsgsIn >= N,
        "vm1 published through its ring",
      );
      assert.ok(
        v2.ringMsgsOut - vmStats(before, "vm2").ringMsgsOut >= N,
        "vm2 received through its ring",
      );
      await Promise.all(["vm1", "vm2"].map((vm) => ctl(w, vm, { op: "exit" }).catch(() => {})));
      const results = await Promise.all(["vm1", "vm2"].map((vm) => w.guests[vm].exited));
      for (const [i, r] of results.entries()) {
        assert.equal(
          r.code,
          0,
          `vm${i + 1} exit code ${r.code} (${r.error ?? ""})\n${r.consoleLog.slice(-3000)}`,
        );
      }
    } finally {
      await teardown();
    }
  },
);

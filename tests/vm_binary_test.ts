/**
 * The standalone executable in real QEMU guests (issue 13, "Standalone executable"): the
 * `vbus` binary from scripts/compile.mjs is the host broker, a host publisher, and both guests'
 * clients. vm1 runs `vbus sub`, vm2 runs `vbus sub` (for a start signal) then `vbus pub`, each
 * over its virtio-serial port with its ivshmem region: the ring path. Every message must reach
 * vm1, and the broker's stats must show both VMs on the ring path, with ring counters covering
 * every message. The guests see the binary through a read-only bind of its temp directory (the
 * lab shares the host root over 9p) and run it from there, with no bun, deno or node_modules
 * on PATH or beside it; they write what they receive to a writable 9p share.
 * Skips, printing why, when the lab cannot run here; under CI=true as root it must run.
 * Runs under `deno test -A` and `bun test --timeout 600000` (TCG guests: minutes).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
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
import { type BrokerStats, parseConfig } from "../mod.ts";

const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
/** Bound of each guest's life. */
const GUEST_LIFETIME_MS = 360_000;
/** The binary is ~110 MB, read over 9p; the default 256M would leave little for the page cache. */
const GUEST_MEMORY = "512M";
/** Messages vm2 publishes, and messages the host publishes, to vm1. */
const FROM_VM2 = 300;
const FROM_HOST = 200;

let labProblem: string | undefined;
try {
  ensureLab();
  const a = await detectAccelerator();
  console.log(`lab accelerator: ${a.accelerator} (${a.reason})`);
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  labProblem = `micro-VM lab unavailable: ${err.message}`;
}
const mustRun = process.env.CI === "true" && process.getuid?.() === 0;
if (labProblem && !mustRun) console.log(`SKIP vm binary tests: ${labProblem}`);

const cleanups: (() => void | Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Run the binary on the host (not blocking the event loop: the guests' consoles keep flowing). */
function runBinary(bin: string, args: string[], timeoutMs = 60_000) {
  return new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const child = spawn(bin, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", HOME: tmpdir(), VBUS_LOG: "warn" },
    });
    let out = "";
    let err = "";
    child.stdout!.on("data", (d) => out += d);
    child.stderr!.on("data", (d) => err += d);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (e) => err += e.message);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

function tail(text: string, n = 40): string {
  return text.trim().split("\n").slice(-n).join("\n");
}

test(
  "vm binary: the compiled vbus runs in two guests (sub in vm1, pub in vm2) and on the host (broker, pub), all on the ring path",
  {
    timeout: 600_000,
  },
  async (t) => {
    if (labProblem) {
      if (mustRun) assert.fail(`CI=true as root: the real-guest tests must run, but ${labProblem}`);
      t.skip(labProblem);
      return;
    }
    const t0 = Date.now();
    // The binary, alone in a directory the guests see read-only.
    const binDir = mkdtempSync(join(tmpdir(), "vbus-vmbin-"));
    cleanups.push(() => rmSync(binDir, { recursive: true, force: true }));
    const bin = join(binDir, "vbus");
    const compiled = spawnSync("node", ["scripts/compile.mjs", "--output", bin], {
      cwd: PROJECT_ROOT,
      encoding: "utf8",
      timeout: 300_000,
    });
    assert.equal(
      compiled.status,
      0,
      `npm run compile failed:\n${compiled.stdout}${compiled.stderr}`,
    );
    console.log(`vm binary (${RUNTIME}): ${compiled.stdout.trim()}`);

    const dir = mkdtempSync(join(tmpdir(), "vbus-vmbin-run-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const out = join(dir, "out");
    mkdirSync(out);
    chmodSync(out, 0o777);
    const shm = (vm: string) => `/dev/shm/vbus-vmbin-${RUNTIME}-${process.pid}-${vm}`;
    const listen = join(dir, "broker.sock");
    const raw = {
      listen,
      vms: ["vm1", "vm2"].map((name) => ({
        name,
        socket: join(dir, `${name}.sock`),
        shm: shm(name),
        shmSize: 1 << 20,
      })),
    };
    const configPath = join(dir, "broker.jsonc");
    writeFileSync(configPath, `// vbus binary-in-guest test\n${JSON.stringify(raw, null, 2)}\n`);
    const config = parseConfig(readFileSync(configPath, "utf8"), configPath);
    cleanups.push(() => {
      for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
    });

    // vm1 counts everything on bin.data.>; vm2 waits for bin.go, then publishes.
    const total = FROM_VM2 + FROM_HOST;
    const scripts: Record<string, string> = {
      // First a timed `--help`: the binary's cold start from 9p in this guest (reported below).
      vm1: [
        `read up _ < /proc/uptime; ./vbus --help > /dev/null || exit 12`,
        `read up2 _ < /proc/uptime; echo "$up $up2" > ${out}/vm1.help-times`,
        `exec ./vbus sub 'bin.data.>' --count ${total} > ${out}/vm1.jsonl 2> ${out}/vm1.err`,
      ].join("\n"),
      vm2: [
        `./vbus sub bin.go --count 1 > ${out}/vm2.go.jsonl 2> ${out}/vm2.go.err || exit 11`,
        `exec ./vbus pub bin.data.vm2 '{"from":"vm2"}' --count ${FROM_VM2} 2> ${out}/vm2.pub.err`,
      ].join("\n"),
    };
    const guests: Record<string, GuestHandle> = {};
    cleanups.push(async () => {
      for (const g of Object.values(guests)) g.kill();
      await Promise.all(Object.values(guests).map((g) => g.exited));
    });
    // Guests first (their chardev sockets appear at once; the broker links whenever it is up).
    for (const vm of config.vms) {
      guests[vm.name] = await bootGuest({
        name: `vmbin-${RUNTIME}-${vm.name}`,
        deviceArgs: qemuArgs(vm),
        script: scripts[vm.name],
        timeoutMs: GUEST_LIFETIME_MS,
        memory: GUEST_MEMORY,
        cwd: binDir,
        writableBinds: [out],
        env: { VBUS_LOG: "warn" },
      });
    }

    // The host broker: the binary too.
    mkdirSync(LOG_DIR, { recursive: true });
    const brokerLog = join(LOG_DIR, `vmbin-broker-${RUNTIME}.log`);
    const broker: ChildProcess = spawn(bin, ["broker", "--config", configPath], {
      stdio: ["ignore", "ignore", "pipe"],
      cwd: binDir,
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", HOME: tmpdir(), VBUS_LOG: "info" },
    });
    broker.stderr!.pipe(createWriteStream(brokerLog));
    const brokerGone = new Promise((r) => broker.once("close", r));
    cleanups.push(async () => {
      if (broker.exitCode === null && broker.signalCode === null) broker.kill("SIGKILL");
      await brokerGone;
    });
    const stats = async () => {
      const r = await runBinary(bin, ["stats", "--server", listen], 20_000);
      if (r.code !== 0) throw new Error(`vbus stats exited ${r.code}: ${r.err.trim()}`);
      return JSON.parse(r.out) as BrokerStats;
    };
    const vmStats = (s: BrokerStats, name: string) => {
      const v = s.vms.find((x) => x.name === name);
      assert.ok(v, `no stats for ${name}`);
      return v;
    };
    const early: Record<string, Awaited<GuestHandle["exited"]>> = {};
    for (const [name, g] of Object.entries(guests)) g.exited.then((r) => early[name] = r);
    const consoles = () =>
      Object.entries(guests).map(([n, g]) =>
        `--- ${n} console (${g.consoleLogPath}) ---\n${tail(readIf(g.consoleLogPath))}\n` +
        `--- ${n} stderr ---\n${readIf(join(out, `${n}.err`))}${readIf(join(out, `${n}.go.err`))}`
      ).join("\n") + `\nbroker log: ${brokerLog}`;

    // Both guests' clients subscribed, each on its VM's ring.
    let ready: BrokerStats | undefined;
    let lastProblem = "";
    for (const deadline = Date.now() + 300_000; !ready;) {
      const gone = Object.entries(early)[0];
      if (gone) {
        assert.fail(
          `${gone[0]} exited early (code ${gone[1].code}, ${gone[1].error ?? ""})\n${consoles()}`,
        );
      }
      if (Date.now() > deadline) {
        assert.fail(
          `vm1 and vm2 not subscribed on the ring path in time (${lastProblem})\n${consoles()}`,
        );
      }
      try {
        const s = await stats();
        const [v1, v2] = [vmStats(s, "vm1"), vmStats(s, "vm2")];
        lastProblem =
          `vm1 ${v1.path}/${v1.subscriptions} subs, vm2 ${v2.path}/${v2.subscriptions} subs`;
        if (
          v1.path === "ring" && v1.subscriptions >= 1 && v2.path === "ring" && v2.subscriptions >= 1
        ) {
          ready = s;
        }
      } catch (err) {
        lastProblem = (err as Error).message;
      }
      if (!ready) await sleep(500);
    }
    const accel = guests.vm1.accelerator;
    const [up, up2] = readIf(join(out, "vm1.help-times")).trim().split(" ").map(Number);
    console.log(
      `vm binary (${RUNTIME}): \`vbus --help\` in vm1, cold from 9p: ${
        ((up2 - up) * 1000).toFixed(0)
      } ms`,
    );
    console.log(
      `vm binary (${RUNTIME}): accelerator=${accel}, both guests' binaries subscribed on rings ` +
        `${Date.now() - t0} ms after the start`,
    );
    const [b1, b2] = [vmStats(ready, "vm1"), vmStats(ready, "vm2")];

    // The host publishes to vm1 (binary), then lets vm2 publish.
    const hostPub = await runBinary(bin, [
      "pub",
      "bin.data.host",
      '{"from":"host"}',
      "--count",
      String(FROM_HOST),
      "--server",
      listen,
    ]);
    assert.equal(hostPub.code, 0, `host pub: ${hostPub.err}`);
    const go = await runBinary(bin, ["pub", "bin.go", "true", "--server", listen]);
    assert.equal(go.code, 0, `host pub bin.go: ${go.err}`);

    const results = await Promise.all([guests.vm1.exited, guests.vm2.exited]);
    for (const [i, r] of results.entries()) {
      const name = `vm${i + 1}`;
      assert.equal(
        r.code,
        0,
        `${name} exit code ${r.code} (${r.error ?? ""})\n${tail(r.consoleLog)}\n` +
          `stderr: ${readIf(join(out, `${name}.err`))}${readIf(join(out, `${name}.pub.err`))}`,
      );
    }
    const got = readFileSync(join(out, "vm1.jsonl"), "utf8").trim().split("\n").map((l) =>
      JSON.parse(l) as { subject: string; data: { from: string } }
    );
    const count = (subject: string, from: string) =>
      got.filter((m) => m.subject === subject && m.data.from === from).length;
    assert.equal(got.length, total, `vm1 received ${got.length} of ${total}`);
    assert.equal(count("bin.data.vm2", "vm2"), FROM_VM2, "every message from vm2's binary");
    assert.equal(count("bin.data.host", "host"), FROM_HOST, "every message from the host's binary");
    assert.deepEqual(JSON.parse(readFileSync(join(out, "vm2.go.jsonl"), "utf8")), {
      subject: "bin.go",
      data: true,
    });
    for (const f of ["vm1.err", "vm2.go.err", "vm2.pub.err"]) {
      assert.doesNotMatch(readIf(join(out, f)), /unavailable|stream|Cannot find module/i, f);
    }

    const s = await stats();
    const [v1, v2] = [vmStats(s, "vm1"), vmStats(s, "vm2")];
    console.log(
      `vm binary (${RUNTIME}): vm1 ringMsgsOut ${v1.ringMsgsOut} msgsOut ${v1.msgsOut}, ` +
        `vm2 ringMsgsIn ${v2.ringMsgsIn} msgsIn ${v2.msgsIn}, total ${Date.now() - t0} ms`,
    );
    assert.ok(v1.ringMsgsOut - b1.ringMsgsOut >= total, "vm1's subscriber read its ring");
    assert.ok(v2.ringMsgsIn - b2.ringMsgsIn >= FROM_VM2, "vm2's publisher wrote its ring");
    assert.equal(v1.dropped, 0, `vm1 drops: ${JSON.stringify(v1.drops)}`);

    broker.kill("SIGTERM");
    await brokerGone;
    const log = readIf(brokerLog);
    assert.match(log, /broker stopped/, log);
    assert.doesNotMatch(log, /FFI unavailable|Cannot find module/, log);
  },
);

function readIf(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

/**
 * The demo on real VMs: boots two QEMU guests with the project's micro-VM lab (lab/vm.ts), each
 * with exactly the devices `qemuArgs(vm)` prints, plus a broker and a host process, and prints
 * what flows, each line prefixed with who said it:
 *
 * - vm1 runs the sensor publisher (examples/sensor_publisher.ts) under Bun;
 * - vm2 runs this file with `--guest` under Deno: it serves `math.add` and prints vm1's readings;
 * - the host (this process) runs the broker, watches every sensor and asks vm2 `math.add`.
 *
 *   node scripts/demo.mjs --vm     (root on Debian: installs QEMU and builds the lab on first run)
 *
 * Reports the accelerator (TCG where KVM does not work) and the boot times, shuts everything
 * down and exits 0; bounded in time. Without QEMU it says why and runs the simulated demo
 * (examples/demo.ts) instead.
 * @module
 */
import process from "node:process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Broker, type Bus, connect, parseConfig } from "../mod.ts";
import { createLogger } from "../src/util/log.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import { askAdd, serveAdd } from "./request_reply.ts";
import { watchSensors } from "./host_subscriber.ts";
import type { Reading } from "./sensor_publisher.ts";

const say = (who: string, text: string) => console.log(`${who.padEnd(6)} | ${text}`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

if (process.argv.includes("--guest")) await guestVm2();
else await host();

/** vm2's program (runs inside the guest, under Deno): math service + sensor watcher. */
async function guestVm2() {
  const runtime = "Deno" in globalThis ? "Deno" : "Bun";
  const bus = await connect({ name: "math", timeout: 60_000 });
  console.log(`${runtime} connected as "${bus.info?.identity}" on ${bus.info?.port}`);
  serveAdd(bus);
  bus.subscribe<Reading>("sensors.vm1.temp", {
    callback: (_e, m) => console.log(`sees vm1's reading ${m.data.celsius.toFixed(1)} °C`),
  });
  const stop = bus.subscribe("demo.stop", { max: 1 });
  await bus.flush();
  console.log("serving math.add, watching sensors.vm1.temp");
  for await (const _ of stop) break;
  console.log("asked to stop; draining");
  await bus.drain();
}

async function host() {
  const lab = await import("../lab/vm.ts");
  let accel;
  try {
    lab.ensureLab();
    accel = await lab.detectAccelerator();
  } catch (err) {
    if (!(err instanceof lab.LabUnavailableError)) throw err;
    say("demo", `QEMU guests unavailable here: ${err.message}`);
    say("demo", "running the simulated-guest demo (examples/demo.ts) instead\n");
    await import("./demo.ts");
    return;
  }

  const DEADLINE_MS = 180_000;
  const deadline = setTimeout(() => {
    console.error(`vm demo: still running after ${DEADLINE_MS / 1000} s; giving up`);
    process.exit(1); // lab/vm.ts kills live guests on exit
  }, DEADLINE_MS);
  const dir = mkdtempSync(join(tmpdir(), "vbus-vmdemo-"));
  // ivshmem backing files: the guests' messages go through shared-memory rings (path=ring).
  const shmFile = (vm: string) => `/dev/shm/vbus-vmdemo-${process.pid}-${vm}`;
  const config = parseConfig(
    JSON.stringify({
      listen: join(dir, "broker.sock"),
      vms: [
        {
          name: "vm1",
          socket: join(dir, "vm1.sock"),
          shm: shmFile("vm1"),
          shmSize: 1 << 20,
          permissions: { publish: ["sensors.vm1.>"], subscribe: ["cmd.vm1.>"] },
        },
        { name: "vm2", socket: join(dir, "vm2.sock"), shm: shmFile("vm2"), shmSize: 1 << 20 },
      ],
    }),
    "vm demo config",
  );
  const runtime = "Deno" in globalThis ? "Deno" : "Bun";
  console.log(
    `vbus VM demo on ${runtime}: a broker, two QEMU guests (vm1: Bun, vm2: Deno) and a host process\n`,
  );
  say("lab", `accelerator: ${accel.accelerator.toUpperCase()} (${accel.reason})`);

  const t0 = Date.now();
  const scripts: Record<string, string> = {
    // vm1 waits for the host's go (so vm2, slower to start under Deno, sees the readings too):
    // the vbus CLI in the guest, then the sensor publisher.
    vm1: "./node_modules/.bin/bun src/cli/main.ts sub cmd.vm1.start --count 1 >/dev/null && " +
      "exec ./node_modules/.bin/bun examples/sensor_publisher.ts",
    vm2: "exec ./node_modules/.bin/deno run -A examples/vm_demo.ts --guest",
  };
  const guests = await Promise.all(config.vms.map((vm) =>
    lab.bootGuest({
      name: `vmdemo-${vm.name}`,
      deviceArgs: qemuArgs(vm),
      script: scripts[vm.name],
      timeoutMs: 150_000,
    })
  ));
  const [g1, g2] = guests;
  for (const [i, g] of guests.entries()) {
    const name = config.vms[i].name;
    say("lab", `${name}: qemu started (pid ${g.pid}), console in ${g.consoleLogPath}`);
    g.ready.then((ms) => say("lab", `${name}: booted in ${ms} ms, starting its program`), () => {});
  }
  const tails = guests.map((g, i) => tailConsole(config.vms[i].name, g.consoleLogPath));

  const broker = new Broker(config, { logger: createLogger("broker", "error") });
  await broker.start();
  say(
    "broker",
    `listening on ${config.listen}, connecting to the QEMU chardev sockets of vm1 and vm2`,
  );
  const hostBus = await connect({ server: config.listen!, name: "dashboard" });
  say("host", `connected as "${hostBus.info?.identity}"`);
  watchSensors(hostBus, (subject, r) => say("host", `${subject} = ${r.celsius.toFixed(1)} °C`));
  await hostBus.flush();

  let code = 0;
  try {
    // Ask vm2 once its Deno service is up (no responders until then).
    await askWhenUp(hostBus, g2.exited);
    // Tell vm1 to start (repeated until its first reading: its CLI may not have subscribed yet).
    let readings = 0;
    hostBus.subscribe("sensors.vm1.temp", { callback: () => readings++ });
    let go = true;
    let announced = false;
    g1.exited.then(() => go = false);
    while (go && readings === 0) {
      await hostBus.publish("cmd.vm1.start", true);
      if (!announced) {
        say("host", "publishes cmd.vm1.start (again each second until vm1's first reading)");
      }
      announced = true;
      for (let i = 0; i < 10 && go && readings === 0; i++) await sleep(100);
    }
    const r1 = await g1.exited; // the sensor publisher sends 10 readings, then vm1 powers off
    say("lab", `vm1: program exited with code ${r1.code}, guest off after ${r1.totalMs} ms`);
    if (r1.code !== 0) code = 1;
    await hostBus.publish("demo.stop");
    await hostBus.flush();
    const r2 = await g2.exited;
    say("lab", `vm2: program exited with code ${r2.code}, guest off after ${r2.totalMs} ms`);
    if (r2.code !== 0) code = 1;
    for (const s of broker.stats().vms) {
      say(
        "broker",
        `${s.name}: ${s.sessions} session(s), ${s.msgsIn} in, ${s.msgsOut} out, ${s.denied} denied, path=${s.path}`,
      );
    }
    const boots = guests.map((g, i) => `${config.vms[i].name} ${g.accelerator.toUpperCase()} boot`);
    const r = [r1, r2];
    say(
      "lab",
      `${boots.map((b, i) => `${b} ${r[i].bootMs} ms`).join(", ")}; demo took ${
        Date.now() - t0
      } ms`,
    );
  } catch (err) {
    console.error(`vm demo failed: ${(err as Error).message}`);
    code = 1;
  } finally {
    for (const g of guests) g.kill();
    await Promise.all(guests.map((g) => g.exited));
    for (const t of tails) t.stop();
    await hostBus.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
    for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
    clearTimeout(deadline);
  }
  console.log(code === 0 ? "\nVM demo finished" : "\nVM demo failed");
  process.exit(code);
}

async function askWhenUp(bus: Bus, exited: Promise<unknown>) {
  let gone = false;
  exited.then(() => gone = true);
  while (!gone) {
    try {
      say("host", `asks vm2 math.add(2, 40) -> ${await askAdd(bus, 2, 40)}`);
      return;
    } catch {
      await sleep(300); // vm2's Deno program is not up yet
    }
  }
}

/** Print a guest's console lines (its program's output) as they appear, prefixed with its name. */
function tailConsole(name: string, path: string): { stop(): void } {
  let offset = 0;
  let partial = "";
  const poll = () => {
    let text: string;
    try {
      const buf = readFileSync(path);
      text = buf.subarray(offset).toString("utf8");
      offset = buf.length;
    } catch {
      return;
    }
    partial += text;
    const lines = partial.split("\n");
    partial = lines.pop()!;
    for (const raw of lines) {
      const line = raw.replace(/\r$/, "");
      // Skip the qemu command line, the lab's markers and kernel messages: keep the program's output.
      if (
        !line.trim() || line.startsWith("# ") || line.startsWith("VBUS-") ||
        /^\[\s*\d+\.\d+\]/.test(line)
      ) continue;
      say(name, line);
    }
  };
  const timer = setInterval(poll, 100);
  return {
    stop() {
      clearInterval(timer);
      poll();
    },
  };
}

/**
 * The demo: a broker with two simulated guests and a host process, printing what flows.
 * Guest "vm1" runs the sensor publisher, guest "vm2" serves math.add and asks vm1's sensor
 * readings, the host watches everything and asks vm2 a question. Each simulated guest is a
 * real unix socket with QEMU's chardev semantics (see src/sim/simulated_vm.ts).
 *
 *   npm run demo        (or: bun examples/demo.ts / deno run -A examples/demo.ts)
 * @module
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { Broker, connect, parseConfig } from "../mod.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { createLogger } from "../src/util/log.ts";
import { publishReadings } from "./sensor_publisher.ts";
import { watchSensors } from "./host_subscriber.ts";
import { askAdd, serveAdd } from "./request_reply.ts";

const runtime = "Deno" in globalThis ? "Deno" : "Bun";
const dir = mkdtempSync(join(tmpdir(), "vbus-demo-"));
const say = (who: string, text: string) => console.log(`${who.padEnd(6)} | ${text}`);

// Each simulated VM's "ivshmem BAR" is a /dev/shm file the broker maps too: the fast path.
const shm = (vm: string) => `/dev/shm/${basename(dir)}-${vm}`;
const config = parseConfig(
  JSON.stringify({
    listen: join(dir, "broker.sock"),
    vms: [
      {
        name: "vm1",
        socket: join(dir, "vm1.sock"),
        shm: shm("vm1"),
        shmSize: 4 * 1024 * 1024,
        permissions: { publish: ["sensors.vm1.>"], subscribe: ["cmd.vm1.>"] },
      },
      { name: "vm2", socket: join(dir, "vm2.sock"), shm: shm("vm2"), shmSize: 4 * 1024 * 1024 },
    ],
  }),
  "demo config",
);

console.log(
  `vbus demo on ${runtime}: a broker, two simulated guests (vm1, vm2) and a host process\n`,
);
const vms = config.vms.map((v) => new SimulatedVm(v.name, v.socket));
for (const vm of vms) await vm.start();
const broker = new Broker(config, { logger: createLogger("broker", "error") });
await broker.start();
say("broker", `listening on ${config.listen}, connecting to the ports of vm1 and vm2`);

const vm1 = await connect({ transport: () => vms[0].open(), shm: shm("vm1"), name: "sensor" });
const vm2 = await connect({ transport: () => vms[1].open(), shm: shm("vm2"), name: "math" });
const host = await connect({ server: config.listen!, name: "dashboard" });
say(
  "vm1",
  `connected; the broker knows it as "${vm1.info?.identity}" (from its port, not from what it claims); data path: ${vm1.dataPath}`,
);
say("vm2", `connected as "${vm2.info?.identity}"; data path: ${vm2.dataPath}`);
say("host", `connected as "${host.info?.identity}"; data path: ${host.dataPath}`);

serveAdd(vm2);
vm2.subscribe<{ celsius: number }>("sensors.vm1.temp", {
  callback: (_e, m) => say("vm2", `sees vm1's reading ${m.data.celsius.toFixed(1)} °C`),
});
watchSensors(host, (subject, r) => say("host", `${subject} = ${r.celsius.toFixed(1)} °C`));
await Promise.all([vm2.flush(), host.flush()]);

await publishReadings(vm1, "vm1", 3, 200);
say("host", `asks vm2 math.add(2, 40) -> ${await askAdd(host, 2, 40)}`);
try {
  await askAdd(vm1, 1, 1);
} catch (err) {
  say("vm1", `asks math.add too, but may only publish sensors.vm1.>: ${(err as Error).message}`);
}

const stats = broker.stats();
for (const s of stats.vms) {
  say(
    "broker",
    `${s.name}: ${s.msgsIn} in (${s.ringMsgsIn} via its ring), ${s.msgsOut} out (${s.ringMsgsOut} via its ring), ${s.denied} denied, path=${s.path}`,
  );
}
for (const bus of [vm1, vm2, host]) await bus.drain();
await broker.stop();
for (const vm of vms) await vm.stop();
rmSync(dir, { recursive: true, force: true });
for (const vm of ["vm1", "vm2"]) rmSync(shm(vm), { force: true });
console.log("\ndemo finished");

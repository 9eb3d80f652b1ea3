/** The `vbus` CLI, run as a real process of the runtime running the tests. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { tempDir, waitFor } from "./helpers.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "src/cli/main.ts");
const isDeno = "Deno" in globalThis;

/** Start the CLI under the current runtime. */
function vbus(args: string[], env: Record<string, string> = {}): ChildProcess & { output: () => string; errors: () => string; done: Promise<number> } {
  const argv = isDeno ? ["run", "-A", "--quiet", CLI, ...args] : [CLI, ...args];
  const child = spawn(process.execPath, argv, {
    cwd: ROOT,
    env: { ...process.env, VBUS_LOG: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d) => out += d);
  child.stderr!.on("data", (d) => err += d);
  const done = new Promise<number>((resolve) => child.on("close", (code) => resolve(code ?? -1)));
  return Object.assign(child, { output: () => out, errors: () => err, done });
}

test("cli: bad arguments print usage and exit 2", async () => {
  for (const args of [[], ["bogus"], ["pub", "only-subject"], ["sub", "a", "--count", "x"], ["sub", "a", "--nope"], ["broker"]]) {
    const p = vbus(args);
    assert.equal(await p.done, 2, args.join(" "));
    assert.match(p.errors(), /Usage:/, args.join(" "));
  }
  const help = vbus(["--help"]);
  assert.equal(await help.done, 0);
  assert.match(help.output(), /vbus broker --config FILE/);
});

test("cli: broker, sub, pub, req/reply, stats, qemu-args and libvirt-xml end to end", async () => {
  const { dir, cleanup } = tempDir();
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const config = join(dir, "broker.jsonc");
  const listen = join(dir, "broker.sock");
  writeFileSync(config, `{
    // a complete example
    "listen": "${listen}",
    "vms": [{ "name": "vm1", "socket": "${join(dir, "vm1.sock")}", "shm": "/dev/shm/vbus-test-vm1" }]
  }`);
  const broker = vbus(["broker", "--config", config]);
  const procs: ChildProcess[] = [broker];
  try {
    await waitFor(() => vm.hostConnected, "broker connected to the VM port", 15_000);
    const sub = vbus(["sub", "greet.*", "--count", "2", "--server", listen]);
    procs.push(sub);
    // Subscribed once the broker counts it.
    const stats = async () => {
      const s = vbus(["stats"], { VBUS_SERVER: listen });
      assert.equal(await s.done, 0, s.errors());
      return JSON.parse(s.output());
    };
    for (let i = 0; i < 200 && (await stats()).host.subscriptions < 1; i++) { /* poll */ }
    const pub1 = vbus(["pub", "greet.a", "hello", "--server", listen]);
    assert.equal(await pub1.done, 0, pub1.errors());
    const pub2 = vbus(["pub", "greet.b", '{"n":[1,2]}', "--header", "k=v"], { VBUS_SERVER: listen });
    assert.equal(await pub2.done, 0, pub2.errors());
    assert.equal(await sub.done, 0, sub.errors());
    const lines = sub.output().trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines, [
      { subject: "greet.a", data: "hello" },
      { subject: "greet.b", data: { n: [1, 2] }, headers: { k: "v" } },
    ]);

    const replier = vbus(["reply", "svc.time", '"noon"', "--count", "1", "--server", listen]);
    procs.push(replier);
    let answer = "";
    for (let i = 0; i < 100 && !answer; i++) {
      const req = vbus(["req", "svc.time", "null", "--timeout", "2000", "--server", listen]);
      const code = await req.done;
      if (code === 0) answer = req.output();
      else assert.match(req.errors(), /no responders/);
    }
    const reply = JSON.parse(answer);
    assert.equal(reply.data, "noon");
    assert.match(reply.subject, /^_INBOX\.host\./);
    assert.equal(await replier.done, 0);

    const noOne = vbus(["req", "nobody", "1", "--server", listen]);
    assert.equal(await noOne.done, 1);
    assert.match(noOne.errors(), /no responders for "nobody"/);

    const s = await stats();
    assert.equal(s.vms[0].name, "vm1");

    const q = vbus(["qemu-args", "vm1", "--config", config]);
    assert.equal(await q.done, 0, q.errors());
    assert.match(q.output(), /virtserialport/);
    assert.match(q.output(), /name=org\.vbus\.0/);
    assert.match(q.output(), /ivshmem-plain/);
    const x = vbus(["libvirt-xml", "vm1", "--config", config]);
    assert.equal(await x.done, 0, x.errors());
    assert.match(x.output(), /<channel type=['"]unix['"]>/);
    const missing = vbus(["qemu-args", "vm9", "--config", config]);
    assert.equal(await missing.done, 1);
    assert.match(missing.errors(), /no VM named "vm9"/);
  } finally {
    for (const p of procs) p.kill("SIGTERM");
    await broker.done;
    await vm.stop();
    cleanup();
  }
});

test("cli: a broker config error names the file and key and exits 1", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const config = join(dir, "bad.json");
    writeFileSync(config, `{ "vms": [{ "name": "vm1" }] }`);
    const p = vbus(["broker", "--config", config]);
    assert.equal(await p.done, 1);
    assert.match(p.errors(), /bad\.json: vms\[0\]\.socket: is required/);
  } finally {
    cleanup();
  }
});

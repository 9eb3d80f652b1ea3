// `vbus agent` in real QEMU guests (issue 10). Two micro-VMs from the lab (lab/vm.ts), booted
// from exactly `qemuArgs(vm)` of a broker config, with a broker in this process:
//   vm1: `vbus agent` (Bun) owns the port; two subscribers (one Deno, one Bun) and then a
//        publisher (Bun) run as separate processes through it, with no option (VBUS_AGENT);
//   vm2: one subscriber (Bun) opening its port directly, as before the agent.
// Every subscriber must get every message, each vm1 process must be its own session of vm1
// on the ring path in the broker's stats, and so must the publisher (its own report). The
// guests write what they received to a writable 9p share. Skips, printing why, when the lab
// cannot run here. Runs under `deno test -A` and `bun test --timeout 600000`; wrap manual runs
// in `flock /tmp/vbus-heavy.lock`.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import process from "node:process";
import { join } from "node:path";
import { bootGuest, detectAccelerator, ensureLab, LabUnavailableError } from "../lab/vm.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import { Broker } from "../src/broker/broker.ts";
import { validateConfig } from "../src/broker/config.ts";
import { createLogger } from "../src/util/log.ts";
import type { SessionStats } from "../src/broker/session_stats.ts";

const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const N = 100;
const GUEST_MS = 300_000;

let skip: string | false = false;
try {
  ensureLab();
  const a = await detectAccelerator();
  console.log(`lab accelerator: ${a.accelerator} (${a.reason})`);
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skip = `micro-VM lab unavailable: ${err.message}`;
  console.log(`SKIP vm agent tests: ${skip}`);
}

function lines(file: string): Record<string, unknown>[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return []; // a line being written
    }
  });
}

async function until(what: string, ms: number, cond: () => boolean, why = () => ""): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for: ${what}\n${why()}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const FIXTURE = "tests/fixtures/agent_process.ts";
// Four runtimes in one guest: vm1 gets 512M (with 256M a Bun process once failed to resolve
// msgpackr over 9p). A process that dies before printing anything is started again, at most 3
// times; one that printed anything is never re-run, so nothing is published twice.
const RETRY =
  `retry() { f="$1"; shift; for t in 1 2 3; do "$@" > "$f" 2>> "$f.err"; [ -s "$f" ] && return; sleep 1; done; }`;
const VM1_SCRIPT = `
export VBUS_LOG=warn
B=./node_modules/.bin/bun; D=./node_modules/.bin/deno
${RETRY}
$B src/cli/main.ts agent --socket /run/vbus-agent.sock > "$OUT/agent.log" 2>&1 &
i=0; while [ ! -S /run/vbus-agent.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
export VBUS_AGENT=/run/vbus-agent.sock
retry "$OUT/vm1-deno.jsonl" $D run -A ${FIXTURE} sub 'g.>' &
retry "$OUT/vm1-bun.jsonl" $B ${FIXTURE} sub 'g.>' &
while [ ! -e "$OUT/go" ]; do sleep 0.2; done
retry "$OUT/vm1-pub.jsonl" $B ${FIXTURE} pub g.x ${N}
while [ ! -e "$OUT/stop" ]; do sleep 0.2; done
`;
const VM2_SCRIPT = `
export VBUS_LOG=warn
${RETRY}
retry "$OUT/vm2-bun.jsonl" ./node_modules/.bin/bun ${FIXTURE} sub 'g.>' &
while [ ! -e "$OUT/stop" ]; do sleep 0.2; done
`;

test(
  "vm agent: in one guest the agent, two subscribers (Deno, Bun) and a publisher in separate processes, a subscriber in a second guest: all get every message, each process its own ring session",
  {
    skip,
  },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "vbus-agent-e2e-"));
    const out = join(dir, "out");
    mkdirSync(out);
    chmodSync(out, 0o777);
    const config = validateConfig({
      vms: ["vm1", "vm2"].map((name) => ({
        name,
        socket: join(dir, `${name}.sock`),
        shm: `/dev/shm/vbus-agent-e2e-${RUNTIME}-${process.pid}-${name}`,
        shmSize: 4 << 20,
        agentSlots: 4,
      })),
    }, "vm agent test");
    const guests = await Promise.all(config.vms.map((vm) =>
      bootGuest({
        name: `agent-${RUNTIME}-${vm.name}`,
        deviceArgs: qemuArgs(vm),
        script: vm.name === "vm1" ? VM1_SCRIPT : VM2_SCRIPT,
        timeoutMs: GUEST_MS,
        writableBinds: [out],
        env: { OUT: out },
        memory: vm.name === "vm1" ? "512M" : "256M",
      })
    ));
    const broker = new Broker(config, {
      logger: createLogger("e2e-broker", "warn"),
      hostShm: false,
    });
    await broker.start();
    const f = (name: string) => join(out, name);
    const diag = () =>
      ["agent.log", ...["vm1-deno", "vm1-bun", "vm1-pub", "vm2-bun"].map((n) => `${n}.jsonl.err`)]
        .map((n) =>
          `--- ${n}\n${existsSync(f(n)) ? readFileSync(f(n), "utf8").slice(-2000) : "(none)"}`
        )
        .join("\n");
    try {
      const subs = ["vm1-deno.jsonl", "vm1-bun.jsonl", "vm2-bun.jsonl"];
      await until(
        "three subscribers ready",
        180_000,
        () => subs.every((s) => lines(f(s)).some((l) => "ready" in l)),
        diag,
      );
      for (const s of subs) {
        assert.equal(
          lines(f(s)).find((l) => "ready" in l)!.ready,
          "ring",
          `${s} is on the ring path (broker: ${
            JSON.stringify(broker.stats().vms.map((v) => [v.name, v.path, v.pathReason]))
          })`,
        );
      }
      const vm1 = broker.stats().sessions.filter((s: SessionStats) => s.endpoint === "vm1");
      assert.equal(vm1.length, 2, "each vm1 subscriber is its own session");
      for (const s of vm1) assert.equal(s.path, "ring");
      assert.equal(new Set(vm1.map((s) => s.id)).size, 2);
      writeFileSync(f("go"), "");
      const want = Array.from({ length: N }, (_, i) => ({ i }));
      const msgs = (s: string) => lines(f(s)).filter((l) => "msg" in l).map((l) => l.msg);
      await until(
        "every message at every subscriber",
        180_000,
        () => subs.every((s) => msgs(s).length >= N),
        diag,
      );
      for (const s of subs) assert.deepEqual(msgs(s), want, s);
      // The publisher says "done" after its flush's round trip and its write to the 9p share:
      // under TCG on a loaded host that can come well after the subscribers have everything.
      const pubDone = () => lines(f("vm1-pub.jsonl")).find((l) => "done" in l);
      await until("the publisher's done line", 60_000, () => pubDone() !== undefined, diag);
      const done = pubDone();
      assert.equal(done?.dataPath, "ring", "the publisher went through the agent on the ring path");
      assert.equal(broker.stats().vms.find((v) => v.name === "vm1")!.msgsIn, N);
    } finally {
      writeFileSync(f("stop"), "");
      await Promise.race([
        Promise.all(guests.map((g) => g.exited)),
        new Promise((r) => setTimeout(r, 15_000)),
      ]);
      for (const g of guests) g.kill();
      await Promise.all(guests.map((g) => g.exited));
      await broker.stop();
      for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

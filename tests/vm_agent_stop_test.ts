// `vbus agent` stops on SIGTERM in a real QEMU guest (issue 10). Found by bench/agent_guests.ts:
// on the guest's virtio-serial device the agent's pending read of the port cannot be cancelled,
// so after SIGTERM the agent disconnected everyone and closed the port but the process stayed
// (until SIGKILL: systemd's stop timeout). One lab guest with a broker in this process; the agent
// runs under this test's runtime in the guest, is sent SIGTERM once connected to the broker, and
// must exit 0 within 10 s with its socket removed. Skips, printing why, when the lab cannot run
// here. Runs under `deno test -A` and `bun test --timeout 600000`; wrap manual runs in
// `flock /tmp/vbus-heavy.lock`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import process from "node:process";
import { join } from "node:path";
import { bootGuest, detectAccelerator, ensureLab, LabUnavailableError } from "../lab/vm.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import { Broker } from "../src/broker/broker.ts";
import { validateConfig } from "../src/broker/config.ts";
import { createLogger } from "../src/util/log.ts";

const RUNTIME = "Deno" in globalThis ? "deno" : "bun";

let skip: string | false = false;
try {
  ensureLab();
  await detectAccelerator();
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skip = `micro-VM lab unavailable: ${err.message}`;
  console.log(`SKIP vm agent stop test: ${skip}`);
}

const AGENT = RUNTIME === "deno"
  ? "./node_modules/.bin/deno run -A src/cli/main.ts"
  : "./node_modules/.bin/bun src/cli/main.ts";
const SCRIPT = `
export VBUS_LOG=info
${AGENT} agent --socket /run/vbus-agent.sock > "$OUT/agent.log" 2>&1 &
AP=$!
i=0; while ! grep -q "connected to the broker" "$OUT/agent.log" && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
grep -q "connected to the broker" "$OUT/agent.log" || echo "never connected" > "$OUT/result"
kill -TERM $AP
i=0; while kill -0 $AP 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if kill -0 $AP 2>/dev/null; then
  echo "still running 10 s after SIGTERM" >> "$OUT/result"; kill -9 $AP; wait $AP
else
  wait $AP; echo "exited $? after $((i*100)) ms" >> "$OUT/result"
fi
if [ -e /run/vbus-agent.sock ]; then echo "socket left behind" >> "$OUT/result"; fi
exit 0
`;

test("vm agent: SIGTERM stops `vbus agent` in a real guest within 10 s, exit 0, socket removed", {
  skip,
  timeout: 240_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "vbus-agent-stop-"));
  const out = join(dir, "out");
  mkdirSync(out);
  chmodSync(out, 0o777);
  const config = validateConfig({
    vms: [{
      name: "vm1",
      socket: join(dir, "vm1.sock"),
      shm: `/dev/shm/vbus-agent-stop-${RUNTIME}-${process.pid}`,
      shmSize: 4 << 20,
      agentSlots: 4,
    }],
  }, "vm agent stop test");
  const guest = await bootGuest({
    name: `agent-stop-${RUNTIME}`,
    deviceArgs: qemuArgs(config.vms[0]),
    script: SCRIPT,
    timeoutMs: 200_000,
    writableBinds: [out],
    env: { OUT: out },
    memory: "512M",
  });
  const broker = new Broker(config, {
    logger: createLogger("stop-broker", "warn"),
    hostShm: false,
  });
  await broker.start();
  try {
    const end = await guest.exited;
    const result = existsSync(join(out, "result"))
      ? readFileSync(join(out, "result"), "utf8").trim()
      : "(no result)";
    const log = existsSync(join(out, "agent.log"))
      ? readFileSync(join(out, "agent.log"), "utf8").slice(-2000)
      : "(no agent log)";
    assert.match(result, /^exited 0 after \d+ ms$/, `${result}\n--- agent.log\n${log}`);
    assert.equal(end.code, 0, `guest: ${end.error ?? ""}\n${result}\n${log}`);
  } finally {
    guest.kill();
    await guest.exited;
    await broker.stop();
    for (const vm of config.vms) if (vm.shm) rmSync(vm.shm, { force: true });
    rmSync(dir, { recursive: true, force: true });
  }
});

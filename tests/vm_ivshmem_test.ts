// A real QEMU guest with two ivshmem devices, another program's first (its header holds that
// program's data) and vbus's second: the guest's client must map vbus's (found by the region
// signature the broker stamps), get the ring path, and leave the other region untouched. The
// first-1af4:1110-device rule this replaces mapped the other program's memory and wrote its
// nonce into it. Needs the micro-VM lab (lab/setup.sh); run under the shared lock:
//   flock /tmp/vbus-heavy.lock node_modules/.bin/bun test --timeout 600000 tests/vm_ivshmem_test.ts
// Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import { bootGuest, ensureLab, LabUnavailableError } from "../lab/vm.ts";
import { qemuArgs, qemuOptValue } from "../src/vm/qemu_args.ts";
import { Broker, connect, parseConfig } from "../mod.ts";
import { createLogger } from "../src/util/log.ts";

let skip: string | false = false;
try {
  ensureLab();
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skip = `micro-VM lab unavailable: ${err.message}`;
  console.log(`SKIP vm ivshmem test: ${skip}`);
}

const SIZE = 1 << 20;

test(
  "vm ivshmem: with another program's ivshmem device first, the guest maps vbus's and takes the ring",
  {
    skip,
    timeout: 300_000,
  },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "vbus-ivs-"));
    const tag = `${"Deno" in globalThis ? "deno" : "bun"}-${process.pid}`;
    const vbusShm = `/dev/shm/vbus-ivs-${tag}`;
    const otherShm = `/dev/shm/vbus-ivs-${tag}-other`;
    // Another program's region: its own header, then data. It must come out exactly as it went in.
    const other = new Uint8Array(SIZE);
    other.set(new TextEncoder().encode("KVMFR another program's header"), 0);
    for (let i = 64; i < 8192; i++) other[i] = (i * 7) & 0xff;
    writeFileSync(otherShm, other, { mode: 0o600 });
    const config = parseConfig(
      JSON.stringify({
        listen: join(dir, "broker.sock"),
        vms: [{ name: "vm1", socket: join(dir, "vm1.sock"), shm: vbusShm, shmSize: SIZE }],
      }),
      "vm-ivshmem-test",
    );
    // The broker first: it creates vbus's file and stamps the signature before QEMU maps it.
    const broker = new Broker(config, { logger: createLogger("broker", "warn") });
    await broker.start();
    const host = await connect({ server: config.listen!, timeout: 10_000 });
    try {
      const reports: unknown[] = [];
      host.subscribe("ivs.report", { callback: (_e, m) => void reports.push(m.data) });
      await host.flush();
      const guest = await bootGuest({
        name: `ivshmem-${tag}`,
        // The other device first on the command line: QEMU gives it the lower PCI slot.
        deviceArgs: [
          "-object",
          `memory-backend-file,id=other-shm,share=on,mem-path=${qemuOptValue(otherShm)},size=1M`,
          "-device",
          "ivshmem-plain,id=other-ivshmem,memdev=other-shm",
          ...qemuArgs(config.vms[0]),
        ],
        script: "exec ./node_modules/.bin/bun tests/fixtures/ivshmem_guest.ts",
        timeoutMs: 240_000,
      });
      const result = await guest.exited;
      assert.equal(
        result.code,
        0,
        `guest failed (${result.error ?? ""}):\n${result.consoleLog.slice(-4000)}`,
      );
      assert.equal(
        reports.length,
        1,
        `no report from the guest:\n${result.consoleLog.slice(-4000)}`,
      );
      const report = reports[0] as {
        candidates: { address: string; content: string; size: number }[];
        chosen: string;
        dataPath: string;
      };
      console.log(`vm ivshmem (${tag}, ${result.accelerator}): ${JSON.stringify(report)}`);
      assert.equal(report.candidates.length, 2, "the guest sees both ivshmem devices");
      const [first, second] = report.candidates;
      assert.equal(first.content, "other", "the first device is the other program's");
      assert.equal(report.chosen, second.address, "vbus's device, not the first one");
      assert.equal(report.dataPath, "ring");
      assert.equal(broker.stats().vms[0].ringMsgsIn > 0, true, "the report came through the ring");
      assert.deepEqual(
        readFileSync(otherShm),
        Buffer.from(other),
        "the other program's memory is untouched",
      );
    } finally {
      await host.close();
      await broker.stop();
      rmSync(dir, { recursive: true, force: true });
      rmSync(vbusShm, { force: true });
      rmSync(otherShm, { force: true });
    }
  },
);

// Boots a real guest whose vbus devices are exactly qemuArgs(sample VmConfig): the host connects
// to the chardev socket with node:net, a one-line Bun script in the guest writes a line to
// /dev/virtio-ports/org.vbus.0 and reads the host's reply; the guest also checks the ivshmem PCI
// device (1af4:1110) is visible. Skips, printing why, when the lab cannot run here (no qemu, not
// Linux x86_64, setup failed). Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootGuest, detectAccelerator, ensureLab, LabUnavailableError } from "../lab/vm.ts";
import { qemuArgs } from "../src/vm/qemu_args.ts";
import type { VmConfig } from "../src/broker/config.ts";

const BOOT_TIMEOUT_MS = 75_000;

let skip: string | false = false;
try {
  ensureLab();
  const a = await detectAccelerator();
  console.log(`lab accelerator: ${a.accelerator} (${a.reason})`);
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skip = `micro-VM lab unavailable: ${err.message}`;
  console.log(`SKIP lab smoke test: ${skip}`);
}

/** Connect to QEMU's chardev socket once it exists (QEMU creates it right after start). */
async function connectWhenReady(path: string, deadline: number): Promise<Socket> {
  for (;;) {
    if (existsSync(path)) {
      try {
        return await new Promise<Socket>((res, rej) => {
          const s = connect(path);
          s.once("connect", () => res(s));
          s.once("error", rej);
        });
      } catch (err) {
        if (Date.now() > deadline) throw err;
      }
    }
    if (Date.now() > deadline) throw new Error(`QEMU never created ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("lab: guest built from qemuArgs(vm) talks over virtio-serial and sees ivshmem", {
  skip,
  timeout: BOOT_TIMEOUT_MS + 15_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "vbus-smoke-"));
  const shm = `/dev/shm/vbus-smoke-${process.pid}`;
  try {
    await runSmoke(dir, shm);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { force: true });
  }
});

async function runSmoke(dir: string, shm: string) {
  const vm: VmConfig = {
    name: "smoke",
    socket: join(dir, "smoke.sock"),
    port: "org.vbus.0",
    shm,
    shmSize: 1 << 20,
  };
  const guestJs = `const fs=require("node:fs");` +
    `const fd=fs.openSync("/dev/virtio-ports/${vm.port}","r+");` +
    `fs.writeSync(fd,"hello from guest\\n");` +
    `const b=Buffer.alloc(256);let s="";` +
    `while(!s.includes("\\n")){const n=fs.readSync(fd,b,0,256,null);if(n===0)throw new Error("EOF from host");s+=b.toString("utf8",0,n)}` +
    `console.log("GUEST-GOT "+s.trim())`;
  const script = [
    `for d in /sys/bus/pci/devices/*; do`,
    `  if [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1110 ]; then echo "IVSHMEM-FOUND $d"; fi`,
    `done`,
    `exec ./node_modules/.bin/bun -e '${guestJs}'`,
  ].join("\n");

  const guest = await bootGuest({
    name: "smoke",
    deviceArgs: qemuArgs(vm),
    script,
    timeoutMs: BOOT_TIMEOUT_MS,
  });
  let received = "";
  let sock: Socket | undefined;
  try {
    sock = await connectWhenReady(vm.socket, Date.now() + 10_000);
    const gotLine = new Promise<string>((resolve) => {
      sock!.on("data", (d) => {
        received += d.toString("utf8");
        if (received.includes("\n")) resolve(received);
      });
    });
    sock.on("error", () => {});
    const line = await Promise.race([gotLine, guest.exited.then(() => "")]);
    if (line) sock.write("pong from host\n");
    const r = await guest.exited;
    console.log(
      `lab smoke: accelerator=${r.accelerator} bootMs=${r.bootMs} totalMs=${r.totalMs} code=${r.code}` +
        ` (console: ${guest.consoleLogPath})`,
    );
    const ctx = `\n--- console ---\n${r.consoleLog}`;
    assert.equal(r.error, undefined, `guest error: ${r.error}${ctx}`);
    assert.equal(r.timedOut, false, `timed out${ctx}`);
    assert.equal(received, "hello from guest\n", `host received ${JSON.stringify(received)}${ctx}`);
    assert.match(r.consoleLog, /GUEST-GOT pong from host/, `guest did not get the reply${ctx}`);
    assert.match(
      r.consoleLog,
      /IVSHMEM-FOUND \/sys\/bus\/pci\/devices\/\S+/,
      `no 1af4:1110 device${ctx}`,
    );
    assert.equal(r.code, 0, `guest exit code${ctx}`);
    assert.ok(typeof r.bootMs === "number" && r.bootMs > 0);
    assert.ok(existsSync(shm), "QEMU should have created the shm file");
  } finally {
    sock?.destroy();
    guest.kill();
    await guest.exited;
  }
}

/**
 * The broker and QEMU start at once (systemd, a test that boots its guests first): both may
 * create a VM's shared-memory file at the same moment. QEMU's memory-backend-file opens it with
 * O_CREAT and then sizes it with ftruncate, so the broker can find it missing and then present,
 * or present at 0 bytes and sized a moment later. Either way the VM must get its region, never
 * fall back to the port stream for good (found in CI: tests/vm_agent_test.ts, a guest on the
 * stream path because `open(O_EXCL)` met QEMU's file).
 *
 * The test plays QEMU in the broker's window between looking at the file and opening it: the
 * broker's debug line "opening VM shared memory" is that moment. Runs under `deno test -A` and
 * `bun test`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { Broker } from "../src/broker/broker.ts";
import { validateConfig } from "../src/broker/config.ts";
import type { Logger } from "../src/util/log.ts";

const SIZE = 1 << 20;

/** A broker for one VM whose socket nobody serves (it keeps retrying, which is fine here). */
async function withBroker(
  name: string,
  onOpening: (path: string) => void,
  check: (broker: Broker, path: string, lines: string[]) => void,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "vbus-shm-race-"));
  const shm = `/dev/shm/vbus-shm-race-${process.pid}-${name}`;
  rmSync(shm, { force: true });
  const lines: string[] = [];
  let played = false;
  const keep = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`);
    if (msg === "opening VM shared memory" && fields?.create === true && !played) {
      played = true; // QEMU creates the file once
      onOpening(shm);
    }
  };
  const logger: Logger = {
    debug: keep("debug"),
    info: keep("info"),
    warn: keep("warn"),
    error: keep("error"),
  };
  const config = validateConfig({
    listen: join(dir, "host.sock"),
    vms: [{ name: "vm1", socket: join(dir, "vm1.sock"), shm, shmSize: SIZE }],
  }, "shm race test");
  const broker = new Broker(config, { logger, hostShm: false, shmDir: dir });
  try {
    await broker.start();
    assert.ok(played, "the test played QEMU in the broker's window");
    check(broker, shm, lines);
  } finally {
    await broker.stop();
    rmSync(shm, { force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}

function assertMapped(broker: Broker, path: string, lines: string[]): void {
  const vm = broker.stats().vms.find((v) => v.name === "vm1")!;
  assert.equal(vm.pathReason, undefined, `the VM keeps its region:\n${lines.join("\n")}`);
  assert.ok(lines.some((l) => l.startsWith("info mapped VM shared memory")), lines.join("\n"));
  assert.equal(statSync(path).size, SIZE, "QEMU's file keeps its size");
}

test("shm file race: QEMU creates the file (sized) between the broker's look and its open: the broker maps it", async () => {
  await withBroker("sized", (path) => {
    const fd = openSync(path, "wx", 0o600);
    ftruncateSync(fd, SIZE);
    closeSync(fd);
  }, assertMapped);
});

test("shm file race: QEMU has created the file but not sized it yet: the broker waits for the size and maps it", async () => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await withBroker("unsized", (path) => {
      closeSync(openSync(path, "wx", 0o600)); // 0 bytes, as between QEMU's open and ftruncate
      timer = setTimeout(() => {
        const fd = openSync(path, "r+");
        ftruncateSync(fd, SIZE);
        closeSync(fd);
      }, 150);
    }, assertMapped);
  } finally {
    clearTimeout(timer);
  }
});

test("shm file race: a file that stays smaller than shmSize is refused after a bounded wait, saying so", async () => {
  const started = Date.now();
  await withBroker("small", (path) => {
    const fd = openSync(path, "wx", 0o600);
    ftruncateSync(fd, SIZE / 2);
    closeSync(fd);
  }, (broker, path, lines) => {
    const vm = broker.stats().vms.find((v) => v.name === "vm1")!;
    assert.match(vm.pathReason ?? "", /is 524288 bytes but the config says shmSize 1048576/);
    assert.equal(statSync(path).size, SIZE / 2, "never resized");
    assert.ok(!lines.some((l) => l.startsWith("info mapped")), lines.join("\n"));
  });
  assert.ok(Date.now() - started < 10_000, "the wait is bounded");
});

// findVbusIvshmem: a guest with several ivshmem devices picks vbus's by the region signature,
// or the one named by address; anything unclear is an error listing what was found. The scan
// runs for real (sysfs reads, FFI mmap of each header page) over a directory laid out like
// /sys/bus/pci/devices, whose resource2 files are regular files.
// Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { tempDir } from "./helpers.ts";
import { mapSharedSync } from "../ffi/mod.ts";
import {
  findVbusIvshmem,
  IVSHMEM_ENV,
  IvshmemScanError,
  listIvshmem,
  pciAddress,
} from "../src/shm/find_ivshmem.ts";
import { hasRegionSignature, stampRegionSignature } from "../src/shm/region_signature.ts";
import { initRegion } from "../src/ring/region.ts";
import { HEADER_SIZE } from "../src/ring/layout.ts";

const SIZE = 1 << 16;

type Content = "vbus" | "vbus-session" | "blank" | "other";

/** One PCI device directory: vendor, device, resource (BAR2 on line 3), resource2. */
function pciDevice(root: string, address: string, ids: [number, number], content: Content) {
  const dir = join(root, address);
  mkdirSync(dir, { recursive: true });
  const hex = (n: number) => `0x${n.toString(16).padStart(4, "0")}\n`;
  writeFileSync(join(dir, "vendor"), hex(ids[0]));
  writeFileSync(join(dir, "device"), hex(ids[1]));
  const start = 0xfe000000n;
  const bar = (s: bigint, len: bigint) =>
    `0x${s.toString(16).padStart(16, "0")} 0x${
      (s + len - 1n).toString(16).padStart(16, "0")
    } 0x0000000000040200`;
  const none = "0x0000000000000000 0x0000000000000000 0x0000000000000000";
  writeFileSync(
    join(dir, "resource"),
    [bar(start - 0x1000n, 0x100n), none, bar(start, BigInt(SIZE)), none].join("\n") + "\n",
  );
  const bytes = new Uint8Array(SIZE);
  if (content === "vbus") stampRegionSignature(bytes);
  if (content === "vbus-session") initRegion(bytes);
  if (content === "other") {
    bytes.set(new TextEncoder().encode("KVMFR\0another program's header"), 0);
  }
  writeFileSync(join(dir, "resource2"), bytes);
}

const IVSHMEM: [number, number] = [0x1af4, 0x1110];
const VGA: [number, number] = [0x1234, 0x1111];
const map = mapSharedSync;

function sysfs(devices: [string, [number, number], Content][]) {
  const t = tempDir();
  for (const [addr, ids, content] of devices) pciDevice(t.dir, addr, ids, content);
  return t;
}

test("find ivshmem: the device with the vbus signature is chosen, not the first one", () => {
  const t = sysfs([
    ["0000:00:02.0", VGA, "other"],
    ["0000:00:03.0", IVSHMEM, "other"], // first ivshmem device: another program's
    ["0000:00:04.0", IVSHMEM, "vbus"],
  ]);
  try {
    const dev = findVbusIvshmem({ map, sysfsRoot: t.dir });
    assert.equal(dev.address, "0000:00:04.0");
    assert.equal(dev.path, join(t.dir, "0000:00:04.0", "resource2"));
    assert.equal(dev.size, SIZE);
    assert.deepEqual(
      listIvshmem({ map, sysfsRoot: t.dir }).map((c) => [c.address, c.content]),
      [["0000:00:03.0", "other"], ["0000:00:04.0", "vbus"]],
    );
  } finally {
    t.cleanup();
  }
});

test("find ivshmem: a region a session initialised is signed too; the scan writes nothing", () => {
  const t = sysfs([["0000:00:03.0", IVSHMEM, "other"], ["0000:00:05.0", IVSHMEM, "vbus-session"]]);
  try {
    assert.equal(findVbusIvshmem({ map, sysfsRoot: t.dir }).address, "0000:00:05.0");
    const other = mapSharedSync(join(t.dir, "0000:00:03.0", "resource2"), SIZE);
    try {
      assert.equal(new TextDecoder().decode(other.bytes.subarray(0, 5)), "KVMFR");
      assert.ok(
        other.bytes.subarray(5 + 26).every((b) => b === 0),
        "the other region is untouched",
      );
      assert.equal(hasRegionSignature(other.bytes), false);
    } finally {
      other.unmap();
    }
  } finally {
    t.cleanup();
  }
});

test("find ivshmem: an explicit address wins (option, short form, VBUS_IVSHMEM)", () => {
  const t = sysfs([["0000:00:03.0", IVSHMEM, "other"], ["0000:00:04.0", IVSHMEM, "vbus"]]);
  const saved = process.env[IVSHMEM_ENV];
  try {
    assert.equal(
      findVbusIvshmem({ map, sysfsRoot: t.dir, address: "0000:00:03.0" }).address,
      "0000:00:03.0",
    );
    assert.equal(
      findVbusIvshmem({ map, sysfsRoot: t.dir, address: "00:03.0" }).address,
      "0000:00:03.0",
    );
    process.env[IVSHMEM_ENV] = "0000:00:03.0";
    assert.equal(findVbusIvshmem({ map, sysfsRoot: t.dir }).address, "0000:00:03.0");
    // the option beats the environment
    assert.equal(
      findVbusIvshmem({ map, sysfsRoot: t.dir, address: "00:04.0" }).address,
      "0000:00:04.0",
    );
    process.env[IVSHMEM_ENV] = "0000:00:09.0";
    assert.throws(
      () => findVbusIvshmem({ map, sysfsRoot: t.dir }),
      (e: Error) =>
        e instanceof IvshmemScanError &&
        /VBUS_IVSHMEM=0000:00:09\.0: no ivshmem device .* at 0000:00:09\.0/.test(e.message) &&
        /0000:00:03\.0 \(65536 bytes, not vbus/.test(e.message) &&
        /0000:00:04\.0 \(65536 bytes, vbus region\)/.test(e.message),
    );
  } finally {
    if (saved === undefined) delete process.env[IVSHMEM_ENV];
    else process.env[IVSHMEM_ENV] = saved;
    t.cleanup();
  }
});

test("find ivshmem: no vbus region is an error naming every device found and how to choose", () => {
  const t = sysfs([["0000:00:03.0", IVSHMEM, "other"], ["0000:00:06.0", IVSHMEM, "other"]]);
  try {
    assert.throws(() => findVbusIvshmem({ map, sysfsRoot: t.dir }), (e: Error) => {
      assert.ok(e instanceof IvshmemScanError);
      assert.match(e.message, /^no ivshmem device holds a vbus region: /);
      assert.match(e.message, /0000:00:03\.0 \(65536 bytes, not vbus: another program's data\)/);
      assert.match(e.message, /0000:00:06\.0 \(65536 bytes, not vbus/);
      assert.match(e.message, /VBUS_IVSHMEM=DOMAIN:BUS:SLOT\.FUNCTION/);
      assert.equal(e.candidates.length, 2);
      return true;
    });
  } finally {
    t.cleanup();
  }
});

test("find ivshmem: a blank region is taken only when it is the one candidate", () => {
  const one = sysfs([["0000:00:03.0", IVSHMEM, "other"], ["0000:00:07.0", IVSHMEM, "blank"]]);
  const two = sysfs([["0000:00:03.0", IVSHMEM, "blank"], ["0000:00:07.0", IVSHMEM, "blank"]]);
  const signed = sysfs([["0000:00:03.0", IVSHMEM, "vbus"], ["0000:00:07.0", IVSHMEM, "vbus"]]);
  const none = sysfs([["0000:00:02.0", VGA, "blank"]]);
  try {
    assert.equal(findVbusIvshmem({ map, sysfsRoot: one.dir }).address, "0000:00:07.0");
    assert.throws(
      () => findVbusIvshmem({ map, sysfsRoot: two.dir }),
      /^IvshmemScanError: 2 blank ivshmem devices and none holds a vbus region yet: 0000:00:03\.0 \(65536 bytes, blank\), 0000:00:07\.0/,
    );
    assert.throws(
      () => findVbusIvshmem({ map, sysfsRoot: signed.dir }),
      /2 ivshmem devices hold a vbus region/,
    );
    assert.throws(
      () => findVbusIvshmem({ map, sysfsRoot: none.dir }),
      /^IvshmemScanError: no ivshmem device \(PCI 1af4:1110\) in /,
    );
    assert.throws(
      () => findVbusIvshmem({ map, sysfsRoot: join(none.dir, "missing") }),
      /cannot list .*missing/,
    );
  } finally {
    for (const t of [one, two, signed, none]) t.cleanup();
  }
});

test("find ivshmem: PCI addresses and region signatures", () => {
  assert.equal(pciAddress("00:04.0"), "0000:00:04.0");
  assert.equal(pciAddress(" 0001:0A:1f.7 "), "0001:0a:1f.7");
  for (const bad of ["", "00:04", "0000:00:20.0", "00:04.8", "../../x", "0000:00:04.0/resource2"]) {
    assert.throws(() => pciAddress(bad), /is not a PCI address/, bad);
  }
  const bytes = new Uint8Array(HEADER_SIZE);
  assert.equal(stampRegionSignature(bytes), true);
  assert.equal(stampRegionSignature(bytes), false, "a signed region is left alone");
  assert.equal(hasRegionSignature(bytes), true);
  assert.equal(hasRegionSignature(bytes.subarray(0, HEADER_SIZE - 4)), false);
  assert.throws(() => stampRegionSignature(new Uint8Array(64)), /at least 4096 bytes/);
  const tiny = sysfs([["0000:00:03.0", IVSHMEM, "blank"]]);
  try {
    // a BAR smaller than a header cannot be vbus's, and says so
    writeFileSync(join(tiny.dir, "0000:00:03.0", "resource"), "");
    writeFileSync(join(tiny.dir, "0000:00:03.0", "resource2"), new Uint8Array(1024));
    assert.throws(
      () => findVbusIvshmem({ map, sysfsRoot: tiny.dir }),
      /1024 bytes, unreadable: BAR2 is 1024 bytes/,
    );
  } finally {
    tiny.cleanup();
  }
});

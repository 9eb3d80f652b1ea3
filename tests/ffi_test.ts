// FFI tests: mapShared, futex across processes and runtimes, findIvshmem, error messages.
// Run: `deno test -A tests/ffi_test.ts` / `bun test tests/ffi_test.ts`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  closeSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { fileURLToPath } from "node:url";
import {
  createSealedRegion,
  FfiError,
  findIvshmem,
  futexWait,
  futexWaitSync,
  futexWake,
  mapShared,
  mapSharedSync,
  runtime,
  tryLockFile,
} from "../ffi/mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FFI_URL = new URL("../ffi/mod.ts", import.meta.url).href;
const OTHER = runtime === "deno" ? "bun" : "deno";
const OTHER_BIN = `${ROOT}node_modules/.bin/${OTHER}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function shmPath(tag: string): string {
  return `/dev/shm/vbus-test-${tag}-${process.pid}-${Math.floor(Math.random() * 1e9)}`;
}

/** Run `code` (an ES module body) in the other runtime; resolves with its stdout. */
function runOther(code: string, timeoutMs = 30000): Promise<string> {
  const args = OTHER === "deno" ? ["eval", "--ext=ts", code] : ["-e", code];
  return new Promise((resolve, reject) => {
    const child = spawn(OTHER_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stdout!.on("data", (d) => (out += d));
    child.stderr!.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${OTHER} child exited ${code}: ${err}${out}`));
    });
  });
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

test("mapShared: create, second mapping sees writes, unmap", async () => {
  const path = shmPath("map");
  const a = await mapShared(path, 1 << 20, { create: true });
  try {
    const b = await mapShared(path, 1 << 20);
    assert.equal(a.bytes.byteLength, 1 << 20);
    a.bytes[12345] = 99;
    assert.equal(b.bytes[12345], 99);
    const wa = new Int32Array(a.bytes.buffer, a.bytes.byteOffset, 16);
    const wb = new Int32Array(b.bytes.buffer, b.bytes.byteOffset, 16);
    Atomics.store(wb, 3, 0x1234567);
    assert.equal(Atomics.load(wa, 3), 0x1234567);
    assert.equal(Atomics.compareExchange(wa, 3, 0x1234567, 7), 0x1234567);
    assert.equal(Atomics.load(wb, 3), 7);
    b.unmap();
    b.unmap(); // idempotent
    assert.equal(a.bytes[12345], 99);
  } finally {
    a.unmap();
    unlinkSync(path);
  }
});

test("mapShared: clear errors naming the path and errno", async () => {
  await assert.rejects(mapShared("/dev/shm/vbus-definitely-missing", 4096), (e: unknown) => {
    assert.ok(e instanceof FfiError);
    assert.equal(e.code, "ENOENT");
    assert.equal(e.errno, 2);
    assert.match(e.message, /open\(\/dev\/shm\/vbus-definitely-missing\) failed: ENOENT/);
    return true;
  });
  await assert.rejects(mapShared("/proc/version", 4096, { create: true }), FfiError); // EACCES/EEXIST etc.
  await assert.rejects(mapShared("/dev/shm/x", 0), RangeError);
  const path = shmPath("short");
  const m = await mapShared(path, 4096, { create: true });
  try {
    await assert.rejects(mapShared(path, 8192), /shorter than the requested 8192/);
  } finally {
    m.unmap();
    unlinkSync(path);
  }
});

test(`futex within one process: timeout, not-equal, wake count`, async () => {
  const path = shmPath("futex1");
  const m = await mapShared(path, 4096, { create: true });
  try {
    const w = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 64);
    const t0 = performance.now();
    assert.equal(futexWaitSync(w, 5, 0, 15), "timed-out");
    assert.ok(performance.now() - t0 >= 10);
    assert.equal(await futexWait(w, 5, 0, 5), "timed-out");
    assert.equal(futexWaitSync(w, 5, 1, 1000), "not-equal");
    assert.equal(await futexWait(w, 5, 1, 1000), "not-equal");
    assert.equal(futexWake(w, 5, 1), 0);
    assert.throws(() => futexWake(w, 64, 1), RangeError);
  } finally {
    m.unmap();
    unlinkSync(path);
  }
});

test(`cross-runtime: a ${OTHER} child sees live writes both ways and futex wakes it`, async () => {
  const path = shmPath("xrt");
  const m = await mapShared(path, 1 << 16, { create: true });
  const w = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 64);
  try {
    // Protocol over words: [0] parent->child value, [1] child ready, [2] child echo,
    // [3] futex word, [4] child result code.
    const code = `
      import { mapShared, futexWaitSync } from ${JSON.stringify(FFI_URL)};
      const m = await mapShared(${JSON.stringify(path)}, 1 << 16);
      const w = new Int32Array(m.bytes.buffer, m.bytes.byteOffset, 64);
      Atomics.store(w, 1, 1);
      const end = Date.now() + 20000;
      let last = 0, seen = 0;
      while (seen < 100 && Date.now() < end) {          // follow 100 live updates
        const v = Atomics.load(w, 0);
        if (v !== last) { last = v; seen++; Atomics.store(w, 2, v); }
      }
      m.bytes[40000] = 0xAB;                            // a plain byte write, seen by the parent
      const r = futexWaitSync(w, 3, 0, 10000);          // parked until the parent wakes us
      Atomics.store(w, 4, r === "ok" || r === "not-equal" ? 1 : 2);
      console.log(JSON.stringify({ seen, r }));
      m.unmap();
    `;
    const done = runOther(code);
    await waitFor(() => Atomics.load(w, 1) === 1, 25000, "child ready");
    for (let v = 1; v <= 100; v++) {
      Atomics.store(w, 0, v);
      await waitFor(() => Atomics.load(w, 2) === v, 5000, `echo ${v}`);
    }
    await waitFor(() => m.bytes[40000] === 0xab, 5000, "child byte write");
    await sleep(20); // child now (very likely) parked in FUTEX_WAIT
    Atomics.store(w, 3, 1);
    futexWake(w, 3, 1);
    const out = JSON.parse((await done).trim().split("\n").pop()!);
    assert.equal(out.seen, 100);
    assert.ok(out.r === "ok" || out.r === "not-equal");
    assert.equal(Atomics.load(w, 4), 1);
  } finally {
    m.unmap();
    unlinkSync(path);
  }
});

test("findIvshmem: finds 0x1af4/0x1110 in a sysfs-like tree, null otherwise", () => {
  const root = mkdtempSync("/tmp/vbus-sysfs-");
  try {
    const dev = (name: string, vendor: string, device: string, bar2Size: number) => {
      const d = `${root}/${name}`;
      mkdirSync(d);
      writeFileSync(`${d}/vendor`, `${vendor}\n`);
      writeFileSync(`${d}/device`, `${device}\n`);
      const start = 0xfe000000n;
      const line = (s: bigint, n: number) =>
        n
          ? `0x${s.toString(16).padStart(16, "0")} 0x${
            (s + BigInt(n) - 1n).toString(16).padStart(16, "0")
          } 0x0000000000040200`
          : "0x0000000000000000 0x0000000000000000 0x0000000000000000";
      writeFileSync(
        `${d}/resource`,
        [line(start, 256), line(0n, 0), line(start + 0x1000000n, bar2Size)].join("\n") + "\n",
      );
      writeFileSync(`${d}/resource2`, "");
    };
    assert.equal(findIvshmem(root), null);
    dev("0000:00:01.0", "0x8086", "0x1237", 0);
    dev("0000:00:03.0", "0x1af4", "0x1000", 4096); // virtio-net, not ivshmem
    assert.equal(findIvshmem(root), null);
    dev("0000:00:04.0", "0x1af4", "0x1110", 16 << 20);
    assert.deepEqual(findIvshmem(root), {
      device: `${root}/0000:00:04.0`,
      path: `${root}/0000:00:04.0/resource2`,
      size: 16 << 20,
    });
    assert.equal(findIvshmem(`${root}/nope`), null);
    // on this host (not a guest) there is normally no ivshmem device
    const real = findIvshmem();
    assert.ok(real === null || real.size > 0);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("createSealedRegion: another mapping through /proc/<pid>/fd, no resize through any fd", () => {
  const region = createSealedRegion("vbus-test-sealed", 1 << 20);
  try {
    assert.match(region.path, new RegExp(`^/proc/${process.pid}/fd/${region.fd}$`));
    assert.match(readlinkSync(region.path), /^\/memfd:vbus-test-sealed/);
    const peer = mapSharedSync(region.path, 1 << 20);
    peer.bytes[777] = 5;
    assert.equal(region.bytes[777], 5);
    const fd = openSync(region.path, "r+");
    try {
      assert.throws(() => ftruncateSync(fd, 0), (e: NodeJS.ErrnoException) => e.code === "EPERM");
      assert.throws(
        () => ftruncateSync(fd, 2 << 20),
        (e: NodeJS.ErrnoException) => e.code === "EPERM",
      );
    } finally {
      closeSync(fd);
    }
    assert.equal(statSync(region.path).size, 1 << 20);
    // Mapping more than the region is refused up front instead of SIGBUS later.
    assert.throws(() => mapSharedSync(region.path, 2 << 20), /shorter than the requested/);
    peer.unmap();
  } finally {
    region.unmap();
  }
  assert.throws(() => statSync(region.path), "unmap() closes the memfd");
});

test(`tryLockFile: one holder at a time, the holder's note, released when a ${OTHER} holder dies`, async () => {
  const dir = mkdtempSync("/tmp/vbus-lock-");
  const path = `${dir}/x.lock`;
  try {
    const a = tryLockFile(path, { note: "first\n" });
    assert.ok(!("heldBy" in a));
    assert.deepEqual(tryLockFile(path), { path, heldBy: "first" }, "another open file is refused");
    a.release();
    a.release(); // idempotent
    const b = tryLockFile(path);
    assert.ok(!("heldBy" in b));
    b.release();
    // Another process holds it until it dies (here: killed, so nothing of its own runs).
    const code = `
      import { tryLockFile } from ${JSON.stringify(FFI_URL)};
      const l = tryLockFile(${JSON.stringify(path)}, { note: "child\\n" });
      console.log("heldBy" in l ? "refused" : "locked");
      setInterval(() => {}, 1000);
    `;
    const args = OTHER === "deno" ? ["eval", "--ext=ts", code] : ["-e", code];
    const child = spawn(OTHER_BIN, args, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout!.on("data", (d) => (out += d));
    const exited = new Promise((r) => child.on("exit", r));
    try {
      await waitFor(() => out.includes("locked"), 25000, "child holds the lock");
      assert.deepEqual(tryLockFile(path), { path, heldBy: "child" });
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
    const c = tryLockFile(path);
    assert.ok(!("heldBy" in c), "the lock died with its holder");
    assert.equal(readFileSync(path, "utf8"), `${process.pid}\n`);
    c.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * Files and users (issue 15, item 5): the host socket's mode and group (`listenMode`,
 * `listenGroup`) and a VM's shared-memory file's mode, owner and group (`shmMode`, `shmOwner`,
 * `shmGroup`), checked for real: the files' stat, and processes of other users (setpriv) that
 * may or may not open them. Needs root (to run as other users and give files away); without
 * it the real checks skip and say why, except under CI=true where they fail. Config mistakes
 * are checked as any user.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import process from "node:process";
import { SHM_SIZE, tempDir, waitFor } from "./helpers.ts";
import { cliCommand } from "./fixtures/cli_process.ts";
import { Broker } from "../src/broker/broker.ts";
import { ConfigError, validateConfig } from "../src/broker/config.ts";
import { connect } from "../src/client/bus.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { createLogger } from "../src/util/log.ts";

const quiet = createLogger("test-broker", "silent");
const isRoot = process.getuid?.() === 0;
const SETPRIV = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p));
/** A uid no account uses: a stranger to every file here. */
const STRANGER = 54_321;

/** Why the real checks cannot run here, or "" when they can. */
function cannotRun(): string {
  if (!isRoot) return "needs root (to run processes as other users and to chown files)";
  if (!SETPRIV) return "needs setpriv (util-linux) to run processes as other users";
  return "";
}

function skipOrFail(t: { skip(msg: string): void }): boolean {
  const why = cannotRun();
  if (!why) return false;
  if (process.env.CI === "true") assert.fail(`under CI this test must run: it ${why}`);
  t.skip(why);
  return true;
}

/** A group of /etc/group other than root's that the stranger is not in, and its gid. */
function someGroup(): { name: string; gid: number } {
  const groups = readFileSync("/etc/group", "utf8").split("\n").map((l) => l.split(":"));
  for (const name of ["users", "nogroup", "daemon"]) {
    const g = groups.find((f) => f[0] === name);
    if (g && Number(g[2]) !== 0) return { name, gid: Number(g[2]) };
  }
  throw new Error("no usable group in /etc/group");
}

const setprivArgs = (uid: number, gid: number) => [
  `--reuid=${uid}`,
  `--regid=${gid}`,
  "--clear-groups",
];

/** Run `args` as uid/gid (no supplementary groups), not blocking this process's broker. */
function runAs(
  uid: number,
  gid: number,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; out: string }> {
  const child = spawn(SETPRIV!, [...setprivArgs(uid, gid), ...args], {
    env: { ...process.env, HOME: "/nonexistent", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d) => out += d);
  child.stderr!.on("data", (d) => out += d);
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  return new Promise((resolve) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    })
  );
}

/** Can uid/gid open `path` for reading and writing? (the runtime under test does the open) */
function canOpenRw(uid: number, gid: number, path: string): boolean {
  const code = `import { openSync } from "node:fs"; try { openSync(${
    JSON.stringify(path)
  }, "r+"); console.log("OPENED"); } catch (e) { console.log(e.code); }`;
  const isDeno = "Deno" in globalThis;
  const { dir, cleanup } = tempDir();
  try {
    chmodSync(dir, 0o777);
    const argv = isDeno ? ["eval", code] : ["-e", code];
    const r = spawnSync(SETPRIV!, [...setprivArgs(uid, gid), process.execPath, ...argv], {
      encoding: "utf8",
      env: { ...process.env, HOME: "/nonexistent", DENO_DIR: dir },
      timeout: 30_000,
    });
    return `${r.stdout}`.includes("OPENED");
  } finally {
    cleanup();
  }
}

test("files: listenMode and listenGroup: the socket is 0660 in that group; a member connects, a stranger is refused and told what to do", async (t) => {
  if (skipOrFail(t)) return;
  const group = someGroup();
  const { dir, cleanup } = tempDir();
  chmodSync(dir, 0o711); // others may reach the socket; its own mode decides
  const listen = join(dir, "b.sock");
  const broker = new Broker(
    validateConfig({ listen, listenMode: "0660", listenGroup: group.name, vms: [] }, "t"),
    { logger: quiet, hostShm: false },
  );
  await broker.start();
  try {
    const st = statSync(listen);
    assert.ok(st.isSocket());
    assert.equal((st.mode & 0o777).toString(8), "660");
    assert.equal(st.gid, group.gid);
    const dataDir = tempDir();
    chmodSync(dataDir.dir, 0o777);
    const pub = (gid: number) => {
      const { cmd, args } = cliCommand(["pub", "t", "1", "--server", listen]);
      return runAs(STRANGER, gid, [cmd, ...args], { DENO_DIR: dataDir.dir, VBUS_LOG: "warn" });
    };
    try {
      const member = await pub(group.gid);
      assert.equal(member.code, 0, `a member of ${group.name} connects: ${member.out}`);
      const t0 = Date.now();
      const stranger = await pub(STRANGER);
      assert.equal(stranger.code, 1, stranger.out);
      assert.match(stranger.out, /EACCES/);
      assert.match(stranger.out, /listenMode and listenGroup say who may.*usermod -aG/s);
      assert.ok(Date.now() - t0 < 8000, "refused at once, not after the connect timeout");
    } finally {
      dataDir.cleanup();
    }
  } finally {
    await broker.stop();
    cleanup();
  }
});

test("files: shmMode, shmOwner and shmGroup: the broker creates the VM's file so; QEMU's group may open it, others not; the owner is trusted at the next start", async (t) => {
  if (skipOrFail(t)) return;
  const group = someGroup();
  const { dir, cleanup } = tempDir();
  const shm = `/dev/shm/${basename(dir)}-vm1`;
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const raw = (extra: Record<string, unknown>) => ({
    listen: join(dir, "b.sock"),
    shmMode: "0660", // top level: every VM's default
    vms: [{ name: "vm1", socket: join(dir, "vm1.sock"), shm, shmSize: SHM_SIZE, ...extra }],
  });
  let broker = new Broker(validateConfig(raw({ shmOwner: "nobody", shmGroup: group.name }), "t"), {
    logger: quiet,
    hostShm: false,
  });
  try {
    await broker.start();
    const st = statSync(shm);
    assert.equal((st.mode & 0o777).toString(8), "660");
    assert.equal(st.gid, group.gid, `group ${group.name}`);
    const nobody = Number(/^nobody:[^:]*:(\d+):/m.exec(readFileSync("/etc/passwd", "utf8"))![1]);
    assert.equal(st.uid, nobody, "owned by shmOwner");
    assert.ok(canOpenRw(STRANGER, group.gid, shm), "a member of shmGroup (QEMU) opens it rw");
    assert.ok(!canOpenRw(STRANGER, STRANGER, shm), "a stranger cannot open it");
    await waitFor(() => vm.hostConnected, "broker linked to vm1");
    const guest = await connect({ transport: () => vm.open(), shm, timeout: 5000 });
    assert.equal(guest.dataPath, "ring");
    await guest.close();
    await broker.stop();

    // Next start: the file exists, owned by the configured shmOwner: accepted.
    broker = new Broker(validateConfig(raw({ shmOwner: "nobody", shmGroup: group.name }), "t"), {
      logger: quiet,
      hostShm: false,
    });
    await broker.start();
    assert.equal(broker.stats().vms[0].pathReason, undefined);
    await broker.stop();

    // Without shmOwner, a file owned by another user is refused (it could shrink it).
    broker = new Broker(validateConfig(raw({ shmGroup: group.name }), "t"), {
      logger: quiet,
      hostShm: false,
    });
    await broker.start();
    assert.match(
      broker.stats().vms[0].pathReason ?? "",
      /owned by uid \d+, not by the broker's user .*shmOwner/,
    );
  } finally {
    await broker.stop();
    await vm.stop();
    rmSync(shm, { force: true });
    cleanup();
  }
});

test("files: config mistakes are refused with the key and what to do", () => {
  const bad = (raw: Record<string, unknown>, message: RegExp) =>
    assert.throws(() => validateConfig({ vms: [], ...raw }, "f.jsonc"), (err: Error) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.match(err.message, message);
      return true;
    });
  bad(
    { listen: "/run/x.sock", listenMode: 660 },
    /^f\.jsonc: listenMode: must be an octal mode in quotes, like "0660"/,
  );
  bad({ listenMode: "0660" }, /^f\.jsonc: listenMode: needs "listen"/);
  bad(
    { listen: "/run/x.sock", listenGroup: "no-such-group-vbus" },
    /listenGroup: no group "no-such-group-vbus" in \/etc\/group: create it \(groupadd --system no-such-group-vbus\) or give the numeric id/,
  );
  bad({ shmMode: "0666" }, /^f\.jsonc: shmMode: "0666" lets every user write the file: .*SIGBUS/);
  bad(
    { vms: [{ name: "vm1", socket: "/run/vm1.sock", shmMode: "0440" }] },
    /vms\[0\]\.shmMode: "0440" must keep read and write for the owner/,
  );
  bad(
    { vms: [{ name: "vm1", socket: "/run/vm1.sock", shmOwner: "no-such-user-vbus" }] },
    /vms\[0\]\.shmOwner: no user "no-such-user-vbus" in \/etc\/passwd: create it \(useradd/,
  );
  bad({ drainTimeoutMs: -1 }, /drainTimeoutMs: must be a whole number of milliseconds/);
  const ok = validateConfig({
    listen: "/run/x.sock",
    listenMode: "660",
    listenGroup: 0,
    shmGroup: "root",
    vms: [{ name: "vm1", socket: "/run/vm1.sock", shmMode: "0600" }],
  });
  assert.deepEqual(ok.listenAccess, { mode: 0o660, group: { name: "root", id: 0 } });
  assert.deepEqual(ok.vms[0].shmAccess, { mode: 0o600, group: { name: "root", id: 0 } });
  assert.equal(ok.drainTimeoutMs, 5000);
});

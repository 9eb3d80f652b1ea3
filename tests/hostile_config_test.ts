/**
 * Hostile or careless deployments (issue 9, items 2 and 17): two brokers on the same VMs, a
 * broker left running after the `npx vbus broker` the user started was stopped, and VM backing
 * files that someone other than the broker could shrink. Brokers run as real processes,
 * started the way users start them (the runtime's CLI, or `npx vbus`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { connect as netConnect } from "node:net";
import { basename, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { SHM_SIZE, tempDir, waitFor } from "./helpers.ts";
import { cliCommand } from "./fixtures/cli_process.ts";
import { Broker } from "../src/broker/broker.ts";
import { parseConfig, validateConfig } from "../src/broker/config.ts";
import { createLogger } from "../src/util/log.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const quiet = createLogger("test-broker", "silent");

interface Proc {
  child: ChildProcess;
  exit?: { code: number | null; signal: string | null };
  exited: Promise<void>;
  output: string;
}

function track(child: ChildProcess): Proc {
  const p: Proc = { child, output: "", exited: Promise.resolve() };
  child.stdout?.on("data", (d) => p.output += d);
  child.stderr?.on("data", (d) => p.output += d);
  p.exited = new Promise((r) =>
    child.on("exit", (code, signal) => {
      p.exit = { code, signal };
      r();
    })
  );
  return p;
}

/** `vbus broker --config FILE` under this test's runtime, as its own process. */
function brokerCli(configPath: string): Proc {
  const { cmd, args } = cliCommand(["broker", "--config", configPath]);
  const env = { ...process.env, VBUS_LOG: "info" };
  return track(spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] }));
}

/** A config with one VM on `dir/vm1.sock` (nobody listens there: the broker keeps retrying). */
function writeConfig(dir: string, listen: string): string {
  const path = join(dir, `${basename(listen)}.json`);
  writeFileSync(
    path,
    JSON.stringify({ listen, vms: [{ name: "vm1", socket: join(dir, "vm1.sock") }] }),
  );
  return path;
}

function procState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return null;
  }
}
const gone = (pid: number) => {
  const s = procState(pid);
  return s === null || s === "Z";
};
const parentOf = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
};

async function listening(path: string): Promise<boolean> {
  return await new Promise<boolean>((r) => {
    const s = netConnect(path, () => {
      s.destroy();
      r(true);
    });
    s.on("error", () => r(false));
  });
}

/** The broker process running `configPath` (not the npx wrapper), once it listens. */
async function brokerPid(
  configPath: string,
  listen: string,
  proc: Proc,
  timeoutMs = 30_000,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exit) throw new Error(`exited ${JSON.stringify(proc.exit)}: ${proc.output}`);
    if (Date.now() > deadline) {
      throw new Error(`broker not up after ${timeoutMs} ms: ${proc.output}`);
    }
    if (await listening(listen)) {
      for (const entry of readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) continue;
        let cmd = "";
        try {
          cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ");
        } catch {
          continue;
        }
        if (cmd.includes("src/cli/main.ts broker --config " + configPath)) return Number(entry);
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * End what a test started: the process group of a detached npx (whatever is left in it, also
 * after npx itself exited: on failure the broker outlives it), or the one process.
 */
async function cleanup(proc: Proc, group = false) {
  const pid = proc.child.pid!;
  try {
    if (group) process.kill(-pid, "SIGKILL");
    else if (!proc.exit) proc.child.kill("SIGKILL");
  } catch { /* already gone */ }
  await proc.exited;
}

test("hostile config: a second broker on the same VM refuses to start and names the first one's pid", async () => {
  const { dir, cleanup: rmDir } = tempDir();
  const firstConfig = writeConfig(dir, join(dir, "a.sock"));
  const first = brokerCli(firstConfig);
  let second: Proc | undefined;
  try {
    const pid = await brokerPid(firstConfig, join(dir, "a.sock"), first);
    assert.equal(pid, first.child.pid);
    // Another config, another listen socket, the same VM: before, both served it and the guest
    // saw "nonce mismatch" and lost messages at random.
    second = brokerCli(writeConfig(dir, join(dir, "b.sock")));
    const timer = setTimeout(() => second!.child.kill("SIGKILL"), 10_000);
    await second.exited;
    clearTimeout(timer);
    assert.equal(
      second.exit?.code,
      1,
      `the second broker must fail to start: ${JSON.stringify(second.exit)}`,
    );
    assert.match(
      second.output,
      new RegExp(
        `VM vm1 is served by another broker \\(pid ${pid}, lock ${join(dir, "vm1.sock.lock")}\\)`,
      ),
    );
    assert.equal(first.exit, undefined, "the first broker still runs");
    assert.equal(
      readFileSync(join(dir, "vm1.sock.lock"), "utf8"),
      `${pid}\n`,
      "the lock names its holder",
    );
    // In-process too (another open file of the same lock counts as another holder).
    const config = parseConfig(readFileSync(writeConfig(dir, join(dir, "c.sock")), "utf8"));
    await assert.rejects(
      new Broker(config, { logger: quiet }).start(),
      /VM vm1 is served by another broker/,
    );
  } finally {
    if (second) await cleanup(second);
    await cleanup(first);
    rmDir();
  }
});

/**
 * Start `npx vbus broker` the way a user would, in its own process group; stop it with
 * `stop(npxPid, brokerPid)`; the broker must be gone within 5 s and a new broker must start on
 * the same config.
 */
async function npxScenario(stop: (npx: number, broker: number) => void) {
  const { dir, cleanup: rmDir } = tempDir();
  const listen = join(dir, "b.sock");
  const configPath = writeConfig(dir, listen);
  const npx = track(
    spawn("npx", ["--no", "vbus", "broker", "--config", configPath], {
      cwd: ROOT,
      detached: true, // its own process group, so that only npx gets the signal
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, VBUS_RUNTIME: RUNTIME, VBUS_LOG: "info" },
    }),
  );
  try {
    const pid = await brokerPid(configPath, listen, npx, 60_000);
    assert.notEqual(pid, npx.child.pid, "npx runs the broker in a child process");
    assert.match(readFileSync(`/proc/${pid}/cmdline`, "utf8"), /main\.ts/);
    stop(npx.child.pid!, pid);
    await waitFor(() => gone(pid), `broker ${pid} gone after npx was stopped\n${npx.output}`, 5000);
    const broker = new Broker(parseConfig(readFileSync(configPath, "utf8"), configPath), {
      logger: quiet,
    });
    await broker.start(); // the VM's lock and the listen socket are free again
    await broker.stop();
  } finally {
    await cleanup(npx, true);
    rmDir();
  }
}

test("hostile config: SIGTERM to `npx vbus broker` stops the broker", async () => {
  await npxScenario((npx) => process.kill(npx, "SIGTERM"));
});

test("hostile config: SIGKILL to `npx vbus broker` stops the broker", async () => {
  await npxScenario((npx) => process.kill(npx, "SIGKILL"));
});

test("hostile config: SIGKILL to the vbus wrapper stops the broker it started", async () => {
  await npxScenario((_npx, broker) => process.kill(parentOf(broker), "SIGKILL"));
});

/** A broker whose VM has the given pre-existing backing file. */
async function brokerWithShm(prepare: (path: string) => void) {
  const { dir, cleanup: rmDir } = tempDir();
  const shm = `/dev/shm/${basename(dir)}-vm1`;
  const fd = openSync(shm, "w", 0o600);
  ftruncateSync(fd, SHM_SIZE);
  closeSync(fd);
  prepare(shm);
  const config = validateConfig({
    vms: [{ name: "vm1", socket: join(dir, "vm1.sock"), shm, shmSize: SHM_SIZE }],
  });
  const broker = new Broker(config, { logger: quiet, hostShm: false });
  await broker.start();
  return {
    reason: () => broker.stats().vms[0].pathReason,
    async close() {
      await broker.stop();
      rmSync(shm);
      rmDir();
    },
  };
}

test("hostile config: a VM backing file every user may write is refused (anyone could SIGBUS the broker)", async () => {
  const b = await brokerWithShm((path) => chmodSync(path, 0o666));
  try {
    assert.match(b.reason() ?? "(mapped)", /is writable by every user \(mode 666\)/);
  } finally {
    await b.close();
  }
  const ok = await brokerWithShm((path) => chmodSync(path, 0o660));
  try {
    assert.equal(ok.reason(), undefined, "mode 660 owned by the broker's user is mapped");
  } finally {
    await ok.close();
  }
});

test("hostile config: a VM backing file owned by another user is refused", async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip("needs root to give the file to another user (chown)");
    return;
  }
  const b = await brokerWithShm((path) => chownSync(path, 65534, 65534));
  try {
    assert.match(b.reason() ?? "(mapped)", /is owned by uid 65534, not by the broker's user/);
  } finally {
    await b.close();
  }
});

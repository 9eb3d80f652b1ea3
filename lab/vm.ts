/**
 * The vbus micro-VM lab: boot a real KVM/QEMU guest (TCG when KVM does not work), with the host's
 * root filesystem shared read-only over 9p, run a shell script in it with cwd = this checkout, and
 * get back its exit code and console. Runs under Deno and Bun alike (node:* modules only).
 *
 * @example
 * ```ts
 * import { bootGuest } from "./lab/vm.ts";
 * import { qemuArgs } from "./src/vm/qemu_args.ts";
 * const vm = { name: "vm1", socket: "/tmp/x/vm1.sock", port: "org.vbus.0", shmSize: 16 << 20 };
 * const guest = await bootGuest({
 *   name: "demo",
 *   deviceArgs: qemuArgs(vm),
 *   script: "./node_modules/.bin/bun -e 'console.log(1 + 1)'",
 *   timeoutMs: 60_000,
 * });
 * const { code, consoleLog, accelerator, bootMs } = await guest.exited;
 * ```
 * @module
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  constants as fsConstants,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { qemuOptValue, shellQuote } from "../src/vm/qemu_args.ts";
import {
  type GuestNetwork,
  guestNetworkConfig,
  networkArgs,
  refuseForeignNetwork,
  vsockArgs,
  vsockProblem,
} from "./net.ts";

export type { GuestForward, GuestNetwork, HostForward } from "./net.ts";

/** Root of the checkout this file belongs to (derived from import.meta.url, never hardcoded). */
export const PROJECT_ROOT: string = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** Directory of the lab (`<root>/lab`). */
export const LAB_DIR: string = join(PROJECT_ROOT, "lab");
/** Build output of `lab/setup.sh` (gitignored). */
export const BUILD_DIR: string = join(LAB_DIR, "build");
/** Console logs of the most recent boot of each guest name. */
export const LOG_DIR: string = join(BUILD_DIR, "logs");

const QEMU = "qemu-system-x86_64";
const QBOOT = "/usr/share/qemu/qboot.rom";

/** The lab cannot boot guests on this machine; `message` says why (tests print it and skip). */
export class LabUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LabUnavailableError";
  }
}

/** What {@link ensureLab} found or built. */
export interface LabInfo {
  /** Uncompressed guest kernel. */
  vmlinux: string;
  /** Initramfs with busybox, the virtio/9p modules and lab/guest-init.sh. */
  initrd: string;
  /** Guest kernel version (from /boot). */
  kernel: string;
  /** Path of the qemu binary. */
  qemu: string;
  /** Whether setup.sh ran (it was missing or stale). */
  rebuilt: boolean;
}

let labCache: LabInfo | undefined;

function inputsHash(): string {
  const h = createHash("sha256");
  h.update(readFileSync(join(LAB_DIR, "setup.sh")));
  h.update(readFileSync(join(LAB_DIR, "guest-init.sh")));
  return h.digest("hex").slice(0, 16);
}

function findOnPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(":")) {
    const p = join(dir, cmd);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch { /* next */ }
  }
  return undefined;
}

/** Why the build is stale, or undefined when it is up to date. */
function staleReason(): string | undefined {
  const stampPath = join(BUILD_DIR, "stamp");
  for (const f of ["vmlinux", "initramfs.cpio.gz", "stamp"]) {
    if (!existsSync(join(BUILD_DIR, f))) return `lab/build/${f} missing`;
  }
  const stamp = readFileSync(stampPath, "utf8").trim();
  const m = /^kernel=(\S+) inputs=(\S+)$/.exec(stamp);
  if (!m) return "lab/build/stamp unreadable";
  if (m[2] !== inputsHash()) return "lab/setup.sh or lab/guest-init.sh changed since the build";
  if (!existsSync(`/boot/vmlinuz-${m[1]}`)) return `kernel ${m[1]} is no longer in /boot`;
  const kernels = readdirSync("/boot").filter((f) => f.startsWith("vmlinuz-")).map((f) =>
    f.slice(8)
  );
  const newest = kernels.sort((a, b) => a.localeCompare(b, "en", { numeric: true })).at(-1);
  if (!process.env.VBUS_LAB_KERNEL && newest && newest !== m[1]) {
    return `newer kernel ${newest} in /boot`;
  }
  return undefined;
}

/**
 * Make sure the lab is usable: runs `lab/setup.sh` (installs packages if missing, builds
 * lab/build) when the build is missing or stale, and checks qemu and qboot are present.
 * Throws {@link LabUnavailableError} with the reason otherwise. Memoised per process.
 *
 * @example
 * ```ts
 * const lab = ensureLab(); // { vmlinux, initrd, kernel, qemu, rebuilt }
 * ```
 */
export function ensureLab(opts: { quiet?: boolean } = {}): LabInfo {
  if (labCache) return labCache;
  if (process.platform !== "linux" || process.arch !== "x64") {
    throw new LabUnavailableError(
      `the lab needs Linux x86_64 (this is ${process.platform}/${process.arch})`,
    );
  }
  const why = staleReason();
  let rebuilt = false;
  if (why !== undefined) {
    if (!opts.quiet) console.error(`[lab] running lab/setup.sh: ${why}`);
    const r = spawnSync("bash", [join(LAB_DIR, "setup.sh")], {
      stdio: ["ignore", opts.quiet ? "pipe" : "inherit", "pipe"],
      encoding: "utf8",
      timeout: 15 * 60_000,
    });
    if (r.error) throw new LabUnavailableError(`lab/setup.sh could not run: ${r.error.message}`);
    if (r.status !== 0) {
      throw new LabUnavailableError(
        `lab/setup.sh failed (exit ${r.status ?? r.signal}): ${
          (r.stderr ?? "").trim().split("\n").slice(-5).join(" | ")
        }`,
      );
    }
    if (!opts.quiet && r.stderr) process.stderr.write(r.stderr);
    rebuilt = true;
    const still = staleReason();
    if (still) {
      throw new LabUnavailableError(`lab/setup.sh ran but the build is still stale: ${still}`);
    }
  }
  const qemu = findOnPath(QEMU);
  if (!qemu) {
    throw new LabUnavailableError(`${QEMU} not found on PATH (Debian package qemu-system-x86)`);
  }
  const ver = spawnSync(qemu, ["--version"], { encoding: "utf8", timeout: 20_000 });
  if (ver.status !== 0) {
    throw new LabUnavailableError(
      `${qemu} --version failed (${ver.error?.message ?? `exit ${ver.status ?? ver.signal}`}): ` +
        `${(ver.stderr ?? "").trim().slice(0, 300)}`,
    );
  }
  if (!existsSync(QBOOT)) {
    throw new LabUnavailableError(`${QBOOT} missing (Debian package qemu-system-data)`);
  }
  const stamp = readFileSync(join(BUILD_DIR, "stamp"), "utf8");
  labCache = {
    vmlinux: join(BUILD_DIR, "vmlinux"),
    initrd: join(BUILD_DIR, "initramfs.cpio.gz"),
    kernel: /kernel=(\S+)/.exec(stamp)![1],
    qemu,
    rebuilt,
  };
  return labCache;
}

/** Which accelerator guests use, and why. */
export interface AcceleratorChoice {
  accelerator: "kvm" | "tcg";
  /** Human-readable reason (probe result, missing /dev/kvm, env override, ...). */
  reason: string;
  /** True when the answer came from lab/build/accel.json rather than a probe just now. */
  cached: boolean;
}

let accelCache: AcceleratorChoice | undefined;
const PROBE_MS = 8_000;

/**
 * Decide between KVM and TCG. `VBUS_LAB_ACCEL=kvm|tcg` forces the choice. Otherwise KVM is used
 * only if /dev/kvm is usable AND a probe boot under KVM reaches the guest's userspace (/init)
 * within 8 s: on nested/paravirtual hosts a stock kernel hangs under KVM, so a present /dev/kvm
 * proves nothing. The answer is cached in lab/build/accel.json (keyed by host kernel and lab
 * build); delete that file to probe again.
 *
 * @example
 * ```ts
 * const { accelerator, reason } = await detectAccelerator(); // e.g. "tcg", "KVM probe ... hung"
 * ```
 */
export async function detectAccelerator(): Promise<AcceleratorChoice> {
  const forced = process.env.VBUS_LAB_ACCEL;
  if (forced === "kvm" || forced === "tcg") {
    return { accelerator: forced, reason: `forced by VBUS_LAB_ACCEL=${forced}`, cached: false };
  }
  if (forced) throw new Error(`VBUS_LAB_ACCEL must be "kvm" or "tcg", not "${forced}"`);
  if (accelCache) return accelCache;
  const lab = ensureLab();
  const cachePath = join(BUILD_DIR, "accel.json");
  const key = `${release()} ${readFileSync(join(BUILD_DIR, "stamp"), "utf8").trim()}`;
  try {
    const c = JSON.parse(readFileSync(cachePath, "utf8"));
    if (c.key === key && (c.accelerator === "kvm" || c.accelerator === "tcg")) {
      accelCache = { accelerator: c.accelerator, reason: `${c.reason} (cached)`, cached: true };
      return accelCache;
    }
  } catch { /* no cache */ }
  let choice: AcceleratorChoice;
  try {
    accessSync("/dev/kvm", fsConstants.R_OK | fsConstants.W_OK);
    choice = await probeKvm(lab);
  } catch (err) {
    choice = {
      accelerator: "tcg",
      reason: `/dev/kvm not usable (${(err as Error).message})`,
      cached: false,
    };
  }
  writeFileSync(
    cachePath,
    JSON.stringify({ key, ...choice, probedAt: new Date().toISOString() }) + "\n",
  );
  accelCache = choice;
  return choice;
}

async function probeKvm(lab: LabInfo): Promise<AcceleratorChoice> {
  const t0 = Date.now();
  const h = startGuest(lab, "kvm", {
    name: "kvm-probe",
    deviceArgs: [],
    script: "true",
    timeoutMs: PROBE_MS,
  });
  const init = await Promise.race([h.initSeen, h.exited.then(() => false)]);
  h.kill();
  const r = await h.exited;
  if (init) {
    return {
      accelerator: "kvm",
      reason: `KVM probe boot reached userspace in ${Date.now() - t0} ms`,
      cached: false,
    };
  }
  const tail = r.consoleLog.trim().split("\n").slice(-2).join(" | ");
  return {
    accelerator: "tcg",
    reason: `KVM probe boot did not reach userspace within ${PROBE_MS} ms` +
      (tail ? ` (console: ${tail.slice(0, 200)})` : " (no console output: hung in early boot)"),
    cached: false,
  };
}

/** Options of {@link bootGuest}. */
export interface BootOptions {
  /** Short name (letters, digits, '-', '_'): names the console log `lab/build/logs/NAME.log`. */
  name: string;
  /** Device flags, e.g. `qemuArgs(vm)` from src/vm/qemu_args.ts; appended as-is. */
  deviceArgs: string[];
  /** POSIX sh script run in the guest (chrooted into the host root) with cwd = `cwd`. */
  script: string;
  /** Hard bound on the whole boot (qemu is SIGKILLed after it); the guest bounds the script
   * itself to end ~3 s before. */
  timeoutMs: number;
  /** Host paths to make visible read-only in the guest even where the guest mounts a tmpfs
   * (/tmp, /run, /dev/shm). The project root and cwd are added when needed. */
  binds?: string[];
  /** Host directories to share writable (each its own 9p export), mounted at the same path. */
  writableBinds?: string[];
  /** Environment for the script (the guest starts from a clean env: PATH, HOME=/tmp/home, ...). */
  env?: Record<string, string>;
  /** Working directory of the script in the guest; default: the project root. */
  cwd?: string;
  /** Guest RAM (default "256M"). */
  memory?: string;
  /** Force an accelerator (default: {@link detectAccelerator}). */
  accelerator?: "kvm" | "tcg";
  /** virtio-serial port names /init waits for before running the script (default: every
   * `name=` of a `virtserialport` in deviceArgs). */
  waitPorts?: string[];
  /** A confined virtio-net NIC (lab/net.ts: QEMU user networking, `restrict=on`, forwards to
   * host 127.0.0.1 only); eth0 is up with 10.0.2.15/24 before the script runs. Default: no NIC. */
  network?: GuestNetwork;
  /** A virtio-vsock device with this guest CID (needs the host's /dev/vhost-vsock; bootGuest
   * throws {@link LabUnavailableError} without it). */
  vsock?: { cid: number };
}

/** Outcome of a boot. */
export interface GuestResult {
  /** Exit code of the script in the guest; null when it never reported one (host kill, crash). */
  code: number | null;
  /** Whole serial console (kernel messages, lab markers, the script's stdout/stderr). */
  consoleLog: string;
  /** Accelerator the guest ran with. */
  accelerator: "kvm" | "tcg";
  /** Host ms from starting qemu to the guest being ready to run the script (null if never). */
  bootMs: number | null;
  /** Host ms from starting qemu to its exit. */
  totalMs: number;
  /** True when the in-guest or the host-side timeout ended the run. */
  timedOut: boolean;
  /** Set when something went wrong outside the script (setup failure in the guest, qemu error). */
  error?: string;
}

/** A running guest. */
export interface GuestHandle {
  /** Resolves once qemu has exited and temp files are removed. Never rejects. */
  exited: Promise<GuestResult>;
  /** Stop the guest now (SIGKILL to qemu). Safe to call more than once. */
  kill(): void;
  /** File the console is written to while the guest runs (kept after exit for debugging). */
  consoleLogPath: string;
  /** qemu's process id. */
  pid: number | undefined;
  /** Resolves with host ms to "ready to run the script" (rejects if the guest exits before). */
  ready: Promise<number>;
  /** Accelerator in use. */
  accelerator: "kvm" | "tcg";
}

interface InternalHandle extends GuestHandle {
  initSeen: Promise<boolean>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function trackChild(c: ChildProcess) {
  live.add(c);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on("exit", () => {
      for (const p of live) {
        try {
          p.kill("SIGKILL");
        } catch { /* gone */ }
      }
    });
  }
}

/**
 * Boot a guest and run `script` in it. The qemu command is: the lab's own flags (kernel,
 * initramfs, 9p root, console on serial, accelerator) followed by exactly `deviceArgs`.
 * Bounded twice: in the guest (busybox timeout around the script) and on the host (SIGKILL
 * after `timeoutMs`). Temp files (the per-boot run directory) are removed on exit.
 *
 * @example
 * ```ts
 * const g = await bootGuest({ name: "t1", deviceArgs: qemuArgs(vm), script: "ls /dev/virtio-ports", timeoutMs: 60_000 });
 * const r = await g.exited;
 * if (r.code !== 0) throw new Error(`guest failed:\n${r.consoleLog}`);
 * ```
 */
export async function bootGuest(opts: BootOptions): Promise<GuestHandle> {
  const lab = ensureLab();
  const accelerator = opts.accelerator ?? (await detectAccelerator()).accelerator;
  const h = startGuest(lab, accelerator, opts);
  return {
    exited: h.exited,
    kill: h.kill,
    consoleLogPath: h.consoleLogPath,
    pid: h.pid,
    ready: h.ready,
    accelerator,
  };
}

function checkPath(p: string, what: string): string {
  if (!p.startsWith("/")) throw new Error(`${what} "${p}" must be an absolute path`);
  if (/[\n\0]/.test(p)) throw new Error(`${what} ${JSON.stringify(p)} contains a newline or NUL`);
  return p.replace(/\/+$/, "") || "/";
}

const HIDDEN_IN_GUEST = ["/tmp", "/run", "/dev/shm", "/proc", "/sys", "/dev"];
function hiddenInGuest(p: string): boolean {
  return HIDDEN_IN_GUEST.some((h) => p === h || p.startsWith(h + "/"));
}

function startGuest(lab: LabInfo, accelerator: "kvm" | "tcg", opts: BootOptions): InternalHandle {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(opts.name ?? "")) {
    throw new Error(`bootGuest: name "${opts.name}" must be 1-64 letters, digits, '_' or '-'`);
  }
  if (!Array.isArray(opts.deviceArgs) || opts.deviceArgs.some((a) => typeof a !== "string")) {
    throw new Error("bootGuest: deviceArgs must be an array of strings (e.g. qemuArgs(vm))");
  }
  refuseForeignNetwork(opts.deviceArgs);
  const netArgs = opts.network ? networkArgs(opts.network) : [];
  if (opts.vsock) {
    const why = vsockProblem();
    if (why) throw new LabUnavailableError(`bootGuest: vsock requested, but ${why}`);
  }
  const vsock = opts.vsock ? vsockArgs(opts.vsock.cid) : [];
  if (typeof opts.script !== "string") throw new Error("bootGuest: script must be a string");
  if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs < 1000) {
    throw new Error(`bootGuest: timeoutMs ${opts.timeoutMs} must be at least 1000`);
  }
  const cwd = checkPath(opts.cwd ?? PROJECT_ROOT, "cwd");
  const binds = (opts.binds ?? []).map((b) => checkPath(b, "bind"));
  for (const p of [PROJECT_ROOT, cwd]) if (hiddenInGuest(p) && !binds.includes(p)) binds.push(p);
  const writable = (opts.writableBinds ?? []).map((b) => checkPath(b, "writable bind"));
  for (const w of writable) {
    if (!existsSync(w)) throw new Error(`bootGuest: writable bind ${w} does not exist on the host`);
  }
  const waitPorts = opts.waitPorts ?? portNames(opts.deviceArgs);
  for (const p of waitPorts) {
    if (!/^[A-Za-z0-9_.-]+$/.test(p)) throw new Error(`bootGuest: bad port name "${p}"`);
  }

  const runDir = mkdtempSync(join(tmpdir(), `vbus-lab-${opts.name}-`));
  if (/\s/.test(runDir)) {
    rmSync(runDir, { recursive: true, force: true });
    throw new Error(
      `bootGuest: temp dir ${runDir} contains whitespace (set TMPDIR to a plain path)`,
    );
  }
  const deadline = Math.floor((Date.now() + opts.timeoutMs) / 1000) - 3;
  const guestTimeout = Math.max(1, Math.ceil(opts.timeoutMs / 1000));
  writeFileSync(
    join(runDir, "config"),
    [
      `VBUS_TIMEOUT=${guestTimeout}`,
      `VBUS_DEADLINE=${deadline}`,
      `VBUS_CWD=${shellQuote(cwd)}`,
      `VBUS_PORTS=${shellQuote(waitPorts.join(" "))}`,
      ...Object.entries(opts.network ? guestNetworkConfig() : {}).map(([k, v]) =>
        `${k}=${shellQuote(v)}`
      ),
      ...(opts.vsock ? ["VBUS_VSOCK=1"] : []),
      "",
    ].join("\n"),
  );
  writeFileSync(join(runDir, "binds"), binds.map((b) => b + "\n").join(""));
  writeFileSync(join(runDir, "shares"), writable.map((w, i) => `vbusw${i} ${w}\n`).join(""));
  const envLines = Object.entries(opts.env ?? {}).map(([k, v]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bootGuest: bad env name "${k}"`);
    return `export ${k}=${shellQuote(v)}\n`;
  });
  writeFileSync(join(runDir, "script.sh"), envLines.join("") + opts.script + "\n");

  mkdirSync(LOG_DIR, { recursive: true });
  const consoleLogPath = join(LOG_DIR, `${opts.name}.log`);
  const accel = accelerator === "kvm"
    ? ["-accel", "kvm", "-cpu", "host"]
    : ["-accel", "tcg,thread=multi", "-cpu", "max"];
  const args = [
    "-name",
    `vbus-lab-${opts.name}`,
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",
    "-display",
    "none",
    "-monitor",
    "none",
    "-serial",
    "stdio",
    ...accel,
    "-m",
    opts.memory ?? "256M",
    "-bios",
    QBOOT,
    "-kernel",
    lab.vmlinux,
    "-initrd",
    lab.initrd,
    "-append",
    `console=ttyS0 panic=-1 quiet vbus.run=${runDir}`,
    "-virtfs",
    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    "-virtfs",
    `local,path=${qemuOptValue(runDir)},mount_tag=vbusrun,security_model=none`,
    ...writable.flatMap((w, i) => [
      "-virtfs",
      `local,path=${qemuOptValue(w)},mount_tag=vbusw${i},security_model=none,multidevs=remap`,
    ]),
    ...netArgs,
    ...vsock,
    ...opts.deviceArgs,
  ];
  writeFileSync(join(runDir, "qemu.cmd"), [lab.qemu, ...args].map(shellQuote).join(" ") + "\n");

  const t0 = Date.now();
  const logStream = createWriteStream(consoleLogPath);
  logStream.write(`# ${[lab.qemu, ...args].map(shellQuote).join(" ")}\n`);
  let consoleText = "";
  let partial = "";
  let bootMs: number | null = null;
  let guestCode: number | null = null;
  let guestTimedOut = false;
  let guestError: string | undefined;
  let hostTimedOut = false;
  let resolveInit!: (v: boolean) => void;
  const initSeen = new Promise<boolean>((r) => (resolveInit = r));
  let resolveReady!: (ms: number) => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<number>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  ready.catch(() => {}); // callers may not await it

  const child = spawn(lab.qemu, args, { stdio: ["ignore", "pipe", "pipe"] });
  trackChild(child);
  let spawnError: string | undefined;
  child.on("error", (e) => (spawnError = `cannot start ${lab.qemu}: ${e.message}`));

  const onLine = (line: string) => {
    const clean = line.replace(/\r$/, "");
    if (clean.startsWith("VBUS-INIT")) resolveInit(true);
    else if (clean.startsWith("VBUS-READY")) {
      bootMs = Date.now() - t0;
      resolveReady(bootMs);
    } else if (clean.startsWith("VBUS-TIMEOUT")) guestTimedOut = true;
    else if (clean.startsWith("VBUS-ERROR:")) guestError ??= clean.slice(12);
    else {
      const m = /^VBUS-EXIT-CODE=(\d+)$/.exec(clean);
      if (m) guestCode = Number(m[1]);
    }
  };
  const MAX_KEEP = 8 * 1024 * 1024;
  child.stdout!.on("data", (chunk: Buffer) => {
    const s = chunk.toString("utf8");
    logStream.write(s);
    if (consoleText.length < MAX_KEEP) consoleText += s;
    partial += s;
    const lines = partial.split("\n");
    partial = lines.pop()!;
    for (const l of lines) onLine(l);
  });
  let stderrText = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    const s = chunk.toString("utf8");
    stderrText += s;
    logStream.write(s);
  });

  const timer = setTimeout(() => {
    hostTimedOut = true;
    child.kill("SIGKILL");
  }, opts.timeoutMs);
  let killed = false;
  const kill = () => {
    killed = true;
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };

  const exited = new Promise<GuestResult>((resolveExit) => {
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      live.delete(child);
      if (partial) onLine(partial);
      const totalMs = Date.now() - t0;
      if (guestCode === null) {
        // The console line can be lost if qemu dies mid-write; the run dir has the file.
        try {
          const f = readFileSync(join(runDir, "exit_code"), "utf8").trim();
          if (/^\d+$/.test(f)) guestCode = Number(f);
        } catch { /* none */ }
      }
      rmSync(runDir, { recursive: true, force: true });
      resolveInit(false);
      rejectReady(new Error(`guest ${opts.name} exited before it was ready`));
      let error = guestError;
      if (spawnError) error = spawnError;
      else if (hostTimedOut) error = `host timeout: qemu killed after ${opts.timeoutMs} ms`;
      else if (killed && guestCode === null) error = "killed";
      else if (guestCode === null) {
        error = `qemu exited (${signal ?? `status ${status}`}) without a guest exit code` +
          (stderrText.trim() ? `: ${stderrText.trim().split("\n").slice(-3).join(" | ")}` : "");
      }
      logStream.end(() =>
        resolveExit({
          code: guestCode,
          consoleLog: consoleText,
          accelerator,
          bootMs,
          totalMs,
          timedOut: hostTimedOut || guestTimedOut,
          ...(error !== undefined ? { error } : {}),
        })
      );
    });
  });

  return { exited, kill, consoleLogPath, pid: child.pid, ready, accelerator, initSeen };
}

/** Port names from `-device virtserialport,...,name=X` flags. */
function portNames(deviceArgs: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < deviceArgs.length - 1; i++) {
    if (deviceArgs[i] !== "-device" || !deviceArgs[i + 1].startsWith("virtserialport,")) continue;
    const m = /(?:^|,)name=([^,]+)/.exec(deviceArgs[i + 1]);
    if (m) out.push(m[1]);
  }
  return out;
}

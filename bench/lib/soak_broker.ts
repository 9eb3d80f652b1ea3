/**
 * The chaos soak's broker: `vbus broker --config FILE` as a child process under Deno or Bun, so
 * the soak can SIGKILL it and start a fresh one on the same config; and the probes the soak
 * samples every second (broker RSS and open fds from /proc, region files in /dev/shm).
 *
 * @example
 * ```ts
 * import { BrokerProcess } from "./soak_broker.ts";
 * const broker = new BrokerProcess("bun", "/tmp/soak/broker.json", "/tmp/soak/broker.sock", "/tmp/soak");
 * await broker.start();
 * console.log(broker.sample());
 * await broker.kill(); // SIGKILL
 * ```
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, readdirSync, readFileSync, type WriteStream } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { connectUnix } from "../../src/port/socket_port.ts";
import { ROOT, RUNTIME_BIN } from "./proc.ts";

/** The runtimes the soak can run the broker and its clients under. */
export type Runtime = "deno" | "bun";

/** One incarnation of the broker process. */
export interface Incarnation {
  gen: number;
  pid: number;
  startedAt: number;
  /** How long from spawn until its host socket accepted a connection (ms). */
  startupMs: number;
  endedAt?: number;
  /** "SIGKILL" (by the soak), "SIGTERM" (end of run), or an unexpected exit code/signal. */
  end?: string;
  /** Did it exit on its own, unasked? (a crash: a finding) */
  crashed: boolean;
  /** Last lines it wrote to stderr before it ended. */
  stderrTail: string[];
}

/** One sample of the broker and the machine. */
export interface ResourceSample {
  /** Seconds since the soak started. */
  t: number;
  gen: number;
  brokerRssKiB: number | null;
  brokerFds: number | null;
  /** Files in /dev/shm belonging to this soak (its VM regions, its brokers' host regions). */
  shmFiles: number;
  /** Of those, host regions of brokers no longer running. */
  shmStale: number;
  /** All files in /dev/shm named vbus* (other processes' too). */
  shmAllVbus: number;
  soakRssKiB: number | null;
}

/** `VmRSS` of `pid` in KiB, or null if it is gone. */
export function rssKiB(pid: number | "self"): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Open file descriptors of `pid`, or null if it is gone. */
export function fdCount(pid: number): number | null {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** The broker process, restartable. */
export class BrokerProcess {
  readonly incarnations: Incarnation[] = [];
  #child?: ChildProcess;
  #exited?: Promise<void>;
  #current?: Incarnation;
  #log: WriteStream;
  #tail: string[] = [];
  #partial = "";
  /** WARN/ERROR lines by "LEVEL [component] message" (fields stripped), over all incarnations. */
  readonly logCounts = new Map<string, number>();
  #expectingExit = false;
  /** Pids of every broker this soak started (their host regions are "ours" in /dev/shm). */
  readonly pids = new Set<number>();

  constructor(
    readonly runtime: Runtime,
    readonly configFile: string,
    readonly listen: string,
    dir: string,
    /** Files in /dev/shm named with this prefix are this soak's VM regions. */
    readonly vmShmPrefix = "",
    readonly onCrash: (inc: Incarnation) => void = () => {},
  ) {
    this.#log = createWriteStream(join(dir, "broker.log"));
  }

  /** The running incarnation's pid. */
  get pid(): number | undefined {
    return this.#current?.endedAt === undefined ? this.#current?.pid : undefined;
  }

  /** Spawn the broker and resolve once its host socket accepts connections. */
  async start(gen: number, t0: number): Promise<Incarnation> {
    const script = join(ROOT, "src", "cli", "main.ts");
    const args = ["broker", "--config", this.configFile];
    const [cmd, argv] = this.runtime === "deno"
      ? [RUNTIME_BIN.deno, ["run", "-A", "--quiet", script, ...args]]
      : [RUNTIME_BIN.bun, [script, ...args]];
    const spawnedAt = performance.now();
    const child = spawn(cmd, argv, {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, VBUS_LOG: process.env.VBUS_SOAK_BROKER_LOG ?? "warn" },
    });
    if (child.pid === undefined) throw new Error(`cannot start the broker: ${cmd}`);
    this.pids.add(child.pid);
    const inc: Incarnation = {
      gen,
      pid: child.pid,
      startedAt: (spawnedAt - t0) / 1000,
      startupMs: 0,
      crashed: false,
      stderrTail: [],
    };
    this.#child = child;
    this.#current = inc;
    this.#tail = [];
    this.incarnations.push(inc);
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (s: string) => this.#onStderr(s));
    this.#exited = new Promise<void>((resolve) => {
      child.on("exit", (code, signal) => {
        inc.endedAt = (performance.now() - t0) / 1000;
        inc.end ??= signal ?? `exit ${code}`;
        inc.stderrTail = this.#tail.slice(-40);
        if (!this.#expectingExit) {
          inc.crashed = true;
          this.onCrash(inc);
        }
        resolve();
      });
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (inc.endedAt !== undefined) {
        throw new Error(
          `broker exited (${inc.end}) before listening: ${this.#tail.slice(-10).join("\n")}`,
        );
      }
      try {
        const probe = await connectUnix(this.listen);
        probe.destroy();
        break;
      } catch {
        if (Date.now() > deadline) {
          throw new Error(`broker did not listen on ${this.listen} within 60 s`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    inc.startupMs = Math.round(performance.now() - spawnedAt);
    return inc;
  }

  /** SIGKILL the running broker and wait until it is gone. Returns when it was killed. */
  async kill(): Promise<number> {
    const child = this.#child;
    if (!child || this.#current?.endedAt !== undefined) return performance.now();
    this.#expectingExit = true;
    this.#current!.end = "SIGKILL";
    const t = performance.now();
    child.kill("SIGKILL");
    await this.#exited;
    this.#expectingExit = false;
    return t;
  }

  /** SIGTERM (a clean stop), SIGKILL after `graceMs`. Resolves with how it ended. */
  async stop(graceMs = 5000): Promise<string> {
    const child = this.#child;
    if (!child || this.#current?.endedAt !== undefined) return this.#current?.end ?? "not running";
    this.#expectingExit = true;
    child.kill("SIGTERM");
    const timer = setTimeout(() => {
      this.#current!.end = "SIGKILL after SIGTERM timed out";
      child.kill("SIGKILL");
    }, graceMs);
    await this.#exited;
    clearTimeout(timer);
    this.#log.end();
    return this.#current!.end!;
  }

  /** Kill whatever runs, synchronously (process exit paths). */
  killSync(): void {
    if (this.#child && this.#current?.endedAt === undefined) {
      this.#expectingExit = true;
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }
  }

  /** Broker RSS, fds and /dev/shm files now. */
  sample(t: number, gen: number): ResourceSample {
    const pid = this.pid;
    let shmFiles = 0, shmStale = 0, shmAllVbus = 0;
    try {
      for (const name of readdirSync("/dev/shm")) {
        if (!name.startsWith("vbus")) continue;
        shmAllVbus++;
        if (this.vmShmPrefix && name.startsWith(this.vmShmPrefix)) {
          shmFiles++;
          continue;
        }
        const m = /^vbus-(\d+)-[0-9a-f]+-\d+$/.exec(name);
        if (m && this.pids.has(Number(m[1]))) {
          shmFiles++;
          if (Number(m[1]) !== pid) shmStale++;
        }
      }
    } catch { /* no /dev/shm */ }
    return {
      t: Math.round(t * 10) / 10,
      gen,
      brokerRssKiB: pid ? rssKiB(pid) : null,
      brokerFds: pid ? fdCount(pid) : null,
      shmFiles,
      shmStale,
      shmAllVbus,
      soakRssKiB: rssKiB("self"),
    };
  }

  #onStderr(s: string) {
    this.#log.write(s);
    const lines = (this.#partial + s).split("\n");
    this.#partial = lines.pop()!;
    for (const line of lines) {
      if (!line) continue;
      this.#tail.push(line);
      if (this.#tail.length > 200) this.#tail.splice(0, 100);
      // "2026-... WARN [broker] session error session=... code=..." -> "WARN [broker] session error code=X"
      const m = /^\S+ (WARN|ERROR) (\[[^\]]+\]) (.*?)(?: \w+=|$)/.exec(line);
      if (m) {
        const code = /\bcode=(\S+)/.exec(line)?.[1];
        const key = `${m[1]} ${m[2]} ${m[3]}${code ? ` code=${code}` : ""}`;
        this.logCounts.set(key, (this.logCounts.get(key) ?? 0) + 1);
      }
    }
  }
}

/**
 * A bench that runs its roles (broker, subscriber, publisher) as child processes of its own
 * script: the parent starts a role, waits for a line the role prints on stdout, sends it
 * commands on stdin and reads its CPU from /proc ({@link startRole}, {@link cpuSeconds}); the
 * role reads those commands one line at a time ({@link stdinCommands}). Waiting is driven by
 * the child's output and exit, never by a polling timer: a timer polling for a line that never
 * comes kept bench/fastpath_profile.ts alive after its report.
 *
 * @example
 * ```ts
 * import { startRole } from "./role_process.ts";
 * const broker = startRole("broker", "/usr/bin/bun", ["bench/broker_cpu.ts", "--role", "broker"]);
 * await broker.until("ready");
 * broker.kill();
 * await broker.exited;
 * ```
 * @module
 */
import { spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";
import { procCpu } from "./proc.ts";

/** A role running as a child process, as its parent sees it. */
export interface RoleProcess {
  /** The child's process id (for /proc). */
  readonly pid: number;
  /** Send one command line to the role's stdin. */
  send(line: string): void;
  /** Resolves once the role's stdout so far contains `text`; rejects if it exits first. */
  until(text: string): Promise<void>;
  /** Everything the role wrote on stdout so far. */
  output(): string;
  /** Send the role a signal (SIGTERM by default). */
  kill(signal?: NodeJS.Signals): void;
  /** Resolves with the exit code (-1 when killed by a signal) once the role's stdio closed. */
  readonly exited: Promise<number>;
}

/**
 * Start `cmd args` as the role `name`: stdin and stdout are pipes to the parent, stderr is the
 * parent's, and the environment is the parent's with `VBUS_LOG=warn` (plus `env`).
 */
export function startRole(
  name: string,
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): RoleProcess {
  const child = spawn(cmd, args, {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, VBUS_LOG: "warn", ...env },
  });
  let out = "";
  const waiters: { text: string; resolve: () => void }[] = [];
  child.stdout!.on("data", (d) => {
    out += d;
    for (const w of waiters.splice(0)) {
      if (out.includes(w.text)) w.resolve();
      else waiters.push(w);
    }
  });
  // A role that exits early must not leave an EPIPE to crash the parent.
  child.stdin!.on("error", () => {});
  const exited = new Promise<number>((resolve) => child.on("close", (c) => resolve(c ?? -1)));
  return {
    pid: child.pid!,
    send: (line) => void child.stdin!.write(line + "\n"),
    until: (text) =>
      new Promise<void>((resolve, reject) => {
        if (out.includes(text)) return resolve();
        waiters.push({ text, resolve });
        exited.then((c) => reject(new Error(`${name} exited (${c}) before "${text}"`)));
      }),
    output: () => out,
    kill: (signal = "SIGTERM") => void child.kill(signal),
    exited,
  };
}

/** CPU seconds (utime + stime, all threads) used so far by process `pid`; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  const cpu = procCpu(pid);
  // /proc counts in ticks of 10 ms: round away the float noise of adding two of them.
  return cpu ? +(cpu.user + cpu.sys).toFixed(2) : NaN;
}

/**
 * The role side: the parent's command lines on stdin, one per call, in order. The role exits
 * (code 0) when its stdin closes, i.e. when the parent is gone.
 */
export function stdinCommands(): () => Promise<string> {
  const lines: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (l) => (waiting.length ? waiting.shift()!(l) : lines.push(l)));
  rl.on("close", () => process.exit(0));
  return () => new Promise((r) => (lines.length ? r(lines.shift()!) : waiting.push(r)));
}

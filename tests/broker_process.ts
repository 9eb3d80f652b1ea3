/**
 * The `vbus` CLI as a real child process of the runtime running the tests (Deno or Bun), for
 * tests of what only a process has: signals, exit codes, stderr, the environment.
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const CLI = join(ROOT, "src/cli/main.ts");
export const isDeno = "Deno" in globalThis;

/** A running CLI process with its output collected. */
export interface CliProcess {
  child: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** Still running? (Deno's `child.signalCode` is set by `kill()` itself, exit or not.) */
  running(): boolean;
  /** How it ended: its exit code, or the signal that killed it. */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The command line that runs the CLI with `args` under the current runtime. */
export function cliCommand(args: string[]): { cmd: string; argv: string[] } {
  const argv = isDeno ? ["run", "-A", "--quiet", CLI, ...args] : [CLI, ...args];
  return { cmd: process.execPath, argv };
}

/** Start `vbus ARGS` under the current runtime; `env` is added to (or, undefined, removes) ours. */
export function runCli(
  args: string[],
  env: Record<string, string | undefined> = {},
): CliProcess {
  const { cmd, argv } = cliCommand(args);
  const fullEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...env })) {
    if (v !== undefined) fullEnv[k] = v;
  }
  const child = spawn(cmd, argv, { cwd: ROOT, env: fullEnv, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d) => out += d);
  child.stderr!.on("data", (d) => err += d);
  let exited = false;
  child.on("exit", () => exited = true);
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("close", (code, signal) => {
      exited = true;
      resolve({ code, signal });
    })
  );
  return {
    child,
    pid: child.pid!,
    stdout: () => out,
    stderr: () => err,
    running: () => !exited,
    done,
  };
}

/** Wait for `p` to end within `ms`; SIGKILL it and fail otherwise. */
export async function exitWithin(
  p: CliProcess,
  ms: number,
  what: string,
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      killQuietly(p);
      reject(new Error(`${what}: still running after ${ms} ms; stderr:\n${p.stderr()}`));
    }, ms);
  });
  try {
    return await Promise.race([p.done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Send `signal` to `p` (the way that works in both runtimes, any number of times). */
export function signal(p: CliProcess, sig: NodeJS.Signals): void {
  process.kill(p.pid, sig);
}

/** Kill `p` if it still runs (test cleanup). */
export function killQuietly(p: CliProcess | undefined): void {
  if (!p?.running()) return;
  // Not child.kill(): after one signal sent that way, Deno's ChildProcess sends no more.
  try {
    process.kill(p.pid, "SIGKILL");
  } catch { /* gone meanwhile */ }
}

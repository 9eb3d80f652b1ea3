#!/usr/bin/env node
// `npx vbus` entry point: Node cannot run the TypeScript CLI itself, so this starts it under
// Bun (default) or Deno (VBUS_RUNTIME=deno), both installed from npm with the package.
//
// Stopping the process the user started must stop the CLI (above all a broker, which holds
// its VMs' locks). Three ways it could survive, and what covers each:
// - SIGINT/SIGTERM/SIGHUP to this wrapper: forwarded to the child (SIGHUP: reload).
// - npx/npm exec stopped: npm runs us through `sh -c`; a SIGTERM to npm kills npm and the
//   shell but never reaches us. So under npm we watch our ancestors up to npm itself and stop
//   the child when one of them is gone (this covers SIGKILL of npm too).
// - this wrapper killed (SIGKILL included): the child is told our pid (VBUS_WRAPPER_PID) and
//   the broker stops itself when its parent is no longer this process.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runtime = process.env.VBUS_RUNTIME ?? "bun";
if (runtime !== "bun" && runtime !== "deno") {
  console.error(`vbus: VBUS_RUNTIME must be "bun" or "deno", got "${runtime}"`);
  process.exit(2);
}
const require = createRequire(import.meta.url);
function binary(name) {
  const candidates = [join(root, "node_modules", ".bin", name)];
  try {
    const pkg = dirname(require.resolve(`${name}/package.json`));
    candidates.push(join(pkg, name === "bun" ? "bin/bun.exe" : "deno"));
  } catch { /* not resolvable from here */ }
  return candidates.find((p) => existsSync(p)) ?? name; // else rely on PATH
}

/** ppid, state and start time of a process from /proc, or null when it is gone. */
function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after "(comm)": state ppid ... starttime is the 20th of them.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: fields[0], ppid: Number(fields[1]), start: fields[19] };
  } catch {
    return null;
  }
}

function cmdline(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}

/**
 * When npm started us (npx, npm exec, npm run): our ancestors up to and including the npm
 * process (at most 4 levels), each with its start time so a reused pid is not mistaken for it.
 * Otherwise none: a shell that exits (nohup, &) must not stop a broker started from it.
 */
function npmAncestors() {
  if (!process.env.npm_execpath && !process.env.npm_command) return [];
  const chain = [];
  let pid = process.ppid;
  for (let depth = 0; depth < 4 && pid > 1; depth++) {
    const st = procStat(pid);
    if (!st) break;
    chain.push({ pid, start: st.start });
    const cmd = cmdline(pid);
    if (/^npm( |$)|^npx( |$)|npm-cli\.js|npx-cli\.js/.test(cmd)) return chain;
    pid = st.ppid;
  }
  return chain.slice(0, 1); // npm not found: watch the direct parent only
}

const cli = join(root, "src", "cli", "main.ts");
const args = runtime === "bun"
  ? [cli, ...process.argv.slice(2)]
  : ["run", "-A", "--quiet", `--config=${join(root, "deno.json")}`, cli, ...process.argv.slice(2)];
const child = spawn(binary(runtime), args, {
  stdio: "inherit",
  env: { ...process.env, VBUS_WRAPPER_PID: String(process.pid) },
});
const childRunning = () => child.exitCode === null && child.signalCode === null;
function stopChild(signal) {
  if (childRunning()) child.kill(signal);
}
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(sig, () => stopChild(sig));

const ancestors = npmAncestors();
if (ancestors.length > 0) {
  const parent = ancestors[0].pid;
  const watch = setInterval(() => {
    const gone = process.ppid !== parent || ancestors.some((a) => {
      const st = procStat(a.pid);
      return st === null || st.state === "Z" || st.start !== a.start;
    });
    if (!gone) return;
    clearInterval(watch);
    stopChild("SIGTERM");
    // A child that ignores SIGTERM must not outlive us for long.
    setTimeout(() => stopChild("SIGKILL"), 10_000).unref();
  }, 500);
  watch.unref();
}

child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
child.on("error", (err) => {
  console.error(`vbus: cannot start ${runtime}: ${err.message}`);
  process.exit(1);
});

#!/usr/bin/env node
// `npx vbus` entry point: Node cannot run vbus itself (it needs Deno's or Bun's FFI), so this
// starts the CLI under Bun or Deno: VBUS_RUNTIME=bun|deno picks one, else Bun if found, else
// Deno. Each is looked for next to vbus (this checkout's node_modules, or the node_modules vbus
// is installed in: `npm install vbus bun`), then on PATH. In a checkout the CLI runs from its
// TypeScript source (src/cli/main.ts); the installed package has only the build (dist/, see
// scripts/build.mjs), which Deno can run from node_modules.
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
import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const RUNTIMES = ["bun", "deno"];
const wanted = process.env.VBUS_RUNTIME;
if (wanted !== undefined && !RUNTIMES.includes(wanted)) {
  console.error(`vbus: VBUS_RUNTIME must be "bun" or "deno", got "${wanted}"`);
  process.exit(2);
}
const require = createRequire(import.meta.url);

function isExecutableFile(path) {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The runtime's executable: beside vbus first, then on PATH; null when it is nowhere. */
function binary(name) {
  const candidates = [join(root, "node_modules", ".bin", name)];
  try {
    // The npm packages `bun` and `deno` put their executable at these paths.
    const pkg = dirname(require.resolve(`${name}/package.json`));
    candidates.push(join(pkg, name === "bun" ? "bin/bun.exe" : "deno"));
  } catch { /* not installed where this file can resolve it */ }
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir) candidates.push(join(dir, name));
  }
  return candidates.find(isExecutableFile) ?? null;
}

const runtime = wanted ?? RUNTIMES.find((name) => binary(name) !== null);
const executable = runtime === undefined ? null : binary(runtime);
if (executable === null) {
  const which = wanted === undefined
    ? "Bun or Deno, and found neither"
    : `${wanted} (VBUS_RUNTIME), and did not find it`;
  const install = wanted === undefined
    ? "npm install bun   (or: npm install deno)"
    : `npm install ${wanted}`;
  console.error(
    `vbus: needs ${which} in node_modules or on PATH.\n  Install it beside vbus: ${install}`,
  );
  process.exit(127);
}

const source = join(root, "src", "cli", "main.ts");
const built = join(root, "dist", "src", "cli", "main.js");
const cli = existsSync(source) ? source : built;
if (!existsSync(cli)) {
  console.error(`vbus: ${built} is missing: run \`npm run build\` first`);
  process.exit(1);
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

// Deno: the checkout's deno.json; the installed build needs none (Deno resolves the packages
// of a file under node_modules from there) and must not write to the user's lock file.
const denoConfig = cli === source ? [`--config=${join(root, "deno.json")}`] : ["--no-lock"];
const args = runtime === "bun"
  ? [cli, ...process.argv.slice(2)]
  : ["run", "-A", "--quiet", ...denoConfig, cli, ...process.argv.slice(2)];
const child = spawn(executable, args, {
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

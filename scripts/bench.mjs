#!/usr/bin/env node
// `npm run bench` / `node scripts/bench.mjs [options]`: runs the benchmark orchestrator
// bench/run.ts under Bun (or Deno with VBUS_BENCH_RUNTIME=deno); all options are passed through
// (see `node scripts/bench.mjs --help`). The orchestrator and everything it starts share one
// process group, which this script kills if it is interrupted or overruns its time bound.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const which = process.env.VBUS_BENCH_RUNTIME ?? "bun";
const bin = {
  bun: process.env.VBUS_BUN ?? join(root, "node_modules", ".bin", "bun"),
  deno: process.env.VBUS_DENO ?? join(root, "node_modules", ".bin", "deno"),
};
if (!(which in bin)) {
  console.error(`VBUS_BENCH_RUNTIME must be bun or deno, not ${which}`);
  process.exit(2);
}
if (!existsSync(bin[which])) {
  console.error(`${bin[which]} missing: run npm ci first`);
  process.exit(2);
}
const script = join(root, "bench", "run.ts");
const cmd = which === "deno"
  ? [bin.deno, ["run", "-A", "--quiet", script, ...args]]
  : [bin.bun, ["run", script, ...args]];

// Whole-run bound: the orchestrator's own --deadline stops new cases; this is the backstop.
const quick = args.includes("--quick");
const di = args.indexOf("--deadline");
const deadlineS = di >= 0 ? Number(args[di + 1]) : quick ? 100 : 3600;
const limitS = (Number.isFinite(deadlineS) ? deadlineS : 3600) + 120;

const child = spawn(cmd[0], cmd[1], { cwd: root, stdio: "inherit", detached: true });
const killGroup = (sig) => {
  try {
    process.kill(-child.pid, sig);
  } catch { /* already gone */ }
};
const timer = setTimeout(() => {
  console.error(`bench: no result after ${limitS}s, killing the benchmark`);
  killGroup("SIGTERM");
  setTimeout(() => killGroup("SIGKILL"), 3000).unref();
}, limitS * 1000);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    killGroup("SIGTERM");
    setTimeout(() => {
      killGroup("SIGKILL");
      process.exit(130);
    }, 2000).unref();
  });
}
child.on("exit", (code, signal) => {
  clearTimeout(timer);
  killGroup("SIGKILL"); // anything left behind in the group (servers, relays, clients)
  process.exit(code ?? (signal ? 1 : 0));
});

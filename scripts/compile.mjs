#!/usr/bin/env node
// `npm run compile`: one standalone `vbus` executable (the CLI, every verb, the shared-memory
// fast path included), with no runtime or node_modules needed beside it.
//
//   node scripts/compile.mjs [--runtime bun|deno] [--output PATH] [--target T]
//
// bun (default): `bun build --compile` with two entry points, the CLI and the futex waiter's
//   worker (a worker must be an entry point of its own: ffi/futex_waiter.ts finds it there),
//   the monitor dashboard's files embedded as an asset, and bytecode compiled ahead (faster
//   start). `--target` passes a Bun target such as bun-linux-x64-baseline (for CPUs without
//   AVX2: Bun fetches that runtime from the npm registry).
// deno: `deno compile -A` with the worker and the dashboard included. It needs `denort`, which
//   deno downloads from dl.deno.land unless DENORT_BIN names a local copy.
// Prints the path and size of what it wrote; exit 2 on bad arguments, 1 when the build fails.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CLI = "src/cli/main.ts";
/** Started as a Worker by ffi/futex_waiter.ts (host clients woken by futex). */
const FUTEX_WORKER = "ffi/futex_worker.ts";
/** Read at run time by src/monitor/dashboard_assets.ts (beside it, as dashboard/NAME). */
const DASHBOARD = "src/monitor/dashboard";
// Not under dist/: that is the npm package's build, and a 110 MB executable must not be packed.
const DEFAULT_OUTPUT = join(ROOT, "build", "vbus");

const USAGE = `Usage: node scripts/compile.mjs [--runtime bun|deno] [--output PATH] [--target T]
  --runtime R   bun (default) or deno
  --output PATH where to write the executable (default build/vbus)
  --target T    bun only: a Bun target, e.g. bun-linux-x64-baseline
  -h, --help    show this help`;

function usageError(message) {
  console.error(`compile: ${message}\n${USAGE}`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    options: {
      runtime: { type: "string", default: "bun" },
      output: { type: "string", short: "o", default: DEFAULT_OUTPUT },
      target: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usageError(err.message);
}
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const runtime = values.runtime;
if (runtime !== "bun" && runtime !== "deno") {
  usageError(`--runtime must be bun or deno, got "${runtime}"`);
}
if (values.target !== undefined && runtime !== "bun") usageError("--target is for --runtime bun");
const output = resolve(values.output);
mkdirSync(dirname(output), { recursive: true });

const tool = join(ROOT, "node_modules", ".bin", runtime);
if (!existsSync(tool)) {
  console.error(`compile: ${tool} is missing (run npm install first)`);
  process.exit(1);
}

const args = runtime === "bun"
  ? [
    "build",
    "--compile",
    // Ahead-compiled bytecode: measured about twice as fast to start (README, Standalone binary).
    "--bytecode",
    "--format=esm",
    ...(values.target ? [`--target=${values.target}`] : []),
    CLI,
    FUTEX_WORKER,
    `--asset=${DASHBOARD}`,
    `--outfile=${output}`,
  ]
  : [
    "compile",
    "-A",
    "--quiet",
    `--config=${join(ROOT, "deno.json")}`,
    `--include=${FUTEX_WORKER}`,
    `--include=${DASHBOARD}`,
    `--output=${output}`,
    CLI,
  ];

const started = Date.now();
const r = spawnSync(tool, args, { cwd: ROOT, stdio: "inherit" });
if (r.error) {
  console.error(`compile: cannot run ${tool}: ${r.error.message}`);
  process.exit(1);
}
if (r.status !== 0 || !existsSync(output)) {
  const hint = runtime === "deno" && !process.env.DENORT_BIN
    ? " (deno compile downloads denort from dl.deno.land; offline, set DENORT_BIN to a denort binary)"
    : "";
  console.error(`compile: ${runtime} ${args[0]} failed (exit ${r.status ?? r.signal})${hint}`);
  process.exit(1);
}
const size = statSync(output).size;
const shown = relative(process.cwd(), output) || output;
console.log(
  `compile: wrote ${shown.startsWith("..") ? output : shown} (${
    (size / 2 ** 20).toFixed(1)
  } MiB, ${size} bytes, ${runtime}) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
);

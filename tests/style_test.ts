// The project stays as issue 13 left it: `deno lint` clean, `deno doc --lint mod.ts` clean
// (every export and member documented, no private type in the public API), every doc example
// type-checks, and `deno fmt --check` clean. Each check runs the repo's own Deno binary, so the
// result is the same under `deno test` and `bun test`; the exclusions are deno.json's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, realpathSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DENO = realpathSync(join(ROOT, "node_modules", ".bin", "deno"));
/** Bound of one tool run: type-checking every example of src/ takes ~10 s on a quiet machine. */
const RUN_TIMEOUT_MS = 300_000;
/** How much of a failing tool's output the assertion message shows. */
const OUTPUT_SHOWN = 6000;

interface Run {
  code: number | null;
  output: string;
}

/** Run the repo's deno with `args` in the repo root; resolves with its exit code and output. */
function deno(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(DENO, args, {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (d) => output += d);
    child.stderr.on("data", (d) => output += d);
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

function assertClean(run: Run, what: string): void {
  assert.equal(
    run.code,
    0,
    `${what} failed (exit ${run.code}):\n${run.output.slice(-OUTPUT_SHOWN)}`,
  );
}

/** mod.ts and every TypeScript file under src/, relative to the repo root. */
function sourceFiles(): string[] {
  const files = readdirSync(join(ROOT, "src"), { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".ts"))
    .map((f) => join("src", f))
    .sort();
  return ["mod.ts", ...files];
}

test("style: deno lint finds no problem in the project", async () => {
  assertClean(await deno(["lint"]), "deno lint");
});

test("style: deno doc --lint mod.ts: every export documented, no private type in the API", async () => {
  assertClean(await deno(["doc", "--lint", "mod.ts"]), "deno doc --lint mod.ts");
});

test("style: every @example in src/ and mod.ts type-checks (deno check --doc-only)", async () => {
  const files = sourceFiles();
  assert.ok(files.length > 50, `expected the source tree, found ${files.length} files`);
  assertClean(await deno(["check", "--doc-only", ...files]), "deno check --doc-only");
});

// This one fails until the lead's project-wide `deno fmt` pass, which lands with this test.
test("style: deno fmt --check finds nothing to reformat", async () => {
  assertClean(await deno(["fmt", "--check"]), "deno fmt --check");
});

/**
 * The two three-process benches (bench/fastpath_profile.ts, bench/broker_cpu.ts, both through
 * bench/lib/role_process.ts) run end to end on a small count and exit by themselves, printing
 * their JSON report; so does bench/inproc_path.ts, and `npm run bench` keeps its warm-up out of
 * the rates. fastpath_profile used to print its report and then never exit: the parent
 * polled with a timer for a "ready" its publisher never prints. A real broker, real ring
 * clients, under Bun (the scripts' runtime) whatever runtime runs this test. Runs under
 * `deno test -A` and `bun test --timeout 600000`; wrap manual runs in
 * `flock /tmp/vbus-heavy.lock`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, RUNTIME_BIN } from "../bench/lib/proc.ts";

/** Far above a 2,000-message run (a few seconds), far below "never". */
const EXIT_WITHIN_MS = 90_000;

function runBench(script: string, args: string[]) {
  const r = spawnSync(RUNTIME_BIN.bun, [join(ROOT, "bench", script), ...args], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: EXIT_WITHIN_MS,
    killSignal: "SIGKILL",
  });
  assert.equal(r.error, undefined, `${script} did not exit within ${EXIT_WITHIN_MS} ms`);
  assert.equal(r.status, 0, `${script} exited ${r.status}: ${r.stderr}`);
  const lines = r.stdout.trim().split("\n").filter((l) => l.startsWith("{"));
  return lines.map((l) => JSON.parse(l));
}

test("fastpath_profile: reports and exits", () => {
  const [report] = runBench("fastpath_profile.ts", ["--count", "2000"]);
  assert.equal(report.path, "ring");
  assert.equal(report.size, "64B");
  assert.equal(report.delivered, 2000);
  assert.deepEqual(report.exit, { pub: 0, sub: 0 });
  for (const role of ["broker", "sub", "pub"]) {
    assert.ok(report.cpuSeconds[role] >= 0, `${role} CPU: ${report.cpuSeconds[role]}`);
  }
});

test("broker_cpu: one report per run, and exits", () => {
  const reports = runBench("broker_cpu.ts", ["--count", "2000", "--idle", "0", "--runs", "2"]);
  assert.equal(reports.length, 2);
  for (const r of reports) {
    assert.equal(r.delivered, 2000);
    assert.equal(r.broker, "bun");
    assert.ok(r.brokerCpuSPerM >= 0 && r.msgsPerSec > 0, JSON.stringify(r));
  }
});

test("inproc_path: broker and both ring clients in one process, one report per run", () => {
  const reports = runBench("inproc_path.ts", ["--count", "2000", "--runs", "2"]);
  assert.equal(reports.length, 2);
  for (const r of reports) {
    assert.equal(r.delivered, 2000);
    assert.ok(r.cpuUsPerMsg > 0 && r.msgsPerSec > 0, JSON.stringify(r));
  }
});

test("npm run bench: throughput rates count only what arrived after the warm-up", () => {
  const out = mkdtempSync(join(tmpdir(), "vbus-bench-warm-"));
  try {
    const r = spawnSync(
      "node",
      [
        join(ROOT, "scripts", "bench.mjs"),
        ...["--systems", "vbus-ring", "--sizes", "128", "--shapes", "1:1", "--runtimes", "bun"],
        ...["--runs", "1", "--seconds", "0.5", "--warmup", "0.5", "--out", out],
      ],
      { cwd: ROOT, encoding: "utf8", timeout: EXIT_WITHIN_MS, killSignal: "SIGKILL" },
    );
    assert.equal(r.status, 0, `bench exited ${r.status}: ${r.stderr}`);
    const [run] = JSON.parse(readFileSync(join(out, "latest.json"), "utf8")).runs;
    assert.equal(run.ok, true, JSON.stringify(run));
    assert.equal(run.lost, 0);
    assert.equal(run.warmupS, 0.5);
    // The warm-up's deliveries are not in the rate: the publisher sent for 0.5 s before it.
    assert.ok(run.measuredDelivered > 0, `measured ${run.measuredDelivered}`);
    assert.ok(run.measuredDelivered < run.delivered, JSON.stringify(run));
    assert.ok(run.durationS < 0.5 + 0.4, `measured phase ${run.durationS} s`);
    const md = readFileSync(join(out, "latest.md"), "utf8");
    assert.match(md, /after 0\.5 s of unmeasured publishing/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

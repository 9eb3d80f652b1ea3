/**
 * The two three-process benches (bench/fastpath_profile.ts, bench/broker_cpu.ts, both through
 * bench/lib/role_process.ts) run end to end on a small count and exit by themselves, printing
 * their JSON report. fastpath_profile used to print its report and then never exit: the parent
 * polled with a timer for a "ready" its publisher never prints. A real broker, real ring
 * clients, under Bun (the scripts' runtime) whatever runtime runs this test. Runs under
 * `deno test -A` and `bun test --timeout 600000`; wrap manual runs in
 * `flock /tmp/vbus-heavy.lock`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
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

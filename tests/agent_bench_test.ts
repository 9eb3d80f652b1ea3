// bench/agent_guests.ts --quick runs end to end (issue 10): one real QEMU guest, one process on
// the port directly (before and after the agent), then N = 1, 2 processes (--quick) through
// `vbus agent`, publishing and subscribed. The JSON it writes must hold every case, each with
// messages delivered, none lost, none dropped by the broker, and the agent's CPU read for every
// agent case. The script runs under this test's runtime. Skips, printing why, when the lab cannot
// run here. Runs under `deno test -A` and `bun test --timeout 600000`; wrap manual runs in
// `flock /tmp/vbus-heavy.lock`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { detectAccelerator, ensureLab, LabUnavailableError, PROJECT_ROOT } from "../lab/vm.ts";

const RUNTIME = "Deno" in globalThis ? "deno" : "bun";

let skip: string | false = false;
try {
  ensureLab();
  await detectAccelerator();
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skip = `micro-VM lab unavailable: ${err.message}`;
  console.log(`SKIP agent bench test: ${skip}`);
}

interface Row {
  shape: string;
  mode: string;
  phase: string;
  n: number;
  ok: boolean;
  error?: string;
  sent: number;
  delivered: number;
  lost: number;
  dropped: number;
  aggMsgsPerSec: number;
  agentCpuS: number | null;
}

test("bench/agent_guests.ts --quick: every case runs in a real guest, nothing lost", {
  skip,
  timeout: 420_000,
}, () => {
  const out = mkdtempSync(join(tmpdir(), "vbus-agent-bench-test-"));
  try {
    const bin = join(PROJECT_ROOT, "node_modules", ".bin", RUNTIME);
    const args = RUNTIME === "deno" ? ["run", "-A"] : [];
    const r = spawnSync(bin, [...args, "bench/agent_guests.ts", "--quick", "--out", out], {
      cwd: PROJECT_ROOT,
      encoding: "utf8",
      timeout: 400_000,
    });
    const log = `${r.stdout}\n${r.stderr}`.slice(-6000);
    assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ""}\n${log}`);
    const { rows, meta } = JSON.parse(readFileSync(join(out, "agent_guests.json"), "utf8")) as {
      rows: Row[];
      meta: { problems: string[]; settings: { ns: number[] } };
    };
    assert.deepEqual(meta.problems, [], log);
    const cases = [
      ...["before", "after"].map((phase) => ({ mode: "direct", phase, n: 1 })),
      ...meta.settings.ns.map((n) => ({ mode: "agent", phase: "agent", n })),
    ];
    for (const c of cases) {
      for (const shape of ["pub", "sub"]) {
        const name = `${shape} ${c.mode} ${c.phase} N=${c.n}`;
        const mine = rows.filter((x) =>
          x.shape === shape && x.mode === c.mode && x.phase === c.phase && x.n === c.n
        );
        assert.ok(mine.length > 0, `${name}: no row\n${log}`);
        for (const x of mine) {
          assert.ok(x.ok, `${name}: ${x.error ?? "not ok"}`);
          assert.ok(x.sent > 0 && x.delivered === x.sent, `${name}: ${x.delivered}/${x.sent}`);
          assert.equal(x.lost, 0, `${name}: lost`);
          assert.equal(x.dropped, 0, `${name}: broker drops`);
          assert.ok(x.aggMsgsPerSec > 0, `${name}: rate`);
          if (c.mode === "agent") {
            assert.ok(typeof x.agentCpuS === "number", `${name}: agent CPU read`);
          } else assert.equal(x.agentCpuS, null, `${name}: no agent`);
        }
      }
    }
    const md = readFileSync(join(out, "agent_guests.md"), "utf8");
    assert.deepEqual(meta.settings.ns, [1, 2], "--quick runs N = 1 and 2");
    assert.match(md, /\| pub \| 64 B \| agent \| 2 \|/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

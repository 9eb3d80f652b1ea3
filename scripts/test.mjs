#!/usr/bin/env node
// `npm test`: the whole suite, under Deno and then Bun, plus the benchmark smoke run.
// 1. As root on Debian, installs what the real-guest tests need (lab/setup.sh: QEMU, a kernel,
//    busybox), what the benchmark smoke needs (nats-server, redis-server) and what the
//    monitoring tests need (chromium for the dashboard, tmux for `vbus top`, and promtool from
//    Debian's prometheus package for /metrics: only the binary is unpacked, into lab/build,
//    so no Prometheus server gets installed and started). Without root or apt, those tests
//    skip and say why.
// 2. Runs `deno test` and `bun test` over tests/, the chaos soak's smoke run
//    (`bun bench/soak.ts --quick`, ~75 s) and `npm run bench -- --quick`.
// 3. Ends with one line: `N passed, N failed, N skipped` over both runtimes.
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { stripVTControlCharacters } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
/** Where setup unpacks promtool (tests/monitor_test.ts looks there too). */
const PROMTOOL = "lab/build/prometheus/usr/bin/promtool";
const bin = (name) => join(root, "node_modules", ".bin", name);
const args = process.argv.slice(2);
const only = args.filter((a) => !a.startsWith("--"));
const skipSetup = args.includes("--no-setup");
const skipBench = args.includes("--no-bench") || only.length > 0;
const skipSoak = args.includes("--no-soak") || only.length > 0;

for (const rt of ["deno", "bun"]) {
  if (!existsSync(bin(rt))) {
    console.error(`${bin(rt)} is missing: run \`npm ci\` first`);
    process.exit(2);
  }
}

function step(title) {
  console.log(`\n=== ${title} ===`);
}

/** Install Debian packages the real-guest tests and the benchmark smoke need (root only). */
function setup() {
  if (skipSetup) return;
  const isRoot = process.getuid?.() === 0;
  const hasApt = existsSync("/usr/bin/apt-get");
  if (!isRoot || !hasApt) {
    console.log(
      `setup skipped (${
        !isRoot ? "not root" : "no apt-get"
      }): real-guest tests and peer benchmarks will skip`,
    );
    return;
  }
  step("setup: Debian packages and the VM lab");
  const lab = spawnSync("bash", [join(root, "lab", "setup.sh")], { stdio: "inherit" });
  if (lab.status !== 0) {
    console.log(`lab/setup.sh failed (exit ${lab.status}): real-guest tests will skip`);
  }
  const missing = ["nats-server", "redis-server", "chromium", "tmux"].filter(
    (p) => spawnSync("dpkg", ["-s", p], { stdio: "ignore" }).status !== 0,
  );
  if (missing.length) {
    const r = spawnSync("bash", [
      "-c",
      `apt-get install -y --no-install-recommends ${
        missing.join(" ")
      } || (apt-get update && apt-get install -y --no-install-recommends ${missing.join(" ")})`,
    ], {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
    if (r.status !== 0) {
      console.log(
        `could not install ${
          missing.join(", ")
        }: peer benchmarks and monitoring tests will skip (or fail, as root or in CI)`,
      );
    }
  }
  if (!existsSync("/usr/bin/promtool") && !existsSync(join(root, PROMTOOL))) {
    // `apt-get download` fetches the .deb without installing it (no prometheus user, no service).
    const dir = join(root, "lab", "build", "prometheus");
    const r = spawnSync("bash", [
      "-c",
      `set -e; mkdir -p "${dir}"; cd "${dir}"; rm -f prometheus_*.deb; apt-get download prometheus || (apt-get update && apt-get download prometheus); dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb usr/bin/prometheus`,
    ], { stdio: "inherit" });
    if (r.status !== 0) {
      console.log(
        "could not unpack promtool from Debian's prometheus package: the /metrics test will fail as root",
      );
    }
  }
}

/** Run a command, stream its output, and return it. */
function run(cmd, argv, env = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const onData = (stream) => (d) => {
      out += d;
      stream.write(d);
    };
    child.stdout.on("data", onData(process.stdout));
    child.stderr.on("data", onData(process.stderr));
    child.on("close", (code) => resolve({ code: code ?? 1, out }));
  });
}

// deno: "ok | 12 passed (3 steps) | 0 failed | 2 ignored (2s)"; ANSI colours stripped.
function denoCounts(out) {
  const clean = stripVTControlCharacters(out);
  const m = [
    ...clean.matchAll(
      /^(?:ok|FAILED) \| (\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed(?: \((\d+) steps?\))?(?: \| (\d+) ignored)?/gm,
    ),
  ].pop();
  if (!m) return null;
  return { passed: +m[1], failed: +m[3], skipped: +(m[5] ?? 0) };
}

// bun: " 40 pass", " 2 skip", " 0 fail".
function bunCounts(out) {
  const clean = stripVTControlCharacters(out);
  const num = (word) => {
    const m = [...clean.matchAll(new RegExp(`^\\s*(\\d+) ${word}$`, "gm"))].pop();
    return m ? +m[1] : 0;
  };
  if (!/Ran \d+ tests?/.test(clean)) return null;
  return { passed: num("pass"), failed: num("fail"), skipped: num("skip") + num("todo") };
}

// The failing tests' names, so the summary at the end says what failed without a search of
// the whole log. Deno lists them under " FAILURES " as "name => ./file:line"; Bun prints
// "(fail) name [ms]" under the file's own "tests/x_test.ts:" line.
function failedNames(out, runtime) {
  const clean = stripVTControlCharacters(out);
  if (runtime === "deno") {
    const at = clean.lastIndexOf(" FAILURES ");
    if (at < 0) return [];
    return [...clean.slice(at).matchAll(/^(.+ => \S+)$/gm)].map((m) => m[1]);
  }
  const names = [];
  let file = "";
  for (const line of clean.split("\n")) {
    const f = /^(tests\/\S+_test\.ts):$/.exec(line);
    if (f) file = f[1];
    const m = /^\(fail\) (.+?)(?: \[[\d.]+m?s\])?$/.exec(line);
    if (m) names.push(`${m[1]} (${file})`);
  }
  return names;
}

setup();
const files = only.length ? only : ["tests/"];
const env = { VBUS_LOG: process.env.VBUS_LOG ?? "warn" };
const totals = { passed: 0, failed: 0, skipped: 0 };
const lines = [];
function add(name, counts, code, failed = []) {
  if (!counts) {
    // A runner that crashed before its summary counts as one failure, never as a pass.
    counts = { passed: 0, failed: 1, skipped: 0 };
  } else if (code !== 0 && counts.failed === 0) {
    counts.failed = 1;
  }
  for (const k of Object.keys(totals)) totals[k] += counts[k];
  lines.push(
    `${name}: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`,
  );
  for (const f of failed) lines.push(`  failed: ${f}`);
}

step("deno test");
const deno = await run(bin("deno"), ["test", "-A", ...files], env);
add("deno", denoCounts(deno.out), deno.code, failedNames(deno.out, "deno"));

step("bun test");
const bun = await run(bin("bun"), ["test", "--timeout", "600000", ...files], env);
add("bun", bunCounts(bun.out), bun.code, failedNames(bun.out, "bun"));

if (!skipSoak) {
  // The chaos soak, short: broker kills, port drops and a hostile VM; fails on lost-unreported
  // messages, a growing broker RSS and the soak's other fatal checks (bench/README.md).
  step("chaos soak smoke (bun bench/soak.ts --quick)");
  const out = join(root, "bench", "results", "tmp", "soak-smoke");
  const soak = await run(
    bin("bun"),
    [join(root, "bench", "soak.ts"), "--quick", "--out", out],
    env,
  );
  let ok = soak.code === 0;
  if (ok && !existsSync(join(out, "latest.json"))) {
    ok = false;
    console.log("chaos soak: no latest.json written");
  }
  add("soak --quick", { passed: ok ? 1 : 0, failed: ok ? 0 : 1, skipped: 0 }, ok ? 0 : 1);
}

if (!skipBench) {
  step("benchmark smoke (npm run bench -- --quick)");
  const bench = await run(process.execPath, [
    join(root, "scripts", "bench.mjs"),
    "--quick",
    "--out",
    join(root, "bench", "results", "smoke"),
  ]);
  let ok = bench.code === 0;
  if (ok) {
    const { readFileSync } = await import("node:fs");
    try {
      const json = JSON.parse(
        readFileSync(join(root, "bench", "results", "smoke", "latest.json"), "utf8"),
      );
      ok = Array.isArray(json.runs) && json.runs.length > 0;
      if (!ok) console.log("benchmark smoke: latest.json has no runs");
    } catch (err) {
      ok = false;
      console.log(`benchmark smoke: latest.json unreadable: ${err.message}`);
    }
  }
  add("bench --quick", { passed: ok ? 1 : 0, failed: ok ? 0 : 1, skipped: 0 }, ok ? 0 : 1);
}

step("summary");
for (const l of lines) console.log(l);
console.log(`${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
process.exit(totals.failed > 0 ? 1 : 0);

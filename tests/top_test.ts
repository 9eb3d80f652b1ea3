/**
 * `vbus top` in a real terminal: tmux (on a private server socket) runs the CLI under the
 * test's runtime against a broker with simulated VMs streaming; the test reads the screen with
 * capture-pane (VMs, host clients, rates that are not zero and counters that change, a hostile
 * client name without its escape sequences), presses `q` with send-keys, and checks that top
 * exited 0 and gave the terminal its normal screen back. Also `vbus top` with stdout not a
 * terminal (one screen, exit 0) and a bad --interval (usage, exit 2).
 *
 * Without tmux the terminal test skips and says why, unless run as root or under CI=true: then
 * it fails (npm test installs tmux as root).
 * @module
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { main } from "../src/cli/main.ts";
import { delay } from "./helpers.ts";
import { requireTool, startStreamingLab } from "./fixtures/monitor_lab.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "src/cli/main.ts");
const IS_DENO = "Deno" in globalThis;
const RUNTIME = join(ROOT, "node_modules/.bin", IS_DENO ? "deno" : "bun");
const RUN = IS_DENO ? [RUNTIME, "run", "-A", "--quiet", CLI] : [RUNTIME, CLI];
/** A client name with a terminal escape sequence (clear screen) and an OSC title change. */
const HOSTILE_NAME = "evil\x1b[2J\x1b]0;pwned\x07";

/** The vm's row of a top screen: its "IN msg/s" number, or NaN. */
function inRate(screen: string, vm: string): number {
  const line = screen.split("\n").find((l) => new RegExp(`^[●○] ${vm}\\s`).test(l));
  if (!line) return NaN;
  const cells = line.slice(29).trim().split(/\s+/); // after the NAME column: PATH SUBS IN ...
  const m = /^([\d.]+)([kMG]?)$/.exec(cells[2] ?? "");
  return m
    ? Number(m[1]) * ({ "": 1, k: 1e3, M: 1e6, G: 1e9 } as Record<string, number>)[m[2]]
    : NaN;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

test("vbus top in tmux: VMs, host clients and changing rates, refreshed in place; q exits 0 and restores the screen", async (t) => {
  const tmuxBin = requireTool(
    t,
    "tmux",
    ["/usr/bin/tmux", "/usr/local/bin/tmux"],
    "apt-get install tmux",
  );
  if (!tmuxBin) return;
  const lab = await startStreamingLab({ hostileName: HOSTILE_NAME });
  const sock = join(lab.dir, "tmux.sock");
  const tmux = (...args: string[]) => {
    const r = spawnSync(tmuxBin, ["-S", sock, "-f", "/dev/null", ...args], {
      encoding: "utf8",
      timeout: 5000,
    });
    return { code: r.status, out: r.stdout ?? "", err: r.stderr ?? "" };
  };
  const screen = () => tmux("capture-pane", "-p", "-t", "top").out;
  /** Poll the screen until `ok(screen)`, at most `ms`. */
  const waitScreen = async (ok: (s: string) => boolean, what: string, ms = 15_000) => {
    const deadline = Date.now() + ms;
    let s = "";
    while (Date.now() < deadline) {
      s = screen();
      if (ok(s)) return s;
      await delay(100);
    }
    throw new Error(`timed out waiting for ${what}; the screen:\n${s}`);
  };
  try {
    const command = [...RUN, "top", "--server", lab.listen, "--interval", "250"].map(shellQuote)
      .join(" ");
    // The shell reports top's exit status on the terminal's normal screen once top is gone.
    const started = tmux(
      "new-session",
      "-d",
      "-s",
      "top",
      "-x",
      "140",
      "-y",
      "30",
      `env VBUS_LOG=warn TERM=xterm-256color ${command}; echo "vbus top exited $?"; sleep 60`,
    );
    assert.equal(started.code, 0, `tmux new-session: ${started.err}`);
    const first = await waitScreen(
      (s) => inRate(s, "vm1") > 0 && inRate(s, "vm2") > 0 && /evil/.test(s),
      "top showing both VMs with rates",
    );
    assert.match(
      first,
      /^vbus top · broker up \d+s · VMs 2\/2 connected · host clients 4 · every 0\.25s · q quits/m,
    );
    assert.match(first, /NAME +PATH +SUBS +IN msg\/s +OUT msg\/s/);
    assert.match(first, /^● vm1 +stream /m);
    assert.match(first, /^● vm2 +ring /m);
    assert.match(first, /^● host \(4\) /m);
    assert.match(first, /^ {2}host#\S+ collector +ring /m);
    assert.match(first, /^ {2}host#\S+ archiver +stream /m);
    assert.match(first, /^ {2}host#\S+ \(this top\) +stream /m);
    assert.match(first, /drops: vm2 too_large 1/);
    // The hostile name's escape sequences are shown as "?", not sent to the terminal.
    assert.match(first, /evil\?\[2J\?\]0/);
    // Refreshed in place: the same screen layout with counters that move.
    const published = lab.published.vm1;
    const later = await waitScreen(
      (s) => s !== first && inRate(s, "vm1") > 0 && /broker up \d+s/.test(s),
      "the screen to change",
      5000,
    );
    assert.ok(lab.published.vm1 > published, "vm1 kept streaming");
    assert.equal(
      later.split("\n").filter((l) => l.startsWith("NAME ")).length,
      1,
      "redrawn in place, not appended",
    );
    const rows = (s: string) =>
      s.split("\n").filter((l) => /^[●○] /.test(l)).map((l) => l.slice(0, 12));
    assert.deepEqual(rows(later), rows(first));
    tmux("send-keys", "-t", "top", "q");
    const after = await waitScreen((s) => /vbus top exited \d+/.test(s), "top to exit", 10_000);
    assert.match(after, /vbus top exited 0/, "top exited with status 0 after q");
    assert.doesNotMatch(after, /NAME +PATH/, "the alternate screen was left: the table is gone");
  } finally {
    tmux("kill-server");
    await lab.close();
  }
});

test("vbus top with stdout not a terminal prints one screen and exits 0; a bad --interval is a usage error", async () => {
  const lab = await startStreamingLab();
  try {
    const child = spawn(RUN[0], [
      ...RUN.slice(1),
      "top",
      "--server",
      lab.listen,
      "--interval",
      "300",
    ], {
      env: { ...process.env, VBUS_LOG: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "", err = "";
    child.stdout.on("data", (d) => out += d);
    child.stderr.on("data", (d) => err += d);
    const code = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`vbus top | cat did not exit within 20 s:\n${out}\n${err}`));
      }, 20_000);
      child.on("close", (c) => {
        clearTimeout(timer);
        resolve(c ?? -1);
      });
    });
    assert.equal(code, 0, err);
    assert.equal(out.includes("\u001b"), false, "no escape sequences when not a terminal");
    assert.match(
      out,
      /^vbus top · broker up \d+s · VMs 2\/2 connected · host clients 3 · every 0\.3s\n/,
    );
    assert.ok(inRate(out, "vm1") > 0, `vm1's rate in:\n${out}`);
    assert.ok(inRate(out, "vm2") > 0, `vm2's rate in:\n${out}`);
    const stderr: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => (stderr.push(String(chunk)), true)) as typeof write;
    try {
      assert.equal(await main(["top", "--interval", "0"]), 2);
    } finally {
      process.stderr.write = write;
    }
    assert.match(stderr.join(""), /--interval must be a positive integer, got "0"/);
  } finally {
    await lab.close();
  }
});

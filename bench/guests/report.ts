/**
 * The report of the in-guest comparison (bench/guests.ts): `guests.json` (every row and the
 * run's context), `guests.md` (summary tables by system, ratios, CPU per million messages, the
 * efficiency/security table, every row in detail) and `guests.svg` (throughput by system and
 * size, log scale, labelled with the accelerator; drawn by bench/lib/svg.ts).
 *
 * @example
 * ```ts
 * import { writeGuestReport } from "./bench/guests/report.ts";
 * const files = writeGuestReport({ outDir: "bench/results", rows, ... });
 * ```
 * @module
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join, relative } from "node:path";
import { PROJECT_ROOT } from "../../lab/vm.ts";
import { FORWARD_ADDR, GUEST_ADDR } from "../../lab/net.ts";
import { fmtNum, fmtSize, si } from "../lib/stats.ts";
import { barChart } from "../lib/svg.ts";
import type { GuestSystem, Kind, Row } from "./cases.ts";

/** Everything the report needs from the run. */
export interface GuestReportInput {
  outDir: string;
  rows: Row[];
  problems: string[];
  /** system -> why it did not run. */
  notRun: Record<string, string>;
  systems: GuestSystem[];
  startedAt: string;
  tookS: number;
  argv: string[];
  runtime: string;
  accel: { accelerator: "kvm" | "tcg"; reason: string };
  lab: { qemu: string; kernel: string };
  loadBefore: number[];
  boot: Record<string, unknown>;
  guestRuntime: string;
  settings: Record<string, unknown> & { sizes: number[]; rrSizes: number[] };
  servers: Record<string, string>;
}

/** What each system is, in one line. */
export const SYSTEM_INFO: Record<GuestSystem, string> = {
  "vbus-ring":
    "vbus, shared-memory rings (ivshmem) + doorbells over the virtio-serial port; `vbus broker`",
  "vbus-port": "vbus, every frame over the virtio-serial port (no shared memory); `vbus broker`",
  nats:
    `NATS over virtio-net: @nats-io/transport-node in the guest -> ${FORWARD_ADDR}:4222 (QEMU guestfwd) -> Debian nats-server on 127.0.0.1`,
  tcp:
    `raw TCP over virtio-net: node:net, u32-LE length frames, batched writes -> ${FORWARD_ADDR}:50xx (guestfwd) -> bench/systems/_relay.ts on 127.0.0.1`,
  vsock:
    "raw frames over AF_VSOCK (virtio-vsock, vhost on the host) -> bench/guests/vsock_relay.ts (Deno) on the host",
};

/** Efficiency and security of each system, as built here (the README repeats it). */
export const SECURITY_TABLE: string[] = [
  "| system | what a guest needs | what identity the receiver gets | open in the guest |",
  "|---|---|---|---|",
  "| vbus (rings or port) | one virtio-serial port (+ an ivshmem BAR for rings); no NIC, no IP stack, no address, no secret | the VM's name, from the port the frame arrived on: set by the host's QEMU config, not by anything the guest sends | nothing listens; the guest can only write to its own port, which only the broker reads |",
  `| NATS over virtio-net | a NIC, the kernel's TCP/IP stack, an address and a route (here ${GUEST_ADDR}/24), the NATS client | a source IP:port. On a shared bridge a guest can send with another guest's IP unless the host filters (ebtables/nwfilter); behind QEMU's user network every guest arrives from 127.0.0.1 (QEMU makes the connection). A real identity needs NATS credentials (user/nkey/TLS): a secret in every guest | the guest's whole TCP/IP stack faces the network; any socket a guest process opens is reachable by the other guests on a bridge (here: only via an explicit hostfwd) |`,
  "| raw TCP over virtio-net | the same NIC, stack, address and route | the source IP:port only (no protocol-level identity at all) | as NATS |",
  "| vsock | a virtio-vsock device and the AF_VSOCK transport; no IP stack | the guest CID, set by the host (vhost fills in the source CID) | any vsock listener in the guest is reachable from the host (guest-to-guest vsock is not routed by default) |",
];

const THROUGHPUT: Kind[] = ["g2g", "g2h"];
const RR: Kind[] = ["rr-g2h", "rr-g2g"];
const SHAPE_NAME: Record<string, string> = {
  g2g: "guest → middle → guest",
  g2h: "guest → middle → host",
  "rr-g2h": "guest asks host (round trip)",
  "rr-g2g": "guest asks guest (round trip)",
};
/** The host process each system's middle is (its CPU key in Row.cpuS). */
const SERVER_KEY: Record<GuestSystem, string> = {
  "vbus-ring": "broker",
  "vbus-port": "broker",
  nats: "nats",
  tcp: "relay",
  vsock: "relay",
};
const isNet = (s: GuestSystem) => !s.startsWith("vbus");

function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 20_000 });
  return (r.stdout ?? "").split("\n")[0].trim() || "?";
}

/** Which code was measured: the checkout's commit, and uncommitted changes to what runs. */
function sourceInfo(): { commit: string; dirty: string[] } {
  const git = (args: string[]) =>
    spawnSync("git", ["-C", PROJECT_ROOT, ...args], { encoding: "utf8", timeout: 20_000 });
  const head = git(["rev-parse", "--short", "HEAD"]);
  if (head.status !== 0) return { commit: "unknown (not a git checkout)", dirty: [] };
  const st = git([
    "status",
    "--porcelain",
    "--",
    "src",
    "mod.ts",
    "ffi",
    "lab",
    "bench/guests.ts",
    "bench/guests",
    "bench/lib",
    "bench/systems",
  ]);
  return {
    commit: head.stdout.trim(),
    dirty: (st.stdout ?? "").split("\n").filter((l) => l.trim()).map((l) => l.slice(3)),
  };
}

const find = (rows: Row[], system: GuestSystem, kind: Kind, size: number) =>
  rows.find((r) => r.system === system && r.kind === kind && r.size === size && r.ok);

/** CPU seconds per million messages (or round trips) of one process key. */
function perMillion(r: Row, secs: number | undefined): string {
  const n = r.latencyUs ? r.sent! - (r.timeouts ?? 0) : r.delivered!;
  return secs === undefined || !n ? "–" : fmtNum((secs / n) * 1e6);
}

/**
 * Write guests.json, guests.md and guests.svg into `outDir`; returns the paths written.
 *
 * @example
 * ```ts
 * writeGuestReport(input); // ["bench/results/guests.json", ".../guests.md", ".../guests.svg"]
 * ```
 */
export function writeGuestReport(inp: GuestReportInput): string[] {
  const { rows, accel } = inp;
  const acc = accel.accelerator.toUpperCase();
  const source = sourceInfo();
  const command = `node_modules/.bin/${inp.runtime}${
    inp.runtime === "deno" ? " run -A" : ""
  } bench/guests.ts${inp.argv.length ? " " + inp.argv.join(" ") : ""}`;
  const hostRuntime = inp.runtime === "deno"
    ? `deno ${(globalThis as unknown as { Deno: { version: { deno: string } } }).Deno.version.deno}`
    : `bun ${process.versions.bun}`;
  const machine = {
    cpuModel: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    kernel: release(),
    loadavgBefore: inp.loadBefore.map((x) => +x.toFixed(2)),
    loadavgAfter: loadavg().map((x) => +x.toFixed(2)),
    qemu: firstLine(inp.lab.qemu, ["--version"]),
    guestKernel: inp.lab.kernel,
    guestMemory: "256M",
    accelerator: accel.accelerator,
    acceleratorReason: accel.reason,
    hostRuntime,
    guestRuntime: inp.guestRuntime,
    servers: inp.servers,
  };
  const TCG_NOTE = accel.accelerator === "tcg"
    ? "**Accelerator: TCG** (QEMU's software CPU emulation; KVM was not usable here: " +
      accel.reason +
      "). Everything inside the guests — the JavaScript runtime, the clients, the guest kernel's TCP/IP stack, " +
      "the virtio drivers — runs emulated, several times slower than on KVM, while the host side (QEMU's device " +
      "models and user network, the broker, nats-server, the relay) runs natively. These numbers are NOT " +
      "comparable to KVM numbers, nor to the host-only benchmark; compare systems within this file only."
    : "**Accelerator: KVM** (" + accel.reason + ").";

  mkdirSync(inp.outDir, { recursive: true });
  const jsonPath = join(inp.outDir, "guests.json");
  writeFileSync(
    jsonPath,
    JSON.stringify(
      {
        schema: "vbus-bench-guests/2",
        source,
        startedAt: inp.startedAt,
        finishedAt: new Date().toISOString(),
        tookS: +inp.tookS.toFixed(1),
        command,
        accelerator: accel.accelerator,
        note: TCG_NOTE.replace(/\*\*/g, ""),
        machine,
        settings: inp.settings,
        systems: Object.fromEntries(
          inp.systems.map((s) => [s, { describe: SYSTEM_INFO[s], notRun: inp.notRun[s] ?? null }]),
        ),
        boot: inp.boot,
        rows,
        problems: inp.problems,
      },
      (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v),
      2,
    ) + "\n",
  );

  const ran = inp.systems.filter((s) => !inp.notRun[s]);
  const md: string[] = [];
  md.push(`# vbus against TCP/IP in real guests (${acc})`, "");
  md.push(
    `Started ${inp.startedAt}, took ${
      fmtNum(inp.tookS)
    } s. Command: \`${command}\`. Raw data: \`guests.json\`; ` +
      "chart: `guests.svg`. Method: the header of `bench/guests.ts`.",
    "",
    TCG_NOTE,
    "",
  );
  md.push("## Machine", "", "| item | value |", "|---|---|");
  const mrow = (k: string, v: unknown) => md.push(`| ${k} | ${String(v).replace(/\|/g, "\\|")} |`);
  mrow("accelerator", `${acc} (${accel.reason})`);
  mrow(
    "code measured",
    `${relative(process.cwd(), PROJECT_ROOT) || "."} at ${source.commit}${
      source.dirty.length
        ? ` **with uncommitted changes** in ${source.dirty.join(", ")}`
        : ", clean"
    }`,
  );
  mrow("CPU", `${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB`);
  mrow("host kernel", machine.kernel);
  mrow(
    "QEMU",
    `${machine.qemu}; guests: 256M RAM, 1 vCPU, ivshmem 16 MiB, virtio-net on QEMU user networking (restrict=on), guest kernel ${machine.guestKernel}`,
  );
  mrow(
    "runtimes",
    `host clients + broker + relay: ${hostRuntime}; guests: ${machine.guestRuntime}`,
  );
  for (const [k, v] of Object.entries(inp.servers)) mrow(`${k} server`, v);
  mrow(
    "load average before / after",
    `${machine.loadavgBefore.join(" ")} / ${machine.loadavgAfter.join(" ")}`,
  );
  mrow(
    "boot",
    `vm1 ${inp.boot.vm1BootMs ?? "?"} ms, vm2 ${
      inp.boot.vm2BootMs ?? "?"
    } ms to script start; agents answering after ${inp.boot.agentsAnsweringMs ?? "?"} ms`,
  );
  mrow("settings", JSON.stringify(inp.settings));
  md.push("");

  md.push("## Systems", "", "| system | what | ran |", "|---|---|---|");
  for (const s of inp.systems) {
    md.push(`| ${s} | ${SYSTEM_INFO[s]} | ${inp.notRun[s] ? `**no**: ${inp.notRun[s]}` : "yes"} |`);
  }
  md.push("");

  // ---- summary: throughput
  md.push("## Throughput (messages/s delivered; MB/s in brackets)", "");
  md.push(`| shape | payload | ${ran.join(" | ")} |`, `|---|---|${ran.map(() => "---|").join("")}`);
  for (const kind of THROUGHPUT) {
    for (const size of inp.settings.sizes) {
      const cells = ran.map((s) => {
        const r = find(rows, s, kind, size);
        return r
          ? `${si(r.msgsPerSec!)} (${fmtNum(r.bytesPerSec! / 1e6)})${
            r.lost ? ` ⚠ ${r.lost} lost` : ""
          }`
          : "–";
      });
      md.push(`| ${SHAPE_NAME[kind]} | ${fmtSize(size)} | ${cells.join(" | ")} |`);
    }
  }
  md.push("", "## Round trips (µs, p50 / p99; one request in flight)", "");
  md.push(`| shape | payload | ${ran.join(" | ")} |`, `|---|---|${ran.map(() => "---|").join("")}`);
  for (const kind of RR) {
    for (const size of inp.settings.rrSizes) {
      const cells = ran.map((s) => {
        const l = find(rows, s, kind, size)?.latencyUs;
        return l ? `${fmtNum(l.p50)} / ${fmtNum(l.p99)}` : "–";
      });
      md.push(`| ${SHAPE_NAME[kind]} | ${fmtSize(size)} | ${cells.join(" | ")} |`);
    }
  }

  // ---- ratios vbus vs the best TCP/IP system of the same case
  const net = ran.filter(isNet);
  const vb = ran.filter((s) => !isNet(s));
  if (net.length && vb.length) {
    md.push(
      "",
      "## vbus ÷ the best TCP/IP system (same run)",
      "",
      "Throughput: vbus msg/s ÷ the best of " + net.join(", ") +
        "; round trips: the best TCP/IP p50 ÷ vbus p50. " +
        "Above 1 = vbus is better, below 1 = vbus loses. One run each: on a shared 2-core machine a single ratio can move by tens of percent.",
      "",
    );
    md.push(
      `| shape | payload | best TCP/IP | ${vb.map((s) => `${s} ÷ best`).join(" | ")} |`,
      `|---|---|---|${vb.map(() => "---|").join("")}`,
    );
    for (const kind of [...THROUGHPUT, ...RR]) {
      for (const size of RR.includes(kind) ? inp.settings.rrSizes : inp.settings.sizes) {
        const rr = RR.includes(kind);
        const score = (
          r: Row | undefined,
        ) => (r ? (rr ? r.latencyUs!.p50 : r.msgsPerSec!) : undefined);
        const nets = net.map((s) => [s, score(find(rows, s, kind, size))] as const).filter((
          [, v],
        ) => v !== undefined);
        if (!nets.length) continue;
        const best = nets.reduce((
          a,
          b,
        ) => (rr ? (b[1]! < a[1]! ? b : a) : (b[1]! > a[1]! ? b : a)));
        const cells = vb.map((s) => {
          const v = score(find(rows, s, kind, size));
          return v === undefined ? "–" : fmtNum(rr ? best[1]! / v : v / best[1]!);
        });
        md.push(`| ${SHAPE_NAME[kind]} | ${fmtSize(size)} | ${best[0]} | ${cells.join(" | ")} |`);
      }
    }
  }

  // ---- CPU per million messages
  md.push(
    "",
    "## CPU seconds per million messages (round trips for request/reply)",
    "",
    "Guest = the agent process inside each guest (`process.cpuUsage`, user + system: the runtime, the client and " +
      "its system calls; not the guest kernel's interrupt/softirq work done outside it). QEMU = each guest's QEMU " +
      "process from the host (`/proc/PID/stat`: vCPU thread, device models, the user network), so under TCG it " +
      "includes the emulated guest. Server = the system's middle process (vbus broker, nats-server, relay). Host = " +
      "the benchmark process (host clients). /proc counts 10 ms ticks: short cases are coarse. Under TCG " +
      "on a busy host the guest's own figure can exceed its QEMU's: the guest's clock is the host's wall " +
      "clock, and time its vCPU thread spends descheduled is charged to whatever the guest was running " +
      "(TCG reports no steal time), so read the guest columns as an upper bound.",
    "",
  );
  md.push(
    "| system | shape | payload | guest vm1 | guest vm2 | QEMU vm1 | QEMU vm2 | server | host |",
    "|---|---|---|---|---|---|---|---|---|",
  );
  for (const s of ran) {
    for (
      const r of rows.filter((r) =>
        r.system === s && r.ok && (THROUGHPUT.includes(r.kind) || RR.includes(r.kind))
      )
    ) {
      const c = r.cpuS ?? {};
      const g = r.guestCpuS ?? {};
      md.push(
        `| ${s} | ${SHAPE_NAME[r.kind]} | ${fmtSize(r.size)} | ${perMillion(r, g.vm1)} | ${
          perMillion(r, g.vm2)
        } | ${perMillion(r, c.vm1)} | ${perMillion(r, c.vm2)} | ${
          perMillion(r, c[SERVER_KEY[s]])
        } | ${perMillion(r, c.host)} |`,
      );
    }
  }

  md.push("", "## Efficiency and security", "", ...SECURITY_TABLE, "");
  md.push(
    "The TCP/IP systems here ride QEMU's user network with `restrict=on` (lab/net.ts): the guest reaches only the " +
      `forwards (${FORWARD_ADDR}:PORT -> host 127.0.0.1:PORT), so each guest's connections are QEMU's connections ` +
      "from 127.0.0.1 on the host side, and a guestfwd rule carries one connection per boot (the benchmark gives each " +
      "raw TCP connection its own forwarded port). A tap device on a bridge (and vhost-net under KVM) is the usual " +
      "production setup; under TCG the dominant cost is the emulated guest (its kernel's TCP/IP stack and the " +
      "runtime), which is the same with either backend.",
    "",
  );

  // ---- every row
  md.push(
    "## Every case",
    "",
    "| id | flow | payload | ok | sent | delivered | msg/s | MB/s | p50 / p99 µs | timeouts | host CPU s (vm1/vm2/server/host) | guest CPU s (vm1/vm2) | load | check |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  );
  for (const r of rows) {
    const c = r.cpuS;
    const g = r.guestCpuS;
    const bells = r.doorbells
      ? `; doorbells ${
        Object.entries(r.doorbells).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(
          ", ",
        ) || "none"
      }`
      : "";
    md.push(
      `| ${r.id} | ${r.flow} | ${r.kind === "rr-g2b" ? "–" : fmtSize(r.size)} | ${
        r.skipped ? "skipped" : r.ok ? "✓" : "✗"
      } | ${r.sent ?? "–"} | ${r.delivered ?? "–"} | ${r.ok ? si(r.msgsPerSec!) : "–"} | ${
        r.ok && r.bytesPerSec !== undefined ? fmtNum(r.bytesPerSec / 1e6) : "–"
      } | ${r.latencyUs ? `${fmtNum(r.latencyUs.p50)} / ${fmtNum(r.latencyUs.p99)}` : "–"} | ${
        r.timeouts ?? "–"
      } | ${
        c
          ? ["vm1", "vm2", SERVER_KEY[r.system], "host"].map((k) => c[k]?.toFixed(2) ?? "?").join(
            " / ",
          )
          : "–"
      } | ${g ? `${g.vm1} / ${g.vm2}` : "–"} | ${fmtNum(r.loadavg1)} | ${
        r.error
          ? `failed: ${r.error}`
          : r.check
          ? `${r.check.ok ? "✓" : "✗"} ${r.check.detail}${bells}`
          : ""
      } |`,
    );
  }
  const allProblems = [
    ...inp.problems,
    ...rows.filter((r) => r.error && !r.skipped).map((r) => `${r.id}: ${r.error}`),
    ...rows.filter((r) => r.check && !r.check.ok).map((r) => `${r.id}: ${r.check!.detail}`),
    ...rows.filter((r) => (r.timeouts ?? 0) > 0).map((r) =>
      `${r.id}: ${r.timeouts} request(s) without a reply within 2 s`
    ),
  ];
  md.push(
    "",
    "## Problems",
    "",
    ...(allProblems.length ? allProblems.map((p) => `- ${p}`) : ["None."]),
    "",
  );
  const mdPath = join(inp.outDir, "guests.md");
  writeFileSync(mdPath, md.join("\n"));

  // ---- chart
  const groups: string[] = [];
  const values: (number | null)[][] = [];
  for (const kind of THROUGHPUT) {
    for (const size of inp.settings.sizes) {
      groups.push(`${kind === "g2g" ? "guest→guest" : "guest→host"} ${fmtSize(size)}`);
      values.push(ran.map((s) => find(rows, s, kind, size)?.msgsPerSec ?? null));
    }
  }
  const svgPath = join(inp.outDir, "guests.svg");
  writeFileSync(
    svgPath,
    barChart(
      `In real guests, ${acc}${
        accel.accelerator === "tcg" ? " (software CPU: not comparable to KVM)" : ""
      }: throughput`,
      "messages/s",
      groups,
      ran,
      values,
    ),
  );
  return [jsonPath, mdPath, svgPath];
}

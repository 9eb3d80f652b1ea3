// The lab's confined guest network (lab/net.ts) and the TCP/IP systems of the in-guest benchmark
// (bench/guests.ts, issue 12), so neither can rot:
// - the flags: restrict=on, every forward on host 127.0.0.1, bad ports and foreign network flags
//   refused (no guest);
// - the vsock system's relay, over its TCP self-test transport (no guest, no vsock needed);
// - one real guest with the NIC: NATS (official client -> nats-server on the host) and raw TCP
//   (framing + relay) for a few messages each way, a hostfwd into the guest, and the confinement
//   proven from inside: the gateway (where a host listener and nats-server really listen on
//   127.0.0.1), an unforwarded port, an outside address and slirp's DNS are all unreachable;
// - `bench/guests.ts --quick --systems nats,tcp` end to end (two guests, every case delivered).
// Without QEMU or nats-server the guest tests skip and say why; under CI=true they fail instead.
// Runs under `deno test -A` and `bun test --timeout 600000`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { connect as netConnect, createServer, type Server } from "node:net";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  bootGuest,
  detectAccelerator,
  ensureLab,
  LabUnavailableError,
  PROJECT_ROOT,
} from "../lab/vm.ts";
import {
  FORWARD_ADDR,
  GATEWAY_ADDR,
  networkArgs,
  refuseForeignNetwork,
  vsockArgs,
} from "../lab/net.ts";
import { startNetServers } from "../bench/guests/servers.ts";
import { closeNats, openNet } from "../bench/guests/net_clients.ts";
import { freePort, waitForPort } from "../bench/lib/proc.ts";

const IN_CI = process.env.CI === "true";
const RUNTIME = "Deno" in globalThis ? "deno" : "bun";
const BIN = (rt: string) => join(PROJECT_ROOT, "node_modules", ".bin", rt);
const BOOT_TIMEOUT_MS = 120_000;

function skipOrFail(why: string): string {
  if (IN_CI) throw new Error(`CI=true, but ${why}: the guest network tests must run in CI`);
  console.log(`SKIP vm net tests: ${why}`);
  return why;
}

let skipGuest: string | false = false;
try {
  ensureLab();
  const a = await detectAccelerator();
  console.log(`lab accelerator: ${a.accelerator} (${a.reason})`);
} catch (err) {
  if (!(err instanceof LabUnavailableError)) throw err;
  skipGuest = skipOrFail(`micro-VM lab unavailable: ${err.message}`);
}
if (!skipGuest && spawnSync("nats-server", ["--version"]).status !== 0) {
  skipGuest = skipOrFail("nats-server not found (apt-get install -y nats-server)");
}

test("lab/net: restricted user network, forwards only to host 127.0.0.1, bad input refused", () => {
  const a = networkArgs({
    guestForwards: [{ guestPort: 4222, hostPort: 40001 }],
    hostForwards: [{ hostPort: 40002, guestPort: 7000 }],
  });
  assert.equal(a[0], "-netdev");
  const opts = a[1].split(",");
  assert.equal(opts[0], "user");
  assert.ok(opts.includes("restrict=on"), a[1]);
  assert.ok(opts.includes("ipv6=off"), a[1]);
  assert.ok(opts.includes(`guestfwd=tcp:${FORWARD_ADDR}:4222-tcp:127.0.0.1:40001`), a[1]);
  assert.ok(opts.includes("hostfwd=tcp:127.0.0.1:40002-10.0.2.15:7000"), a[1]);
  // every forward ends on host loopback
  for (const o of opts.filter((o) => o.includes("fwd="))) assert.match(o, /127\.0\.0\.1/);
  assert.deepEqual(a.slice(2), ["-device", "virtio-net-pci,netdev=vbusnet0,romfile="]);
  assert.throws(() => networkArgs({ guestForwards: [{ guestPort: 0, hostPort: 1 }] }), /1-65535/);
  assert.throws(
    () => networkArgs({ hostForwards: [{ hostPort: 70000, guestPort: 1 }] }),
    /1-65535/,
  );
  assert.throws(
    () =>
      networkArgs({
        guestForwards: [{ guestPort: 5, hostPort: 1 }, { guestPort: 5, hostPort: 2 }],
      }),
    /twice/,
  );
  for (
    const bad of [["-netdev", "user,id=x"], ["-nic", "user"], ["-net", "nic"], [
      "-device",
      "e1000,netdev=x",
    ]]
  ) {
    assert.throws(() => refuseForeignNetwork(bad), /network option/, bad.join(" "));
  }
  refuseForeignNetwork(["-device", "virtio-serial-pci,id=s", "-chardev", "socket,id=c,path=/x"]);
  assert.deepEqual(vsockArgs(3), ["-device", "vhost-vsock-pci,guest-cid=3"]);
  assert.throws(() => vsockArgs(2), /CID/);
});

test("vsock system's relay forwards frames like the raw relay (TCP self-test transport)", {
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  const relay = spawn(BIN("deno"), [
    "run",
    "-A",
    "bench/guests/vsock_relay.ts",
    "tcp",
    String(port),
  ], {
    cwd: PROJECT_ROOT,
    stdio: ["ignore", "ignore", "pipe"],
  });
  try {
    await waitForPort(port, 30_000);
    const ep = { host: "127.0.0.1", port };
    const got: number[] = [];
    const sub = await openNet("tcp", ep, { sub: "t", onMessage: (p) => got.push(p.length) });
    const rep = await openNet("tcp", ep, { sub: "r", pub: "r.rep", echo: true });
    const pub = await openNet("tcp", ep, { pub: "t" });
    const sizes = [0, 1, 64, 1024, 65536, 300_000];
    for (const n of sizes) pub.publish(new Uint8Array(n).fill(n & 0xff));
    await pub.close();
    const req = await openNet("tcp", ep, { pub: "r", sub: "r.rep" });
    const answer = await req.request(new Uint8Array(70_000).fill(9), 5000);
    assert.equal(answer.length, 70_000);
    assert.equal(answer[69_999], 9);
    for (let i = 0; i < 100 && got.length < sizes.length; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(got, sizes);
    for (const c of [sub, rep, req]) await c.close();
  } finally {
    relay.kill();
  }
});

/** A host listener that counts connections (the guest must never reach it). */
function countingListener(): Promise<{ server: Server; port: number; connections: () => number }> {
  let n = 0;
  const server = createServer((c) => {
    n++;
    c.destroy();
  });
  return new Promise((res) =>
    server.listen(
      0,
      "127.0.0.1",
      () =>
        res({ server, port: (server.address() as { port: number }).port, connections: () => n }),
    )
  );
}

/** Poll host 127.0.0.1:port (a hostfwd) until the guest's listener answers. */
async function askGuest(port: number, deadline: number): Promise<string> {
  for (let i = 0; Date.now() < deadline && i < 500; i++) {
    const r = await new Promise<string>((res) => {
      const s = netConnect({ host: "127.0.0.1", port });
      let got = "";
      const t = setTimeout(() => {
        s.destroy();
        res("");
      }, 2000);
      s.on("connect", () => s.write("hi"));
      s.on("data", (d) => (got += d));
      s.on("close", () => {
        clearTimeout(t);
        res(got);
      });
      s.on("error", () => {});
    });
    if (r) return r;
    await new Promise((r) => setTimeout(r, 300));
  }
  return "";
}

test(
  "a guest on the confined NIC: NATS and raw TCP both ways, hostfwd in, nothing else reachable",
  {
    skip: skipGuest,
    timeout: BOOT_TIMEOUT_MS + 30_000,
  },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "vbus-nettest-"));
    const servers = await startNetServers({
      runtime: RUNTIME,
      dir,
      want: ["nats", "tcp"],
      log: () => {},
    });
    const trap = await countingListener();
    try {
      assert.deepEqual(servers.problems, {});
      const nats = servers.nats!;
      const relay = servers.tcp!;
      // Host side: a NATS subscriber and responder, a relay subscriber and an echo replier.
      const hostNats = { host: "127.0.0.1", port: nats.port };
      const hostRelay = { host: "127.0.0.1", port: relay.port };
      let natsGot = 0;
      let tcpGot = 0;
      const nSub = await openNet("nats", hostNats, {
        sub: "probe.g2h",
        onMessage: () => natsGot++,
      });
      const nRep = await openNet("nats", hostNats, { sub: "probe.hecho", echo: true });
      const tSub = await openNet("tcp", hostRelay, { sub: "probe.tcp", onMessage: () => tcpGot++ });
      const tRep = await openNet("tcp", hostRelay, {
        sub: "probe.rr",
        pub: "probe.rr.rep",
        echo: true,
      });
      const unforwarded = await freePort();
      const hostFwdPort = await freePort();
      const mustFail = [
        `${GATEWAY_ADDR}:${trap.port}`, // a host listener on 127.0.0.1: slirp's gateway would reach it
        `${GATEWAY_ADDR}:${nats.port}`, // the real nats-server, but not through its forward
        `${FORWARD_ADDR}:${unforwarded}`, // the forward address, a port without a rule
        "192.0.2.1:80", // outside (TEST-NET-1: never a real host)
      ];
      const COUNT = 200;
      const guest = await bootGuest({
        name: "vm-net",
        deviceArgs: [],
        network: {
          guestForwards: [
            { guestPort: 4222, hostPort: nats.port },
            { guestPort: 5000, hostPort: relay.port },
            { guestPort: 5001, hostPort: relay.port },
          ],
          hostForwards: [{ hostPort: hostFwdPort, guestPort: 7000 }],
        },
        script: `exec ./node_modules/.bin/bun bench/guests/net_probe.ts`,
        env: {
          NATS_PORT: "4222",
          TCP_PUB_PORT: "5000",
          TCP_RR_PORT: "5001",
          COUNT: String(COUNT),
          RR: "5",
          MUST_FAIL: mustFail.join(","),
          LISTEN_PORT: "7000",
          LINGER_MS: "4000",
        },
        timeoutMs: BOOT_TIMEOUT_MS,
      });
      const fromGuest = askGuest(hostFwdPort, Date.now() + BOOT_TIMEOUT_MS - 10_000);
      const r = await guest.exited;
      const ctx = `\n--- console (${guest.consoleLogPath}) ---\n${r.consoleLog.slice(-4000)}`;
      assert.equal(r.code, 0, `guest exit code ${r.code} (${r.error ?? ""})${ctx}`);
      assert.match(r.consoleLog, /VBUS-NET eth0 10\.0\.2\.15\/24 via 10\.0\.2\.2/, ctx);
      const line = r.consoleLog.split("\n").find((l) => l.startsWith("NETPROBE "));
      assert.ok(line, `no NETPROBE line${ctx}`);
      const probe = JSON.parse(line!.slice("NETPROBE ".length).trim());
      console.log(
        `vm net probe: ${JSON.stringify(probe)} (boot ${r.bootMs} ms, total ${r.totalMs} ms)`,
      );
      assert.deepEqual(probe.nats, { sent: COUNT, answered: 5 }, ctx);
      assert.deepEqual(probe.tcp, { sent: COUNT, answered: 5 }, ctx);
      for (let i = 0; i < 100 && (natsGot < COUNT || tcpGot < COUNT); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(natsGot, COUNT, "host NATS subscriber");
      assert.equal(tcpGot, COUNT, "host relay subscriber");
      for (const hp of mustFail) {
        assert.notEqual(probe.mustFail?.[hp], "connected", `the guest reached ${hp}: not confined`);
        assert.ok(probe.mustFail?.[hp], `no result for ${hp}`);
      }
      assert.equal(trap.connections(), 0, "a guest connection reached the host listener");
      assert.equal(probe.dns, "no answer", "slirp's DNS answered: the guest can resolve names");
      assert.equal(await fromGuest, "guest:hi", "hostfwd into the guest");
      for (const c of [nSub, nRep, tSub, tRep]) await c.close();
    } finally {
      await closeNats();
      await servers.stop();
      trap.server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test("bench/guests.ts --quick --systems nats,tcp: every case delivered everything", {
  skip: skipGuest,
  timeout: 330_000,
}, async () => {
  const out = mkdtempSync(join(tmpdir(), "vbus-gbench-test-"));
  try {
    const args = RUNTIME === "deno" ? ["run", "-A", "bench/guests.ts"] : ["bench/guests.ts"];
    const child = spawn(BIN(RUNTIME), [...args, "--quick", "--systems", "nats,tcp", "--out", out], {
      cwd: PROJECT_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let log = "";
    child.stdout!.on("data", (d) => (log += d));
    child.stderr!.on("data", (d) => (log += d));
    const code = await new Promise<number | null>((res) => child.on("close", res));
    const tail = `\n--- bench/guests.ts output ---\n${log.slice(-5000)}`;
    assert.equal(code, 0, `exit code ${code}${tail}`);
    assert.ok(existsSync(join(out, "guests.svg")), `no chart${tail}`);
    const json = JSON.parse(readFileSync(join(out, "guests.json"), "utf8"));
    const rows = json.rows as {
      id: string;
      system: string;
      ok: boolean;
      check?: { ok: boolean; detail: string };
    }[];
    assert.deepEqual([...new Set(rows.map((r) => r.system))].sort(), ["nats", "tcp"]);
    assert.ok(rows.length >= 12, `${rows.length} rows${tail}`);
    for (const r of rows) {
      assert.ok(r.ok, `${r.id} failed${tail}`);
      assert.ok(r.check?.ok, `${r.id}: ${r.check?.detail}${tail}`);
    }
    assert.match(readFileSync(join(out, "guests.md"), "utf8"), /Efficiency and security/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

/**
 * Guest side of tests/vm_net_test.ts: inside a lab guest with the confined NIC (lab/net.ts), runs
 * the in-guest benchmark's TCP/IP clients (bench/guests/net_clients.ts) for a few messages and
 * probes what the guest can reach. Prints one line `NETPROBE {json}` on the console.
 *
 * - NATS (guest port `NATS_PORT`): publishes `COUNT` x 64 B on `probe.g2h`, then `RR` requests
 *   to `probe.hecho` (answered on the host).
 * - raw TCP through the relay: `COUNT` frames on `probe.tcp` (guest port `TCP_PUB_PORT`), `RR`
 *   round trips on `probe.rr` (guest port `TCP_RR_PORT`, answered on the host).
 * - confinement: TCP connects that must fail (`MUST_FAIL`: "host:port,host:port"), a DNS query
 *   to slirp's resolver 10.0.2.3 that must get no answer, and a listener on `LISTEN_PORT` that
 *   the host reaches through a hostfwd (it answers "guest:" + what it got).
 *
 *   NATS_PORT=4222 TCP_PUB_PORT=5000 TCP_RR_PORT=5001 COUNT=100 RR=5 MUST_FAIL=10.0.2.2:4222 LISTEN_PORT=7000 \
 *     bun bench/guests/net_probe.ts
 * @module
 */
import { connect as netConnect, createServer } from "node:net";
import { createSocket } from "node:dgram";
import process from "node:process";
import { FORWARD_ADDR } from "../../lab/net.ts";
import { closeNats, openNet } from "./net_clients.ts";

const env = (k: string) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`net_probe: ${k} not set`);
  return v;
};
const COUNT = Number(env("COUNT"));
const RR = Number(env("RR"));
const out: Record<string, unknown> = {};
const payload = new Uint8Array(64).map((_, i) => i);

/** Outcome of one TCP connect: "connected", or the error code. */
function tryConnect(host: string, port: number, timeoutMs = 3000): Promise<string> {
  return new Promise((res) => {
    const s = netConnect({ host, port });
    const t = setTimeout(() => {
      s.destroy();
      res("timeout");
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(t);
      s.destroy();
      res("connected");
    });
    s.once("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      res(e.code ?? e.message);
    });
  });
}

/** A DNS query for example.com to slirp's resolver: "answered" or "no answer". */
function tryDns(timeoutMs = 2000): Promise<string> {
  // id 0x1234, RD, one question: example.com A IN
  const q = Uint8Array.from([
    0x12,
    0x34,
    0x01,
    0x00,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    7,
    ...new TextEncoder().encode("example"),
    3,
    ...new TextEncoder().encode("com"),
    0,
    0,
    1,
    0,
    1,
  ]);
  return new Promise((res) => {
    const s = createSocket("udp4");
    const t = setTimeout(() => {
      s.close();
      res("no answer");
    }, timeoutMs);
    s.on("message", () => {
      clearTimeout(t);
      s.close();
      res("answered");
    });
    s.on("error", (e) => {
      clearTimeout(t);
      s.close();
      res(`error ${e.message}`);
    });
    s.send(q, 53, "10.0.2.3");
  });
}

async function section(name: string, fn: () => Promise<unknown>) {
  try {
    out[name] = await fn();
  } catch (err) {
    out[name] = { error: (err as Error).message ?? String(err) };
  }
}

// The hostfwd listener first: the host connects to it while the rest runs.
const listener = createServer((c) => c.on("data", (d) => c.end(`guest:${d}`)));
await new Promise<void>((r) => listener.listen(Number(env("LISTEN_PORT")), "0.0.0.0", r));

await section("nats", async () => {
  const ep = { host: FORWARD_ADDR, port: Number(env("NATS_PORT")) };
  const pub = await openNet("nats", ep, { pub: "probe.g2h", name: "probe" });
  for (let i = 0; i < COUNT; i++) pub.publish(payload);
  await pub.flush();
  const req = await openNet("nats", ep, { pub: "probe.hecho", name: "probe" });
  let answered = 0;
  for (let i = 0; i < RR; i++) {
    if ((await req.request(payload, 5000)).length === payload.length) answered++;
  }
  return { sent: COUNT, answered };
});
await section("tcp", async () => {
  const pub = await openNet("tcp", { host: FORWARD_ADDR, port: Number(env("TCP_PUB_PORT")) }, {
    pub: "probe.tcp",
  });
  for (let i = 0; i < COUNT; i++) pub.publish(payload);
  await pub.close();
  const rr = await openNet("tcp", { host: FORWARD_ADDR, port: Number(env("TCP_RR_PORT")) }, {
    pub: "probe.rr",
    sub: "probe.rr.rep",
  });
  let answered = 0;
  for (let i = 0; i < RR; i++) {
    if ((await rr.request(payload, 5000)).length === payload.length) answered++;
  }
  await rr.close();
  return { sent: COUNT, answered };
});
await section("mustFail", async () => {
  const r: Record<string, string> = {};
  for (const hp of env("MUST_FAIL").split(",").filter(Boolean)) {
    const [h, p] = hp.split(":");
    r[hp] = await tryConnect(h, Number(p));
  }
  return r;
});
await section("dns", () => tryDns());
await closeNats();
// Give the host time to use the hostfwd listener (it polls until it gets an answer).
await new Promise((r) => setTimeout(r, Number(process.env.LINGER_MS ?? "3000")));
listener.close();
console.log(`NETPROBE ${JSON.stringify(out)}`);
process.exit(0);

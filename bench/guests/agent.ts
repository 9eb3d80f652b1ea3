/**
 * Guest side of bench/guests.ts: runs inside a real QEMU guest (Bun or Deno), connects to the
 * broker over the default virtio-serial port `org.vbus.0` with the project's own client
 * (`mod.ts`), and is driven by the host over the bus itself (requests on `gbench.ctl.ME`).
 * Every result it replies with is also appended as a JSON line to `OUT/ME.jsonl`
 * (`VBUS_GBENCH_OUT`, a writable 9p share), so nothing depends on the slow serial console.
 *
 * The same agent also drives the TCP/IP systems vbus is compared with (bench/guests/net_clients.ts:
 * NATS and raw TCP over the guest's virtio-net NIC, AF_VSOCK): ops that move data take
 * `system` ("vbus", the default, or "nats" / "tcp" / "vsock") and, for those, `endpoint` (where
 * to connect: the VM's guestfwd address and port, or a vsock CID and port). Control stays on vbus.
 *
 * Ops (request `gbench.ctl.ME` with `{ op, ... }`):
 * - `ping` -> `{ me, runtime, version, session, path }` (`path` = this client's data path)
 * - `reconnect { shm }` -> replies, then closes the bus and connects again with `shm` (true:
 *   ivshmem ring; false: port stream only). The host polls `ping` until `path` matches.
 * - `sub { id, subject, size }` -> counts binary messages on `subject` (size checked)
 * - `report { id, expect, idleMs, maxMs }` -> waits until `expect` arrived, or nothing came for
 *   `idleMs`, or `maxMs`; replies `{ received, bytes, badSize, tFirst, tLast, tReply }` (this
 *   guest's clock) and drops the subscription
 * - `pub { id, subject, size, count, seconds, batch, reportTo? }` -> publishes binary payloads
 *   of `size` bytes in batches of `batch`, a `flush()` after each (the previous batch's flush is
 *   awaited only after the next batch is queued), bounded by `count` and `seconds`; then, when
 *   `reportTo` is given, requests `reportTo.subject` with `{ ...reportTo.body, expect: sent }` and
 *   returns that answer too. Replies `{ sent, t0, tFlushed, tReport, report }`.
 * - `rr { id, subject, size, count, seconds, warmup }` -> sequential `request()`s of `size`
 *   bytes; replies latency percentiles in µs (warm-up excluded: the first `warmup` round trips,
 *   at most a fifth of `seconds`); with `flushOnly: true` it times `bus.flush()` instead (a
 *   PING/PONG with the broker alone: the guest's own share of a round trip)
 * - `echo { id, system, endpoint, subject }` -> answers every message on `subject` with a copy
 *   (NATS, tcp, vsock; vbus always answers on `gbench.echo.ME`); `unecho { id }` stops it
 * - `cpu` -> `{ cpuUs }`: this process's CPU time so far (user + system, µs, `process.cpuUsage`)
 * - `exit` -> replies, closes, exits 0
 * Serves `gbench.echo.ME`: answers every request with (a copy of) its binary payload.
 *
 *   VBUS_GBENCH_OUT=/dir bun bench/guests/agent.ts     (or: deno run -A bench/guests/agent.ts)
 * @module
 */
import { appendFileSync } from "node:fs";
import process from "node:process";
import { type Bus, connect, type Msg } from "../../mod.ts";
import { quietly } from "./cases.ts";
import {
  closeNats,
  type NetChannel,
  type NetEndpoint,
  type NetSystem,
  openNet,
} from "./net_clients.ts";

const runtime = "Deno" in globalThis ? "deno" : "bun";
const version = runtime === "deno"
  ? (globalThis as unknown as { Deno: { version: { deno: string } } }).Deno.version.deno
  : process.versions.bun ?? "?";
const out = process.env.VBUS_GBENCH_OUT;
const t0 = Date.now();
const log = (s: string) => console.log(`[gbench ${runtime} +${Date.now() - t0}ms] ${s}`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const now = () => performance.now();

let bus: Bus;
let me = "?";
let busy = false;

function record(kind: string, v: unknown) {
  if (!out) return;
  try {
    appendFileSync(`${out}/${me}.jsonl`, JSON.stringify({ kind, ...(v as object) }) + "\n");
  } catch { /* results still go back over the bus */ }
}

function payload(size: number): Uint8Array {
  // xorshift bytes, as the host benchmarks use (not compressible, not all zero)
  const p = new Uint8Array(size);
  let x = 0x9e3779b9;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    p[i] = x & 0xff;
  }
  return p;
}

interface Counter {
  id: string;
  size: number;
  received: number;
  bytes: number;
  badSize: number;
  tFirst: number;
  tLast: number;
  unsubscribe: () => void | Promise<void>;
}
const counters = new Map<string, Counter>();
/** Repliers of TCP/IP systems started by `echo`, by id. */
const echoes = new Map<string, NetChannel>();

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Which system an op uses, and where its TCP/IP clients connect. */
interface Via {
  system?: "vbus" | NetSystem;
  endpoint?: NetEndpoint;
}

/** A publishing channel: vbus (`publish()` promises, awaited by flush) or a TCP/IP system's. */
async function pubChannel(via: Via, subject: string, fail: (e: unknown) => void) {
  if (!via.system || via.system === "vbus") {
    return {
      publish: (p: Uint8Array) => void bus.publish(subject, p).catch(fail),
      flush: () => bus.flush(),
      close: () => Promise.resolve(),
    };
  }
  return await openNet(via.system, endpointOf(via), { pub: subject, name: `gbench-${me}` });
}

function endpointOf(via: Via): NetEndpoint {
  if (!via.endpoint) throw new Error(`system ${via.system} needs an endpoint`);
  return via.endpoint;
}

async function runPub(
  cmd: Via & {
    id: string;
    subject: string;
    size: number;
    count: number;
    seconds: number;
    batch: number;
    reportTo?: { subject: string; body: Record<string, unknown>; timeoutMs: number };
  },
) {
  const p = payload(cmd.size);
  let failure: unknown;
  const fail = (e: unknown) => (failure ??= e);
  const ch = await pubChannel(cmd, cmd.subject, fail);
  const start = now();
  const deadline = start + cmd.seconds * 1000;
  let sent = 0;
  let pending: Promise<void> | undefined;
  try {
    while (sent < cmd.count && now() < deadline && failure === undefined) {
      const n = Math.min(cmd.batch, cmd.count - sent);
      for (let i = 0; i < n; i++) ch.publish(p);
      sent += n;
      const f = ch.flush();
      f.catch(fail);
      if (pending) await pending; // one batch in flight while the next is queued
      pending = f;
    }
    if (pending) await pending;
  } finally {
    await ch.close().catch(fail);
  }
  const tFlushed = now();
  if (failure !== undefined) throw failure;
  let report: unknown;
  let tReport: number | undefined;
  if (cmd.reportTo) {
    const r = await bus.request(cmd.reportTo.subject, { ...cmd.reportTo.body, expect: sent }, {
      timeout: cmd.reportTo.timeoutMs,
    });
    tReport = now();
    report = r.data;
  }
  return { sent, t0: start, tFlushed, tReport, report };
}

async function runRr(
  cmd: Via & {
    id: string;
    subject: string;
    size: number;
    count: number;
    seconds: number;
    warmup: number;
    /** Time `bus.flush()` (a PING/PONG with the broker only) instead of requests. */
    flushOnly?: boolean;
  },
) {
  const p = payload(cmd.size);
  const lat: number[] = [];
  let badSize = 0;
  let timeouts = 0;
  const net = cmd.system && cmd.system !== "vbus"
    ? await openNet(cmd.system, endpointOf(cmd), {
      pub: cmd.subject,
      // tcp/vsock: the relay routes the answers back on `<subject>.rep` (NATS uses inboxes)
      sub: cmd.system === "nats" ? undefined : `${cmd.subject}.rep`,
      name: `gbench-${me}`,
    })
    : undefined;
  const start = now();
  const deadline = start + cmd.seconds * 1000;
  // Warm-up: the first `warmup` round trips, but at most a fifth of the time bound.
  const warmupEnd = start + cmd.seconds * 200;
  let warm = 0;
  let done = 0;
  while (lat.length < cmd.count && now() < deadline) {
    const inWarmup = warm < cmd.warmup && now() < warmupEnd;
    const t = now();
    try {
      if (cmd.flushOnly) {
        await bus.flush();
      } else if (net) {
        const a = await net.request(p, 2000);
        if (a.length !== cmd.size) badSize++;
      } else {
        const r = await bus.request<Uint8Array>(cmd.subject, p, { timeout: 2000 });
        if (!(r.data instanceof Uint8Array) || r.data.length !== cmd.size) badSize++;
      }
      const us = (now() - t) * 1000;
      if (!inWarmup) lat.push(us);
    } catch {
      timeouts++;
    }
    if (inWarmup) warm++;
    done++;
  }
  const tEnd = now();
  await net?.close().catch(() => {});
  const s = lat.slice().sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return {
    n: s.length,
    done,
    warmup: warm,
    badSize,
    timeouts,
    elapsedMs: tEnd - start,
    latencyUs: {
      n: s.length,
      mean,
      min: s[0] ?? NaN,
      p50: pct(s, 50),
      p90: pct(s, 90),
      p99: pct(s, 99),
      p999: pct(s, 99.9),
      max: s[s.length - 1] ?? NaN,
    },
  };
}

async function report(cmd: { id: string; expect: number; idleMs: number; maxMs: number }) {
  const c = counters.get(cmd.id);
  if (!c) return { ok: false, error: `no subscription ${cmd.id}` };
  const start = now();
  let last = c.received;
  let lastChange = now();
  while (c.received < cmd.expect && now() - start < cmd.maxMs) {
    await sleep(5);
    if (c.received !== last) {
      last = c.received;
      lastChange = now();
    } else if (now() - lastChange > cmd.idleMs) break;
  }
  await c.unsubscribe();
  counters.delete(cmd.id);
  return {
    ok: true,
    received: c.received,
    bytes: c.bytes,
    badSize: c.badSize,
    tFirst: c.tFirst,
    tLast: c.tLast,
    tReply: now(),
  };
}

async function handle(msg: Msg<{ op: string; [k: string]: unknown }>) {
  const cmd = msg.data;
  const reply = (v: unknown) => quietly(msg.respond(v));
  try {
    switch (cmd.op) {
      case "ping":
        return void reply({ me, runtime, version, session: bus.info?.session, path: bus.dataPath });
      case "reconnect": {
        await reply({ ok: true });
        await bus.flush().catch(() => {});
        setTimeout(() => void reopen(cmd.shm as boolean), 50);
        return;
      }
      case "cpu": {
        const u = process.cpuUsage();
        return void reply({ ok: true, cpuUs: u.user + u.system });
      }
      case "echo": {
        const via = cmd as unknown as Via & { id: string; subject: string };
        if (!via.system || via.system === "vbus") {
          throw new Error("vbus always echoes on gbench.echo.ME");
        }
        const ch = await openNet(via.system, endpointOf(via), {
          sub: via.subject,
          // tcp/vsock: answers go to `<subject>.rep`, where the requester listens
          pub: via.system === "nats" ? undefined : `${via.subject}.rep`,
          echo: true,
          name: `gbench-${me}-echo`,
        });
        echoes.set(via.id, ch);
        return void reply({ ok: true });
      }
      case "unecho": {
        const ch = echoes.get(cmd.id as string);
        echoes.delete(cmd.id as string);
        await ch?.close();
        return void reply({ ok: true, found: ch !== undefined });
      }
      case "sub": {
        const id = cmd.id as string;
        const size = cmd.size as number;
        const via = cmd as unknown as Via;
        const c: Counter = {
          id,
          size,
          received: 0,
          bytes: 0,
          badSize: 0,
          tFirst: NaN,
          tLast: NaN,
          unsubscribe: () => {},
        };
        // vbus: the raw msgpack bin (size..size+5 bytes, no decode per message); others: exact.
        const slack = via.system && via.system !== "vbus" ? 0 : 5;
        const count = (n: number) => {
          const t = now();
          if (c.received === 0) c.tFirst = t;
          c.tLast = t;
          c.received++;
          c.bytes += n;
          if (n < size || n > size + slack) c.badSize++;
        };
        if (!via.system || via.system === "vbus") {
          const sub = bus.subscribe<Uint8Array>(cmd.subject as string, {
            callback: (_e, m) => count(m.raw.length),
          });
          c.unsubscribe = () => sub.unsubscribe();
          await bus.flush();
        } else {
          const ch = await openNet(via.system, endpointOf(via), {
            sub: cmd.subject as string,
            onMessage: (p) => count(p.length),
            name: `gbench-${me}-sub`,
          });
          c.unsubscribe = () => ch.close();
        }
        counters.set(id, c);
        return void reply({ ok: true });
      }
      case "report": {
        const r = await report(cmd as unknown as Parameters<typeof report>[0]);
        record("report", { id: cmd.id, ...r });
        return void reply(r);
      }
      case "pub":
      case "rr": {
        if (busy) return void reply({ ok: false, error: "busy" });
        busy = true;
        try {
          const r = cmd.op === "pub"
            ? await runPub(cmd as unknown as Parameters<typeof runPub>[0])
            : await runRr(cmd as unknown as Parameters<typeof runRr>[0]);
          record(cmd.op, { id: cmd.id, path: bus.dataPath, ...r });
          return void reply({ ok: true, path: bus.dataPath, ...r });
        } finally {
          busy = false;
        }
      }
      case "exit":
        await reply({ ok: true });
        await bus.flush().catch(() => {});
        for (const ch of echoes.values()) await ch.close().catch(() => {});
        await closeNats();
        await bus.close();
        log("exit");
        process.exit(0);
        return;
      default:
        return void reply({ ok: false, error: `unknown op ${cmd.op}` });
    }
  } catch (err) {
    reply({ ok: false, error: (err as Error).message ?? String(err) });
  }
}

async function open(shm: boolean) {
  bus = await connect({
    name: `gbench-${runtime}`,
    shm,
    timeout: 120_000,
    reconnectMaxDelay: 300,
  });
  me = bus.info!.identity;
  log(`connected as ${me} (${bus.info!.session}), path ${bus.dataPath}`);
  bus.on("error", (e) => log(`error event: ${e.code} ${e.message}`));
  bus.subscribe<{ op: string }>(`gbench.ctl.${me}`, { callback: (_e, m) => void handle(m) });
  bus.subscribe<Uint8Array>(`gbench.echo.${me}`, {
    callback: (_e, m) => {
      // The payload may be a view into the ring, valid only during this call: copy it.
      quietly(m.respond(m.data.slice()));
    },
  });
  await bus.flush();
}

async function reopen(shm: boolean) {
  for (const c of counters.values()) await c.unsubscribe();
  counters.clear();
  await bus.close().catch(() => {});
  await open(shm);
}

await open(process.env.VBUS_GBENCH_SHM !== "0");
log("ready");
// Stay alive until told to exit (the lab's timeouts bound the whole guest); a timer keeps the
// event loop busy while the bus is being reopened.
setInterval(() => {}, 1 << 30);

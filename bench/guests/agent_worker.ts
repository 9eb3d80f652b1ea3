/**
 * Guest side of bench/agent_guests.ts: one local process in a real QEMU guest. It connects with
 * `connect()` and no endpoint option, so through `vbus agent` when `VBUS_AGENT` is set and on the
 * guest's port directly otherwise, then runs the rounds the host writes as files on a writable 9p
 * share (no control traffic over the bus being measured). Long-lived, so a Bun start under TCG
 * (seconds) is paid once per process, not once per round.
 *
 *   OUT/TAG-round-R.json   {op:"pub", subject, size, count, seconds}   publish to SUBJECT.IDX
 *                          {op:"sub", subject, size, count, idleMs, maxMs} count what arrives
 *                          {op:"idle", seconds}   stay connected, do nothing
 *                          {op:"exit"}
 *   OUT/TAG-wIDX.jsonl     {ready, dataPath}, then one line per round: {round, op, ...}
 *
 * Each round line carries this process's CPU over the round (`cpuUs`) and, when
 * `VBUS_BENCH_AGENT_PID` names the agent, the agent's CPU ticks (/proc/PID/stat, 1/100 s) read at
 * the round's start and end. Times are epoch ms on the guest's clock (one clock for every
 * process of the guest). Every wait is bounded.
 *
 *   OUT=/dir TAG=n4 IDX=0 VBUS_AGENT=/run/vbus-agent.sock bun bench/guests/agent_worker.ts
 * @module
 */
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import process from "node:process";
import { connect } from "../../mod.ts";
import { procCpu } from "../lib/proc.ts";
import { batchFor } from "./cases.ts";

const OUT = process.env.OUT ?? ".";
const TAG = process.env.TAG ?? "w";
const IDX = process.env.IDX ?? "0";
const AGENT_PID = Number(process.env.VBUS_BENCH_AGENT_PID ?? 0);
/** How long a round file may take to appear before the worker gives up. */
const ROUND_WAIT_MS = 600_000;
const MAX_ROUNDS = 1000;

const file = `${OUT}/${TAG}-w${IDX}.jsonl`;
const say = (o: unknown) => appendFileSync(file, JSON.stringify(o) + "\n");
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const wall = () => performance.timeOrigin + performance.now();
const cpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
/** The agent's CPU ticks (user + system) so far, or null without an agent. */
const agentTicks = () => {
  const c = AGENT_PID ? procCpu(AGENT_PID) : null;
  return c ? Math.round((c.user + c.sys) * 100) : null;
};

interface Round {
  op: "pub" | "sub" | "idle" | "exit";
  subject: string;
  size: number;
  count: number;
  seconds?: number;
  idleMs?: number;
  maxMs?: number;
}

function payload(size: number): Uint8Array {
  const p = new Uint8Array(size);
  for (let i = 0; i < size; i++) p[i] = (i * 131 + 7) & 0xff;
  return p;
}

const bus = await connect({ timeout: 120_000, name: `agent-bench ${TAG}/${IDX}` });
say({ ready: true, dataPath: bus.dataPath, pid: process.pid });

async function pub(r: Round) {
  const p = payload(r.size);
  const batch = batchFor(r.size);
  const subject = `${r.subject}.${IDX}`;
  let failure: unknown;
  const t0 = wall();
  const deadline = t0 + (r.seconds ?? 10) * 1000;
  let sent = 0;
  let pending: Promise<void> | undefined;
  while (sent < r.count && wall() < deadline && failure === undefined) {
    const n = Math.min(batch, r.count - sent);
    for (let i = 0; i < n; i++) bus.publish(subject, p).catch((e) => (failure ??= e));
    sent += n;
    const f = bus.flush();
    f.catch((e) => (failure ??= e));
    if (pending) await pending; // one batch in flight while the next is queued
    pending = f;
  }
  if (pending) await pending;
  if (failure !== undefined) throw failure;
  return { sent, t0, t1: wall() };
}

async function sub(r: Round, round: number) {
  let received = 0;
  let badSize = 0;
  let tFirst = NaN;
  let tLast = NaN;
  const s = bus.subscribe<Uint8Array>(r.subject, {
    callback: (_e, m) => {
      const t = wall();
      if (received === 0) tFirst = t;
      tLast = t;
      received++;
      // the raw msgpack bin: size..size+5 bytes, no decode per message
      if (m.raw.length < r.size || m.raw.length > r.size + 5) badSize++;
    },
  });
  await bus.flush();
  say({ round, subscribed: true });
  const start = wall();
  const idleMs = r.idleMs ?? 5000;
  const maxMs = r.maxMs ?? 120_000;
  let last = 0;
  let lastChange = start;
  while (received < r.count && wall() - start < maxMs) {
    await sleep(10);
    if (received !== last) {
      last = received;
      lastChange = wall();
    } else if (received > 0 && wall() - lastChange > idleMs) break;
  }
  await s.unsubscribe();
  return { received, badSize, tFirst, tLast };
}

/** Connected and quiet for `seconds`: what the agent costs with nothing to carry. */
async function idle(r: Round) {
  const t0 = wall();
  await sleep((r.seconds ?? 1) * 1000);
  return { t0, t1: wall() };
}

for (let round = 0; round < MAX_ROUNDS; round++) {
  const rf = `${OUT}/${TAG}-round-${round}.json`;
  const waitStart = Date.now();
  while (!existsSync(rf)) {
    if (Date.now() - waitStart > ROUND_WAIT_MS) {
      say({ round, error: `no round file after ${ROUND_WAIT_MS} ms` });
      process.exit(1);
    }
    await sleep(20);
  }
  let r: Round;
  try {
    r = JSON.parse(readFileSync(rf, "utf8"));
  } catch {
    await sleep(50); // being written: read again
    r = JSON.parse(readFileSync(rf, "utf8"));
  }
  if (r.op === "exit") break;
  const cpu0 = cpuUs();
  const agent0 = agentTicks();
  try {
    const res = r.op === "pub"
      ? await pub(r)
      : r.op === "sub"
      ? await sub(r, round)
      : await idle(r);
    say({
      round,
      op: r.op,
      size: r.size,
      dataPath: bus.dataPath,
      ...res,
      cpuUs: cpuUs() - cpu0,
      agentTicks0: agent0,
      agentTicks1: agentTicks(),
    });
  } catch (err) {
    say({ round, op: r.op, error: String((err as Error)?.message ?? err) });
  }
}
await bus.close().catch(() => {});
process.exit(0);

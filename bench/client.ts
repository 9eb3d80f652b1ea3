// One client process of a benchmark case (publisher, subscriber, requester or replier).
// Started by bench/run.ts as `<runtime> bench/client.ts '<json spec>'`; talks to it with lines:
//   stdout  @@{"type":"ready"} / @@{"type":"done",...} / @@{"type":"error","message":...}
//   stdin   go | expect N | stop | quit
// Everything is bounded: a client exits by itself after spec.hardLimitS seconds, and when its
// stdin closes (the orchestrator is gone).
import type { BenchSystem, Channel, Role, RuntimeName } from "./lib/system.ts";
import { STRUCTURED } from "./lib/stats.ts";
import { isStructuredValue, packr, payloadBytes, structuredValue } from "./lib/values.ts";

interface Spec {
  system: string;
  role: Role;
  id: string;
  runtime: RuntimeName;
  endpoint: Record<string, unknown>;
  size: number;
  /** pub: messages to send at most; req: round trips at most (after warmup) */
  count: number;
  /** pub/req: stop sending after this many seconds */
  seconds: number;
  /** pub: messages between flush() calls (the previous flush is awaited after the next batch is queued) */
  batch: number;
  /** req: unmeasured round trips first */
  warmup: number;
  /**
   * pub: seconds of publishing before the measured phase (JIT tiers, caches and rings settle;
   * a long-running broker is measured warm). Ends with @@{"type":"warm"}; 0: none.
   */
  warmupS: number;
  /** sub: give up this long after "expect" when no message arrives */
  idleMs: number;
  hardLimitS: number;
}

const spec: Spec = JSON.parse(process.argv[2]);
const now = () => performance.now();
const wall = () => performance.timeOrigin + performance.now();

function emit(msg: Record<string, unknown>): void {
  process.stdout.write("@@" + JSON.stringify(msg) + "\n");
}

let channel: Channel | null = null;
let exiting = false;
async function exit(code: number): Promise<void> {
  if (exiting) return;
  exiting = true;
  try {
    if (channel) await Promise.race([channel.close(), new Promise((r) => setTimeout(r, 1000))]);
  } catch { /* closing anyway */ }
  process.exit(code);
}

setTimeout(() => {
  emit({ type: "error", message: `hard time limit ${spec.hardLimitS}s reached` });
  exit(3);
}, spec.hardLimitS * 1000);

// ---- control lines from the orchestrator
const waiters = new Map<string, (arg: string) => void>();
const early = new Map<string, string>();
function waitLine(cmd: string): Promise<string> {
  if (early.has(cmd)) {
    const a = early.get(cmd)!;
    early.delete(cmd);
    return Promise.resolve(a);
  }
  return new Promise((r) => waiters.set(cmd, r));
}
let stdinBuf = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (s: string) => {
  const lines = (stdinBuf + s).split("\n");
  stdinBuf = lines.pop()!;
  for (const line of lines) {
    const [cmd, ...rest] = line.trim().split(" ");
    if (!cmd) continue;
    const w = waiters.get(cmd);
    if (w) {
      waiters.delete(cmd);
      w(rest.join(" "));
    } else early.set(cmd, rest.join(" "));
    onControl?.(cmd, rest.join(" "));
  }
});
process.stdin.on("end", () => exit(0));
let onControl: ((cmd: string, arg: string) => void) | null = null;

function makePayload(size: number): Uint8Array {
  const p = new Uint8Array(size);
  let x = 0x9e3779b9 ^ size;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    p[i] = x & 0xff;
  }
  return p;
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

async function main(): Promise<void> {
  const mod = await import(`./systems/${spec.system}.ts`);
  const sys: BenchSystem = mod.default;
  const structured = spec.size === STRUCTURED;
  const payload = makePayload(payloadBytes(spec.size));
  const base = {
    id: spec.id,
    role: spec.role,
    maxPayload: payloadBytes(spec.size),
    runtime: spec.runtime,
  };

  if (spec.role === "pub") {
    const ch = (channel = await sys.open(spec.endpoint, {
      ...base,
      pub: "bench",
      sub: null,
      onMessage: () => {},
    }));
    emit({ type: "ready" });
    await waitLine("go");
    const t0 = wall();
    const start = now();
    const warmEnd = start + spec.warmupS * 1000;
    const deadline = warmEnd + spec.seconds * 1000;
    let sent = 0;
    let stopped = false;
    // The warm-up ends once, at its time or when the count runs out first ("early": the run
    // then has no warm measured phase).
    let warm: { sent: number; t: number } | null = null;
    const endWarmUp = (early: boolean) => {
      warm = { sent, t: now() };
      emit({ type: "warm", sent, early });
    };
    if (spec.warmupS <= 0) endWarmUp(false);
    onControl = (cmd) => {
      if (cmd === "stop") stopped = true;
    };
    // One batch in flight while the next is written: flush() of a broker client is often a
    // round trip (NATS PING/PONG, Redis pipeline replies), which must not idle the publisher.
    let inFlight: Promise<void> | null = null;
    while (sent < spec.count && !stopped) {
      const n = Math.min(spec.batch, spec.count - sent);
      if (!structured) { for (let i = 0; i < n; i++) ch.publish(payload); }
      else if (sys.nativeValues) {
        for (let i = 0; i < n; i++) ch.publishValue!(structuredValue(sent + i));
      } else for (let i = 0; i < n; i++) ch.publish(packr.pack(structuredValue(sent + i)));
      sent += n;
      const f = ch.flush();
      if (inFlight) await inFlight;
      inFlight = f;
      if (!warm && now() >= warmEnd) endWarmUp(false);
      if (now() >= deadline) break;
    }
    if (inFlight) await inFlight;
    if (!warm) endWarmUp(true);
    const t1 = wall();
    const w = warm as unknown as { sent: number; t: number };
    emit({
      type: "done",
      sent,
      t0,
      t1,
      elapsedS: (now() - start) / 1000,
      warmSent: w.sent,
      measuredS: (now() - w.t) / 1000,
    });
    await waitLine("quit");
    return exit(0);
  }

  if (spec.role === "sub") {
    let received = 0;
    let badSize = 0;
    let expected = Infinity;
    let tFirst = 0;
    let lastCount = 0;
    let tLastSeen = 0;
    let finished = false;
    const size = spec.size;
    let finish: (reason: string) => void = () => {};
    const doneP = new Promise<string>((r) => (finish = r));
    const onReceived = (intact: boolean) => {
      if (received === 0) tFirst = wall();
      received++;
      if (!intact) badSize++;
      if (received >= expected && !finished) {
        finished = true;
        tLastSeen = wall();
        finish("complete");
      }
    };
    channel = await sys.open(spec.endpoint, {
      ...base,
      pub: null,
      sub: "bench",
      onMessage: !structured
        ? (p) => onReceived(p.length === size)
        : (p) => onReceived(isStructuredValue(packr.unpack(p))),
      ...(structured && sys.nativeValues
        ? { onValue: (v: unknown) => onReceived(isStructuredValue(v)) }
        : {}),
    });
    // coarse sampling of progress: tells when the last message arrived if the stream stalls
    let expectAt = 0;
    // (Set by onControl; a cast, or TypeScript narrows it to null where it is read.)
    let mark = null as { received: number; t: number } | null;
    const ticker = setInterval(() => {
      if (received !== lastCount) {
        lastCount = received;
        tLastSeen = wall();
      } else if (expectAt && now() - expectAt > spec.idleMs && !finished) {
        finished = true;
        finish("idle");
      }
    }, 5);
    onControl = (cmd, arg) => {
      if (cmd === "expect") {
        expected = Number(arg);
        expectAt = now();
        if (received >= expected && !finished) {
          finished = true;
          if (!tLastSeen || lastCount !== received) tLastSeen = wall();
          finish("complete");
        }
      } else if (cmd === "mark") {
        // The publishers' warm-up is over: the measured phase starts here.
        mark = { received, t: wall() };
      } else if (cmd === "stop" && !finished) {
        finished = true;
        finish("stopped");
      }
    };
    emit({ type: "ready" });
    const reason = await doneP;
    clearInterval(ticker);
    emit({
      type: "done",
      received,
      badSize,
      tFirst,
      tLast: tLastSeen,
      reason,
      markReceived: mark?.received ?? null,
      tMark: mark?.t ?? null,
    });
    await waitLine("quit");
    return exit(0);
  }

  if (spec.role === "rep") {
    let replies = 0;
    const fail = (e: unknown) => emit({ type: "error", message: `reply failed: ${e}` });
    const ch: Channel = channel = await sys.open(spec.endpoint, {
      ...base,
      pub: "bench.rep",
      sub: "bench.req",
      onMessage: (p) => {
        replies++;
        ch.publish(p);
        ch.flush().catch(fail);
      },
    });
    emit({ type: "ready" });
    await waitLine("quit");
    emit({ type: "done", replies });
    return exit(0);
  }

  if (spec.role === "req") {
    let wake: (() => void) | null = null;
    let badSize = 0;
    const size = spec.size;
    const ch = (channel = await sys.open(spec.endpoint, {
      ...base,
      pub: "bench.req",
      sub: "bench.rep",
      onMessage: (p) => {
        if (p.length !== size) badSize++;
        const w = wake;
        wake = null;
        if (w) w();
      },
    }));
    emit({ type: "ready" });
    await waitLine("go");
    const samples = new Float64Array(spec.count);
    let n = 0;
    let timeouts = 0;
    const t0 = wall();
    const start = now();
    const deadline = start + spec.seconds * 1000;
    const total = spec.warmup + spec.count;
    // one watchdog instead of a timer per round trip: a reply missing for 5 s ends the loop
    let inflightSince = 0;
    let timedOut = false;
    const watchdog = setInterval(() => {
      if (inflightSince && now() - inflightSince > 5000 && wake) {
        timedOut = true;
        const w = wake;
        wake = null;
        w();
      }
    }, 250);
    for (let i = 0; i < total; i++) {
      const got = new Promise<void>((r) => (wake = r));
      const t = (inflightSince = now());
      ch.publish(payload);
      await ch.flush();
      await got;
      const dt = now() - t;
      inflightSince = 0;
      if (timedOut) {
        timeouts++;
        break;
      }
      if (i >= spec.warmup) samples[n++] = dt * 1000;
      if (now() >= deadline) break;
    }
    clearInterval(watchdog);
    const t1 = wall();
    const s = samples.slice(0, n).sort();
    let sum = 0;
    for (let i = 0; i < n; i++) sum += s[i];
    emit({
      type: "done",
      sent: n,
      t0,
      t1,
      badSize,
      timeouts,
      latencyUs: {
        n,
        mean: n ? sum / n : NaN,
        p50: percentile(s, 0.5),
        p90: percentile(s, 0.9),
        p99: percentile(s, 0.99),
        p999: percentile(s, 0.999),
        max: n ? s[n - 1] : NaN,
        min: n ? s[0] : NaN,
      },
    });
    await waitLine("quit");
    return exit(0);
  }
  throw new Error(`unknown role ${spec.role}`);
}

main().catch((e) => {
  emit({ type: "error", message: String(e?.stack ?? e) });
  exit(1);
});

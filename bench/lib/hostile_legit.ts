/**
 * The hostile bench's innocent traffic, in a process of its own (so an attacker's busy loop in
 * the harness never delays a victim's timer, and a victim's round trip is what a VM in its own
 * process would see): two victim VMs and one host service, all real vbus clients.
 *
 * - `vring`: a guest on a simulated VM whose shared-memory rings are negotiated (ring path).
 * - `vport`: a guest on a simulated VM without shared memory (the port stream).
 * - `svc`: a host client (its own rings) that answers `svc.echo` with the request's value.
 *
 * During the measured window each victim sends one request to `svc.echo` every `paceMs`,
 * sequentially, and each sample is timed from when the request was *due* (a stall between
 * requests delays the next one's start and shows up in it, rather than being hidden). The
 * victims also carry numbered pub/sub streams checked for loss: `svc` publishes `victim.down`
 * (both VMs subscribe), each VM publishes `victim.up.<vm>` (`svc` subscribes). Anything else
 * arriving on those subjects, or on `victim.<vm>.>` (a subject an attacker can aim at one
 * victim), is counted as foreign; payloads that cannot be decoded are counted as undecodable.
 *
 * Run as a script it speaks JSON lines on stdout and takes commands on stdin (`go`, `quit`);
 * {@link LegitProcess} is the harness's handle.
 *
 * @example
 * ```ts
 * import { LegitProcess } from "./hostile_legit.ts";
 * const legit = LegitProcess.spawn({ listen, vms, paceMs: 10, streamEveryMs: 10 });
 * await legit.listening; // the simulated VMs' chardev sockets exist: start the broker now
 * await legit.ready; // every client connected and warmed up
 * const result = await legit.measure(5); // the window; run the attack meanwhile
 * await legit.quit();
 * ```
 * @module
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type Bus, connect } from "../../src/client/bus.ts";
import { SimulatedVm } from "../../src/sim/simulated_vm.ts";
import { ROOT, RUNTIME_BIN } from "./proc.ts";

/** One victim VM's simulated chardev. */
export interface LegitVm {
  name: string;
  socket: string;
  /** The VM's shared-memory file: the victim negotiates the rings. Absent: the port stream. */
  shm?: string;
}

/** What the legit process is told at start (argv, as JSON). */
export interface LegitConfig {
  /** The broker's host socket. */
  listen: string;
  vms: LegitVm[];
  /** One request per victim every this many ms. */
  paceMs: number;
  /** One stream message per publisher every this many ms. */
  streamEveryMs: number;
  /** Request timeout (ms). */
  timeoutMs?: number;
  /**
   * The service also publishes `count` events of `bytes` each to `svc.events` every
   * `streamEveryMs` during the window (a busy host service, for the attack that blocks on it).
   */
  serviceEvents?: { bytes: number; count: number };
}

/** Round trips of one victim. */
export interface RoundTrips {
  /** Every sample (ms from when the request was due until its reply or failure). */
  samples: number[];
  timeouts: number;
  /** Replies that were not the echo of their request (or could not be decoded). */
  wrong: number;
  /** Other request failures, by error code. */
  errors: Record<string, number>;
}

/** One checked stream at one subscriber. */
export interface StreamCheck {
  stream: string;
  subscriber: string;
  /** Publishes that resolved. */
  sent: number;
  /** Distinct numbered messages received (of those sent). */
  received: number;
  lost: number;
  duplicates: number;
}

/** What a victim client saw besides its round trips. */
export interface ClientReport {
  name: string;
  /** Data path at the start and at the end of the window ("ring" / "stream"). */
  pathBefore: string;
  pathAfter: string;
  disconnects: number;
  /** Messages on its subjects that are not the numbered streams. */
  foreign: number;
  /** Messages whose payload could not be decoded (`error` events with code CODEC). */
  undecodable: number;
  /** `slowConsumer` events (dropped counts summed). */
  slowConsumer: number;
  /** Other `error` events, by code. */
  errors: Record<string, number>;
  /** Publishes that rejected, by error code. */
  publishErrors: Record<string, number>;
}

/** The legit process's account of one window. */
export interface LegitResult {
  windowMs: number;
  rtt: Record<string, RoundTrips>;
  streams: StreamCheck[];
  clients: ClientReport[];
  /** Events the service published to `svc.events` (the busy-service attack). */
  serviceEvents: number;
  /** Requests the service could not decode (it answers them with an error value). */
  serviceBadRequests: number;
}

const WARMUP_ROUND_TRIPS = 20;
/** After the window: stop waiting for stream stragglers once nothing arrived for this long. */
const DRAIN_STALL_MS = 2000;
const DRAIN_MAX_MS = 8000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

function bump(rec: Record<string, number>, key: string, n = 1) {
  rec[key] = (rec[key] ?? 0) + n;
}

function codeOf(err: unknown): string {
  return String((err as { code?: string })?.code ?? (err as Error)?.name ?? "?");
}

/** Receives one numbered stream at one subscriber. */
class StreamReceiver {
  readonly seen = new Set<number>();
  duplicates = 0;
  constructor(readonly stream: string, readonly subscriber: string) {}
  /** Record `value` if it is one of ours; false when it is foreign. */
  take(value: unknown): boolean {
    const v = value as { src?: unknown; seq?: unknown } | null;
    if (!v || typeof v !== "object" || v.src !== this.stream || typeof v.seq !== "number") {
      return false;
    }
    if (this.seen.has(v.seq)) this.duplicates++;
    else this.seen.add(v.seq);
    return true;
  }
}

/** One victim or the service: a bus plus what it observed. */
class Client {
  readonly report: ClientReport;
  constructor(readonly bus: Bus, name: string) {
    this.report = {
      name,
      pathBefore: bus.dataPath ?? "none",
      pathAfter: "",
      disconnects: 0,
      foreign: 0,
      undecodable: 0,
      slowConsumer: 0,
      errors: {},
      publishErrors: {},
    };
    bus.on("disconnected", () => this.report.disconnects++);
    bus.on("slowConsumer", (e) => this.report.slowConsumer += e.dropped);
    bus.on("error", (e) => {
      if (e.code === "CODEC") this.report.undecodable++;
      else bump(this.report.errors, e.code);
    });
  }

  /** Subscribe `subject`, feeding numbered messages to `receivers` (by `src`), others foreign. */
  listen(subject: string, receivers: StreamReceiver[]) {
    this.bus.subscribe(subject, {
      callback: (_err, m) => {
        let value: unknown;
        try {
          value = m.data; // read inside the callback: on the ring it is only valid here
        } catch {
          return; // counted by the CODEC error event
        }
        if (!receivers.some((r) => r.take(value))) this.report.foreign++;
      },
    });
  }
}

/** A numbered stream's publisher. */
class StreamSender {
  sent = 0;
  #seq = 0;
  constructor(readonly client: Client, readonly subject: string, readonly src: string) {}
  publishNext() {
    const seq = this.#seq++;
    this.client.bus.publish(this.subject, { src: this.src, seq }).then(
      () => this.sent++,
      (err) => bump(this.client.report.publishErrors, codeOf(err)),
    );
  }
  /** Sequence numbers handed out (resolved or not). */
  get issued(): number {
    return this.#seq;
  }
}

async function waitUntil(cond: () => boolean, ms: number, what: string) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Sequential round trips from `bus` to `svc.echo` until `endAt`, each timed from its due time. */
async function roundTrips(
  bus: Bus,
  who: string,
  paceMs: number,
  endAt: number,
  timeoutMs: number,
): Promise<RoundTrips> {
  const out: RoundTrips = { samples: [], timeouts: 0, wrong: 0, errors: {} };
  let due = performance.now();
  for (let i = 0; performance.now() < endAt; i++) {
    await sleep(due - performance.now());
    try {
      const reply = await bus.request<{ who: string; i: number }>("svc.echo", { who, i }, {
        timeout: timeoutMs,
      });
      let ok = false;
      try {
        ok = reply.data?.who === who && reply.data?.i === i;
      } catch { /* undecodable reply: wrong */ }
      if (!ok) out.wrong++;
    } catch (err) {
      if (codeOf(err) === "TIMEOUT") out.timeouts++;
      else bump(out.errors, codeOf(err));
    }
    const done = performance.now();
    out.samples.push(done - due);
    due = Math.max(due + paceMs, done);
  }
  return out;
}

/** The process: connect everything, then measure one window on `go`. */
async function main(config: LegitConfig) {
  const emit = (msg: Record<string, unknown>) => process.stdout.write(JSON.stringify(msg) + "\n");
  const timeoutMs = config.timeoutMs ?? 5000;
  const sims = config.vms.map((v) => new SimulatedVm(v.name, v.socket));
  for (const s of sims) await s.start();
  emit({ type: "listening" });

  const commands: string[] = [];
  let onCommand = () => {};
  createInterface({ input: process.stdin }).on("line", (line) => {
    commands.push(line.trim());
    onCommand();
  }).on("close", () => {
    commands.push("quit");
    onCommand();
  });
  const nextCommand = async (): Promise<string> => {
    while (commands.length === 0) await new Promise<void>((r) => onCommand = r);
    return commands.shift()!;
  };

  await waitUntil(() => sims.every((s) => s.hostConnected), 60_000, "the broker to link the VMs");
  const service = new Client(
    await connect({ server: config.listen, name: "hostile-bench-service", timeout: 30_000 }),
    "svc",
  );
  const victims: Client[] = [];
  for (const [i, v] of config.vms.entries()) {
    const bus = await connect({
      transport: () => sims[i].open(),
      shm: v.shm ?? false,
      name: `victim ${v.name}`,
      timeout: 30_000,
    });
    victims.push(new Client(bus, v.name));
  }

  // The service answers with the request's value; a request it cannot decode gets an error value.
  let serviceBadRequests = 0;
  service.bus.subscribe("svc.echo", {
    callback: (_err, m) => {
      let value: unknown;
      try {
        value = m.data;
      } catch {
        serviceBadRequests++;
        value = { error: "undecodable request" };
      }
      if (m.reply) m.respond(value);
    },
  });
  const down = victims.map((v) => new StreamReceiver("svc", v.report.name));
  for (const [i, v] of victims.entries()) {
    v.listen("victim.down", [down[i]]);
    v.listen(`victim.${v.report.name}.>`, []);
  }
  const up = victims.map((v) => new StreamReceiver(v.report.name, "svc"));
  service.listen("victim.up.*", up);
  for (const c of [service, ...victims]) await c.bus.flush();
  for (const v of victims) {
    for (let i = 0; i < WARMUP_ROUND_TRIPS; i++) {
      await v.bus.request("svc.echo", { who: "warmup", i }, { timeout: timeoutMs });
    }
  }
  for (const c of [service, ...victims]) c.report.pathBefore = c.bus.dataPath ?? "none";
  emit({
    type: "ready",
    paths: Object.fromEntries(victims.map((v) => [v.report.name, v.bus.dataPath])),
  });

  for (;;) {
    const cmd = await nextCommand();
    if (cmd === "quit") break;
    const m = /^go (\d+(?:\.\d+)?)$/.exec(cmd);
    if (!m) continue;
    emit({ type: "result", result: await window(Number(m[1]) * 1000) });
  }
  for (const c of [...victims, service]) {
    await Promise.race([c.bus.close(), sleep(2000)]).catch(() => {});
  }
  for (const s of sims) await s.stop();
  process.exit(0);

  async function window(ms: number): Promise<LegitResult> {
    const t0 = performance.now();
    const endAt = t0 + ms;
    const senders = [
      new StreamSender(service, "victim.down", "svc"),
      ...victims.map((v) => new StreamSender(v, `victim.up.${v.report.name}`, v.report.name)),
    ];
    let serviceEvents = 0;
    const eventBody = new Uint8Array(config.serviceEvents?.bytes ?? 0).fill(0x5a);
    const ticker = (async () => {
      let due = performance.now();
      while (performance.now() < endAt) {
        for (const s of senders) s.publishNext();
        for (let i = 0; i < (config.serviceEvents?.count ?? 0); i++) {
          service.bus.publish("svc.events", eventBody).then(() => serviceEvents++, () => {});
        }
        due += config.streamEveryMs;
        await sleep(due - performance.now());
      }
    })();
    const rtt = await Promise.all(
      victims.map((v) => roundTrips(v.bus, v.report.name, config.paceMs, endAt, timeoutMs)),
    );
    await ticker;
    const windowMs = performance.now() - t0;
    // Every publish settles (resolves or rejects), then stragglers arrive, or stop coming.
    await waitUntil(
      () => senders.every((s) => s.sent + sum(s.client.report.publishErrors) >= s.issued),
      DRAIN_MAX_MS,
      "every stream publish to settle",
    ).catch(() => {});
    const checks = () => [
      ...down.map((r) => [senders[0], r] as const),
      ...up.map((r, i) => [senders[i + 1], r] as const),
    ];
    const missing = () => checks().reduce((n, [s, r]) => n + Math.max(0, s.sent - r.seen.size), 0);
    const drainEnd = Date.now() + DRAIN_MAX_MS;
    let last = missing(), lastChange = Date.now();
    while (last > 0 && Date.now() < drainEnd && Date.now() - lastChange < DRAIN_STALL_MS) {
      await sleep(20);
      const now = missing();
      if (now !== last) [last, lastChange] = [now, Date.now()];
    }
    for (const c of [service, ...victims]) c.report.pathAfter = c.bus.dataPath ?? "none";
    return {
      windowMs,
      rtt: Object.fromEntries(victims.map((v, i) => [v.report.name, rtt[i]])),
      streams: checks().map(([s, r]) => {
        const received = [...r.seen].filter((seq) => seq < s.issued).length;
        return {
          stream: s.subject,
          subscriber: r.subscriber,
          sent: s.sent,
          received,
          lost: Math.max(0, s.sent - received),
          duplicates: r.duplicates,
        };
      }),
      clients: [service, ...victims].map((c) => ({ ...c.report })),
      serviceEvents,
      serviceBadRequests,
    };
  }
}

function sum(rec: Record<string, number>): number {
  return Object.values(rec).reduce((a, b) => a + b, 0);
}

/** The harness's handle on the legit process. */
export class LegitProcess {
  /** Resolves once the simulated VMs listen (start the broker after this). */
  readonly listening: Promise<void>;
  /** Resolves once every client is connected and warmed up, with the victims' data paths. */
  readonly ready: Promise<Record<string, string>>;
  readonly exited: Promise<number>;
  #child: ReturnType<typeof spawn>;
  #results: LegitResult[] = [];
  #onResult = () => {};
  #stderr = "";
  #exitCode: number | null = null;

  private constructor(config: LegitConfig) {
    const script = fileURLToPath(import.meta.url);
    const arg = JSON.stringify(config);
    const [cmd, args] = "Deno" in globalThis
      ? [RUNTIME_BIN.deno, ["run", "-A", "--quiet", script, arg]]
      : [RUNTIME_BIN.bun, [script, arg]];
    this.#child = spawn(cmd, args, {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, VBUS_LOG: "error" },
    });
    this.#child.stderr!.on("data", (d) => this.#stderr = (this.#stderr + d).slice(-4000));
    this.exited = new Promise((r) =>
      this.#child.on("exit", (c, s) => {
        this.#exitCode = c ?? (s ? 128 : 1);
        this.#onResult();
        r(this.#exitCode);
      })
    );
    let listening = () => {}, ready = (_p: Record<string, string>) => {};
    this.listening = new Promise((r) => listening = r);
    this.ready = new Promise((r) => ready = r);
    const failed = this.exited.then((c) => {
      throw new Error(`the legit process exited (${c}): ${this.#stderr.slice(-1500)}`);
    });
    this.listening = Promise.race([this.listening, failed]);
    this.ready = Promise.race([this.ready, failed]);
    this.listening.catch(() => {});
    this.ready.catch(() => {});
    createInterface({ input: this.#child.stdout! }).on("line", (line) => {
      let msg: { type?: string; paths?: Record<string, string>; result?: LegitResult };
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg.type === "listening") listening();
      else if (msg.type === "ready") ready(msg.paths ?? {});
      else if (msg.type === "result" && msg.result) {
        this.#results.push(msg.result);
        this.#onResult();
      }
    });
  }

  /** Start the process for `config`. */
  static spawn(config: LegitConfig): LegitProcess {
    return new LegitProcess(config);
  }

  /** Run one measured window of `seconds`; resolves with the victims' account after the drain. */
  async measure(seconds: number): Promise<LegitResult> {
    const before = this.#results.length;
    this.#child.stdin!.write(`go ${seconds}\n`);
    const deadline = Date.now() + seconds * 1000 + 60_000;
    while (this.#results.length === before) {
      if (this.#exitCode !== null) {
        throw new Error(
          `the legit process exited (${this.#exitCode}): ${this.#stderr.slice(-1500)}`,
        );
      }
      if (Date.now() > deadline) throw new Error("the legit process did not report its window");
      await new Promise<void>((r) => {
        this.#onResult = r;
        setTimeout(r, 1000);
      });
    }
    return this.#results[before];
  }

  /** Whatever it wrote to stderr (last 4 KB). */
  stderr(): string {
    return this.#stderr;
  }

  /** Close its clients and end it (SIGKILL after 5 s). */
  async quit(): Promise<void> {
    if (this.#exitCode !== null) return;
    this.#child.stdin!.end("quit\n");
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Kill it now (interrupt paths). */
  kill(): void {
    if (this.#exitCode === null) this.#child.kill("SIGKILL");
  }
}

if (import.meta.main) {
  await main(JSON.parse(process.argv[process.argv.length - 1]) as LegitConfig);
}

/**
 * `vbus agent` with simulated VMs: several local processes (real child processes, Deno and
 * Bun) through one agent, each on its own slot of the VM's region and on the ring path, all
 * with the VM's identity and permissions; slot exhaustion; lies from a guest's agent.
 * @module
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { type Lab, startLab, tempDir, waitFor } from "./helpers.ts";
import type { EndpointStats } from "../src/broker/stats.ts";
import { Agent } from "../src/agent/agent.ts";
import { openAgentPort } from "../src/agent/attach.ts";
import { connect } from "../src/client/bus.ts";
import { createLogger } from "../src/util/log.ts";
import { encodeEnvelope, EnvelopeKind, MUX_VERSION } from "../src/protocol/channel_frame.ts";
import { type LocalProcess, spawnLocal } from "./fixtures/agent_children.ts";
import type { SessionStats } from "../src/broker/session_stats.ts";

const quiet = createLogger("test-agent", "silent");

test("agent: two subscribers and a publisher (Deno and Bun processes) through one agent, and a subscriber in another VM, all get every message; each process is its own ring session of vm1", async () => {
  const lab = await startLab({ shm: true });
  const v = lab.vms.vm1;
  const socket = join(lab.dir, "agent.sock");
  const agent = new Agent({ socket, transport: () => v.vm.open(), shm: v.shm!, logger: quiet });
  const procs: LocalProcess[] = [];
  try {
    await agent.start();
    const subA = spawnLocal("deno", socket, ["sub", "t.>"]);
    const subB = spawnLocal("bun", socket, ["sub", "t.>"]);
    procs.push(subA, subB);
    for (const s of [subA, subB]) {
      const ready = await s.waitLine((l) => "ready" in l, "a subscriber's ready line");
      assert.equal(ready.ready, "ring", "a local process keeps the ring fast path");
    }
    const other = await lab.vms.vm2.connect();
    const got: unknown[] = [];
    other.subscribe("t.>", { callback: (_e, m) => got.push(m.data) });
    await other.flush();
    const N = 200;
    const pub = spawnLocal("bun", socket, ["pub", "t.x", String(N)]);
    procs.push(pub);
    const done = await pub.waitLine((l) => "done" in l, "the publisher's done line");
    assert.equal(done.dataPath, "ring");
    const want = Array.from({ length: N }, (_, i) => ({ i }));
    await waitFor(
      () => subA.msgs().length >= N && subB.msgs().length >= N && got.length >= N,
      "every message everywhere",
      20_000,
    );
    assert.deepEqual(subA.msgs(), want);
    assert.deepEqual(subB.msgs(), want);
    assert.deepEqual(got, want);
    const vm1Sessions = () =>
      lab.broker.stats().sessions.filter((s: SessionStats) => s.endpoint === "vm1");
    await waitFor(() => vm1Sessions().length === 2, "the publisher's session ended when it exited");
    const vm1 = vm1Sessions();
    for (const s of vm1) assert.equal(s.path, "ring", JSON.stringify(s));
    assert.equal(new Set(vm1.map((s) => s.id)).size, 2, "one session per process");
    assert.equal(agent.stats.attached, 2);
    await other.close();
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await agent.stop();
    await lab.close();
  }
});

test("agent: the VM's permissions apply to every process through its agent", async () => {
  const lab = await startLab({
    shm: true,
    vms: [{ name: "vm1", permissions: { publish: ["ok.>"], subscribe: [">"] } }, "vm2"],
  });
  const v = lab.vms.vm1;
  const socket = join(lab.dir, "agent.sock");
  const agent = new Agent({ socket, transport: () => v.vm.open(), shm: v.shm!, logger: quiet });
  const saved = process.env.VBUS_AGENT;
  try {
    await agent.start();
    process.env.VBUS_AGENT = socket;
    const bus = await connect({ timeout: 5000 });
    assert.equal(bus.dataPath, "ring");
    const errors: string[] = [];
    bus.on("error", (e) => errors.push(e.code));
    await assert.rejects(
      bus.request("nope.x", 1, { timeout: 2000 }),
      /PERMISSION_DENIED|not permitted|denied/i,
      "a publish outside vm1's permissions is refused for a process behind the agent",
    );
    await bus.close();
  } finally {
    if (saved === undefined) delete process.env.VBUS_AGENT;
    else process.env.VBUS_AGENT = saved;
    await agent.stop();
    await lab.close();
  }
});

/**
 * A lab with shared memory and `vbus agent` (in this process) on vm1's port, started, with
 * VBUS_AGENT naming its socket during `fn` (restored after).
 */
async function withVm1Agent(
  fn: (ctx: { lab: Lab; agent: Agent; vm1: () => EndpointStats }) => Promise<void>,
): Promise<void> {
  const lab = await startLab({ shm: true });
  const v = lab.vms.vm1;
  const socket = join(lab.dir, "agent.sock");
  const agent = new Agent({ socket, transport: () => v.vm.open(), shm: v.shm!, logger: quiet });
  const saved = process.env.VBUS_AGENT;
  const vm1 = () => lab.broker.stats().vms.find((s) => s.name === "vm1")!;
  try {
    await agent.start();
    process.env.VBUS_AGENT = socket;
    await fn({ lab, agent, vm1 });
  } finally {
    if (saved === undefined) delete process.env.VBUS_AGENT;
    else process.env.VBUS_AGENT = saved;
    await agent.stop();
    await lab.close();
  }
}

test("agent: the VM stays connected (and on the ring) while any of its processes is; not after the last one leaves", async () => {
  await withVm1Agent(async ({ lab, vm1 }) => {
    const sessions = () =>
      lab.broker.stats().sessions.filter((s: SessionStats) => s.endpoint === "vm1").length;
    const a = await connect({ timeout: 5000 });
    const b = await connect({ timeout: 5000 });
    assert.equal(b.dataPath, "ring");
    await waitFor(() => sessions() === 2, "both processes are sessions of vm1");
    assert.equal(vm1().connected, true);
    await a.close();
    await waitFor(() => sessions() === 1, "the first process's session ended");
    assert.equal(vm1().connected, true, "one process of vm1 is still connected");
    assert.equal(vm1().path, "ring", "and it is on the ring");
    await b.close();
    await waitFor(() => sessions() === 0, "the last process's session ended");
    assert.equal(vm1().connected, false, "no process of vm1 is connected");
  });
});

test("agent: a process that opens the port right after the agent exits gets a session on the same VM connection (no agent-protocol violation)", async () => {
  await withVm1Agent(async ({ lab, agent, vm1 }) => {
    const v = lab.vms.vm1;
    const local = await connect({ timeout: 5000 });
    assert.equal(local.dataPath, "ring");
    await local.close();
    await agent.stop(); // closes the guest's port: the broker's VM connection stays in mux mode
    delete process.env.VBUS_AGENT;
    // The next opener's HELLO arrives where the broker expects an envelope.
    const direct = await v.connect({ timeout: 5000, reconnect: false });
    assert.equal(direct.dataPath, "ring");
    const sub = direct.subscribe<string>("after.agent", { max: 1 });
    await direct.flush();
    const host = await lab.host({ shm: false });
    await host.publish("after.agent", "direct");
    for await (const m of sub) assert.equal(m.data, "direct");
    assert.equal(
      vm1().closed["AGENT_PROTOCOL"] ?? 0,
      0,
      "the plain HELLO was not taken for a broken agent",
    );
    await direct.close();
  });
});

test("agent: slot exhaustion refuses the next process with an error naming the limit", async () => {
  const lab = await startLab({ shm: true });
  const v = lab.vms.vm1;
  const socket = join(lab.dir, "agent.sock");
  const agent = new Agent({
    socket,
    transport: () => v.vm.open(),
    shm: v.shm!,
    slots: 2,
    logger: quiet,
  });
  const saved = process.env.VBUS_AGENT;
  try {
    await agent.start();
    process.env.VBUS_AGENT = socket;
    const a = await connect({ timeout: 5000 });
    const b = await connect({ timeout: 5000 });
    await assert.rejects(openAgentPort(socket), /all 2 slots of this agent are in use.*--slots/);
    await assert.rejects(
      connect({ timeout: 1500 }),
      /all 2 slots of this agent are in use/,
      "connect() says why",
    );
    assert.ok(agent.stats.refused >= 2);
    await a.close();
    // The slot is free again once the broker answered its CLOSE.
    await waitFor(() => agent.stats.attached === 1, "the closed process's slot freed");
    const c = await connect({ timeout: 5000 });
    assert.equal(c.dataPath, "ring");
    await b.close();
    await c.close();
  } finally {
    if (saved === undefined) delete process.env.VBUS_AGENT;
    else process.env.VBUS_AGENT = saved;
    await agent.stop();
    await lab.close();
  }
});

test("agent: a guest whose agent lies about channels or slots is cut off with a clear error; other VMs go on", async () => {
  const lab = await startLab({ shm: true });
  try {
    const other = await lab.vms.vm2.connect();
    const got: unknown[] = [];
    other.subscribe("still", { callback: (_e, m) => got.push(m.data) });
    await other.flush();
    const lies: [string, Uint8Array[]][] = [
      ["OPEN before MUX_HELLO", [encodeEnvelope(EnvelopeKind.Open, 1, { slot: 0 })]],
      ["slot out of range", [hello(), encodeEnvelope(EnvelopeKind.Open, 1, { slot: 99 })]],
      ["channel out of range", [hello(), encodeEnvelope(EnvelopeKind.Open, 500, { slot: 0 })]],
      ["slot used twice", [
        hello(),
        encodeEnvelope(EnvelopeKind.Open, 1, { slot: 0 }),
        encodeEnvelope(EnvelopeKind.Open, 2, { slot: 0 }),
      ]],
      ["DATA for a closed channel", [
        hello(),
        encodeEnvelope(EnvelopeKind.Data, 3, new Uint8Array(4)),
      ]],
    ];
    for (const [what, envelopes] of lies) {
      const before = lab.broker.stats().vms.find((s) =>
        s.name === "vm1"
      )!.closed["AGENT_PROTOCOL"] ?? 0;
      const port = await lab.vms.vm1.vm.open();
      const seen: Uint8Array[] = [];
      const closed = new Promise<void>((r) => port.start((c) => seen.push(c), () => r()));
      for (const e of envelopes) port.write(e);
      await closed; // the broker closed the VM connection
      const text = new TextDecoder().decode(concat(seen));
      assert.match(text, /slot|channel|MUX_HELLO/, `${what}: the ERROR names the problem`);
      const after = lab.broker.stats().vms.find((s) => s.name === "vm1")!.closed["AGENT_PROTOCOL"];
      assert.equal(after, before + 1, `${what}: counted`);
      await waitFor(() => lab.vms.vm1.vm.hostConnected, "the broker reconnected to vm1");
    }
    const host = await lab.host();
    await host.publish("still", "here");
    await waitFor(() => got.length === 1, "vm2 unaffected");
    await other.close();
  } finally {
    await lab.close();
  }
});

test("agent: an old client on the port works as before next to the mux code (first bytes decide)", async () => {
  const lab = await startLab({ shm: true });
  try {
    const bus = await lab.vms.vm1.connect();
    assert.equal(bus.dataPath, "ring");
    const sub = bus.subscribe("o");
    await bus.flush();
    await bus.publish("o", 1);
    for await (const m of sub) {
      assert.equal(m.data, 1);
      break;
    }
    await bus.close();
    // Nothing listens at a VBUS_AGENT path that does not exist: connect() says so.
    const saved = process.env.VBUS_AGENT;
    process.env.VBUS_AGENT = join(lab.dir, "none.sock");
    try {
      await assert.rejects(connect({ timeout: 500 }), /none\.sock/);
    } finally {
      if (saved === undefined) delete process.env.VBUS_AGENT;
      else process.env.VBUS_AGENT = saved;
    }
  } finally {
    await lab.close();
  }
});

function hello(): Uint8Array {
  return encodeEnvelope(EnvelopeKind.MuxHello, 0, { v: MUX_VERSION, nonce: 7, slots: 4 });
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test("agent: deploy/systemd/vbus-agent.service starts `vbus agent --group vbus`, keeps /run/vbus across restarts, and systemd accepts it", (t) => {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const unit = readFileSync(join(root, "deploy/systemd/vbus-agent.service"), "utf8");
  const value = (key: string) => new RegExp(`^${key}=(.*)$`, "m").exec(unit)?.[1];
  assert.match(value("ExecStart") ?? "", / agent --group vbus$/);
  assert.equal(value("Restart"), "always");
  assert.equal(value("RuntimeDirectory"), "vbus");
  assert.equal(value("RuntimeDirectoryPreserve"), "restart");
  const analyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
  if (analyze.status !== 0) {
    t.skip("systemd-analyze is not installed (apt-get install systemd): the unit was only read");
    return;
  }
  const { dir, cleanup } = tempDir();
  try {
    const local = unit.replace(/\/opt\/vbus\//g, `${root}`);
    mkdirSync(join(dir, "units"));
    const copy = join(dir, "units/vbus-agent.service");
    writeFileSync(copy, local);
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", copy], { encoding: "utf8" });
    const problems = (r.stdout + r.stderr).split("\n").filter((l) =>
      l.includes("vbus-agent.service") && !/Failed to .*(bus|connect)/i.test(l)
    );
    assert.deepEqual(problems, [], `systemd-analyze verify: ${r.stdout}${r.stderr}`);
  } finally {
    cleanup();
  }
});

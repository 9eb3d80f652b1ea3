/**
 * Hostile host-local clients (issue 9, items 2 and 14): a client that shrinks the shared memory
 * the broker gave it, idle connections that never say HELLO, and more connections than the
 * broker serves. The broker runs in its own process where a crash or a resource count is the
 * honest measure; attackers speak raw frames over the real host socket.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import {
  chmodSync,
  closeSync,
  existsSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  writeFileSync,
} from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { delay, startLab, take, tempDir, waitFor } from "./helpers.ts";
import { cliCommand } from "./fixtures/cli_process.ts";
import { connect } from "../src/client/bus.ts";
import { FrameDecoder } from "../src/protocol/frame.ts";
import { decodeValue, encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { Op } from "../src/protocol/ops.ts";
import { mapSharedSync } from "../ffi/mod.ts";
import type { BrokerStats } from "../src/broker/stats.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const IS_DENO = "Deno" in globalThis;

/** A broker in its own process (the runtime this test runs under) on a fresh config. */
async function brokerProcess(config: Record<string, unknown>) {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "b.sock");
  const configPath = join(dir, "broker.json");
  writeFileSync(configPath, JSON.stringify({ listen, vms: [], ...config }));
  const { cmd, args } = cliCommand(["broker", "--config", configPath]);
  const child: ChildProcess = spawn(cmd, args, {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, VBUS_LOG: "warn" },
  });
  let stderr = "";
  child.stderr!.on("data", (d) => stderr += d);
  let exit: { code: number | null; signal: string | null } | undefined;
  const exited = new Promise<void>((r) =>
    child.on("exit", (code, signal) => {
      exit = { code, signal };
      r();
    })
  );
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exit) throw new Error(`broker exited at start: ${JSON.stringify(exit)} ${stderr}`);
    if (Date.now() > deadline) throw new Error(`broker did not listen on ${listen}: ${stderr}`);
    const ok = await new Promise<boolean>((r) => {
      const s = netConnect(listen, () => {
        s.destroy();
        r(true);
      });
      s.on("error", () => r(false));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    listen,
    pid: child.pid!,
    get exit() {
      return exit;
    },
    get stderr() {
      return stderr;
    },
    async stop() {
      if (!exit) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
      cleanup();
    },
  };
}

/** A host client speaking raw frames: what a hostile local process would do. */
function rawClient(listen: string) {
  const frames: { op: number; head: Record<string, unknown> }[] = [];
  const decoder = new FrameDecoder(1 << 24);
  let ended = false;
  const socket: Socket = netConnect(listen);
  const connected = new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.on(
    "data",
    (chunk: Uint8Array) =>
      decoder.push(
        chunk,
        (f) => frames.push({ op: f.op, head: decodeValue(f.head) as Record<string, unknown> }),
      ),
  );
  socket.on("close", () => ended = true);
  socket.on("error", () => {});
  return {
    socket,
    frames,
    connected,
    get ended() {
      return ended;
    },
    send(op: number, head: unknown) {
      socket.write(encodeFrame(op, encodeValue(head)));
    },
    close() {
      socket.destroy();
    },
  };
}

/** Shared-memory regions a process holds: mappings and fds of vbus region files or memfds. */
function regionsOf(pid: number): number {
  const isRegion = (p: string) => /\/dev\/shm\/vbus-|\/memfd:vbus-/.test(p);
  const mapped = new Set<string>();
  for (const line of readFileSync(`/proc/${pid}/maps`, "utf8").split("\n")) {
    const cols = line.trim().split(/\s+/);
    const path = cols.slice(5).join(" ");
    if (isRegion(path)) mapped.add(`${cols[3]}:${cols[4]}`); // device:inode
  }
  let fds = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (isRegion(readlinkSync(`/proc/${pid}/fd/${fd}`))) fds++;
    } catch { /* closed meanwhile */ }
  }
  return mapped.size + fds;
}

function socketFds(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("socket:")) n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

test("hostile host: a client that shrinks its region cannot crash the broker (no SIGBUS)", async () => {
  const broker = await brokerProcess({});
  const attacker = rawClient(broker.listen);
  const pub = await connect({ server: broker.listen, timeout: 5000, reconnect: false });
  const sub = await connect({ server: broker.listen, timeout: 5000, reconnect: false });
  let truncated = "not tried";
  try {
    await attacker.connected;
    attacker.send(Op.Hello, { v: 1, features: [], nonce: 7, shm: { want: true } });
    await waitFor(() => attacker.frames.some((f) => f.op === Op.Welcome), "WELCOME");
    const shm = attacker.frames.find((f) => f.op === Op.Welcome)!.head.shm as {
      ok: boolean;
      path: string;
      size: number;
    };
    assert.equal(shm.ok, true, "the attacker got a region");
    const mapping = mapSharedSync(shm.path, shm.size); // as a client maps it
    // The attack: open the region read/write (a client must, to map it) and shrink it to 0.
    const fd = openSync(shm.path, "r+");
    try {
      ftruncateSync(fd, 0);
      truncated = "shrunk to 0 bytes";
    } catch (err) {
      truncated = (err as NodeJS.ErrnoException).code ?? String(err);
    } finally {
      closeSync(fd);
    }
    // Make the broker touch the region: a message for the attacker's subscription goes into
    // its inbound ring.
    attacker.send(Op.Sub, [1, "victim.ring", null]);
    await new Promise((r) => setTimeout(r, 100));
    // (If the broker dies, publishing fails: the assertion below reports how it died.)
    await pub.publish("victim.ring", { hello: "attacker" }).then(() => pub.flush()).catch(() => {});
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(
      broker.exit,
      undefined,
      `the broker died: ${JSON.stringify(broker.exit)} (truncate: ${truncated})`,
    );
    assert.equal(truncated, "EPERM", "the region cannot be shrunk");
    // Other clients keep working, on their own sealed regions.
    const it = sub.subscribe<{ n: number }>("still.up");
    await sub.flush();
    for (let n = 0; n < 3; n++) await pub.publish("still.up", { n });
    assert.deepEqual((await take(it, 3)).map((m) => m.n), [0, 1, 2]);
    assert.equal(sub.dataPath, "ring", "host clients map their sealed region through /proc");
    const stats = (await pub.request<BrokerStats>("$VBUS.STATS", null, { timeout: 2000 })).data;
    assert.ok(stats.host.ringMsgsIn >= 3, `ring messages in: ${stats.host.ringMsgsIn}`);
    mapping.unmap();
  } finally {
    attacker.close();
    await pub.close();
    await sub.close();
    await broker.stop();
  }
});

test("hostile host: idle connections that never say HELLO get no shared-memory region", async () => {
  const broker = await brokerProcess({});
  const idle: ReturnType<typeof rawClient>[] = [];
  try {
    const regionsBefore = regionsOf(broker.pid);
    for (let i = 0; i < 50; i++) idle.push(rawClient(broker.listen));
    await Promise.all(idle.map((c) => c.connected));
    // The broker accepts in order: once a later connection is answered, all 50 were accepted.
    const probe = rawClient(broker.listen);
    idle.push(probe);
    probe.send(Op.Hello, { v: 1, features: [], nonce: 1 });
    await waitFor(
      () => probe.frames.some((f) => f.op === Op.Welcome),
      "WELCOME on a 51st connection",
    );
    assert.ok(
      socketFds(broker.pid) >= 51,
      `the broker holds the connections (${socketFds(broker.pid)} sockets)`,
    );
    const regionsIdle = regionsOf(broker.pid);
    assert.equal(
      regionsIdle,
      regionsBefore,
      `50 idle connections hold ${regionsIdle - regionsBefore} regions`,
    );
    // A HELLO without an shm offer (the probe's) got none either; one that asks gets one.
    idle[1].send(Op.Hello, { v: 1, features: [], nonce: 2, shm: { want: true } });
    await waitFor(() => idle[1].frames.some((f) => f.op === Op.Welcome), "WELCOME (shm)");
    assert.ok(
      regionsOf(broker.pid) > regionsBefore,
      "a HELLO that asks for shared memory gets a region",
    );
    idle[1].close();
    await waitFor(
      () => regionsOf(broker.pid) === regionsBefore,
      "its region released with the session",
    );
  } finally {
    for (const c of idle) c.close();
    await broker.stop();
  }
});

test("hostile host: beyond limits.maxHostConnections a connection gets one ERR and is closed", async () => {
  const lab = await startLab({ shm: true, vms: [], limits: { maxHostConnections: 8 } });
  const clients = [];
  const extra: ReturnType<typeof rawClient>[] = [];
  try {
    for (let i = 0; i < 8; i++) clients.push(await lab.host({ reconnect: false }));
    const ninth = rawClient(lab.listen);
    extra.push(ninth);
    await ninth.connected;
    await waitFor(() => ninth.ended, "the 9th connection is closed by the broker");
    const errs = ninth.frames.filter((f) => f.op === Op.Err);
    assert.equal(ninth.frames.length, 1, "exactly one frame");
    assert.equal(errs.length, 1);
    assert.equal(errs[0].head.code, "SESSION_CLOSED");
    assert.match(String(errs[0].head.message), /limits\.maxHostConnections/);
    assert.match(String(errs[0].head.message), /at most 8/);
    const host = lab.broker.stats().host;
    assert.equal(host.closed["TOO_MANY_CONNECTIONS"], 1);
    // The first eight still work.
    const it = clients[7].subscribe<number>("still.served");
    await clients[7].flush();
    await clients[0].publish("still.served", 42);
    assert.deepEqual(await take(it, 1), [42]);
    // A slot freed by a client that leaves is available again.
    await clients.shift()!.close();
    await waitFor(() => lab.broker.stats().host.sessions >= 8, "sessions counted");
    const again = await lab.host({ reconnect: false, timeout: 3000 });
    clients.push(again);
    assert.equal(again.info?.identity, "host");
  } finally {
    for (const c of extra) c.close();
    for (const c of clients) await c.close();
    await lab.close();
  }
});

test("hostile host: a client of another user cannot open the broker's region; it uses the port stream and says why", async (t) => {
  const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p));
  if (process.getuid?.() !== 0 || !setpriv) {
    t.skip("needs root and setpriv to run a client as another user (uid 65534)");
    return;
  }
  const lab = await startLab({ shm: true, vms: [] });
  const { dir: home, cleanup } = tempDir();
  try {
    // Let uid 65534 reach the socket; nothing else of the broker's is opened up.
    chmodSync(lab.dir, 0o755);
    chmodSync(lab.listen, 0o777);
    chmodSync(home, 0o777);
    const script = join(home, "client.ts");
    writeFileSync(
      script,
      `import { connect } from ${
        JSON.stringify(new URL("../src/client/bus.ts", import.meta.url).href)
      };
      const bus = await connect({ server: ${
        JSON.stringify(lab.listen)
      }, timeout: 5000, reconnect: false });
      const it = bus.subscribe("other.user");
      await bus.flush();
      await bus.publish("other.user", 7);
      for await (const m of it) { console.log(JSON.stringify({ path: bus.dataPath, data: m.data })); break; }
      await bus.close();`,
    );
    chmodSync(script, 0o644);
    const runtime = IS_DENO
      ? [
        join(ROOT, "node_modules/.bin/deno"),
        "run",
        "-A",
        `--config=${join(ROOT, "deno.json")}`,
        script,
      ]
      : [join(ROOT, "node_modules/.bin/bun"), script];
    const child = spawn(setpriv, ["--reuid=65534", "--regid=65534", "--clear-groups", ...runtime], {
      env: { ...process.env, HOME: home, DENO_DIR: join(home, "deno"), VBUS_LOG: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (d) => out += d);
    child.stderr!.on("data", (d) => out += d);
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const code = await new Promise((r) => child.on("exit", r));
    clearTimeout(timer);
    assert.equal(code, 0, out);
    assert.match(out, /"path":"stream","data":7/);
    assert.match(
      out,
      /only be opened by that process's user/,
      "the client says why it uses the stream",
    );
  } finally {
    cleanup();
    await lab.close();
  }
});

test("hostile host: connections that never say HELLO cannot lock honest host clients out", async () => {
  const lab = await startLab({
    vms: [],
    limits: { maxHostConnections: 8, helloTimeoutMs: 60_000 },
  });
  const idle: ReturnType<typeof rawClient>[] = [];
  const honest = [];
  try {
    // A local process takes every slot and says nothing.
    for (let i = 0; i < 8; i++) {
      const c = rawClient(lab.listen);
      idle.push(c);
      await c.connected;
    }
    await delay(100);
    // Honest clients still get in, one idle connection making room for each.
    for (let i = 0; i < 3; i++) honest.push(await lab.host({ reconnect: false, timeout: 3000 }));
    const it = honest[0].subscribe<number>("served");
    await honest[0].flush();
    await honest[2].publish("served", 7);
    assert.deepEqual(await take(it, 1), [7]);
    await waitFor(() => idle.filter((c) => c.ended).length === 3, "three idle connections evicted");
    assert.equal(lab.broker.stats().host.closed["EVICTED_BEFORE_HELLO"], 3);
  } finally {
    for (const c of idle) c.close();
    for (const c of honest) await c.close();
    await lab.close();
  }
});

/**
 * The monitoring endpoint (config `http`) of a real broker with simulated VMs streaming:
 * `/healthz`, `/stats` (each host client on its own, subscriptions, ring fill, drops by
 * reason, bridges), `/history`, `/metrics` checked by Prometheus's own `promtool check metrics`
 * (Debian's prometheus package), its refusals (methods, a non-loopback Host), what makes it
 * unhealthy, and the dashboard rendered by a real headless Chromium (Debian's chromium): its
 * DOM text after the page's JS ran, and a screenshot in the test's temp dir.
 *
 * Without promtool or chromium those tests skip and say why, unless run as root or under
 * CI=true: then they fail (npm test installs both as root).
 * @module
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, unlinkSync } from "node:fs";
import { request } from "node:http";
import { connect as netConnect, createServer } from "node:net";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { Broker } from "../src/broker/broker.ts";
import { ConfigError, parseConfig, validateConfig } from "../src/broker/config.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { createLogger } from "../src/util/log.ts";
import { delay, startLab, tempDir, waitFor } from "./helpers.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { Op, PROTOCOL_VERSION } from "../src/protocol/ops.ts";
import type { HealthReport } from "../src/monitor/health.ts";
import type { StatsDocument } from "../src/monitor/monitor_server.ts";
import type { Sample } from "../src/monitor/rate_history.ts";
import { requireTool, startStreamingLab } from "./fixtures/monitor_lab.ts";

const HOSTILE_NAME = `<img src=x onerror="document.title='pwned'">`;

/** A GET (or another method) with full control of the Host header. */
function get(
  url: string,
  opts: { method?: string; host?: string } = {},
): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({
      host: u.hostname,
      port: u.port,
      path: u.pathname + u.search,
      method: opts.method ?? "GET",
      headers: opts.host ? { host: opts.host } : {},
    }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => body += d);
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers as Record<string, string>,
          body,
        }));
    });
    req.on("error", reject);
    req.setTimeout(5000, () => req.destroy(new Error(`${url}: no answer within 5 s`)));
    req.end();
  });
}

async function getJson<T>(url: string): Promise<{ status: number; json: T }> {
  const r = await get(url);
  assert.match(r.headers["content-type"] ?? "", /^application\/json/, url);
  return { status: r.status, json: JSON.parse(r.body) as T };
}

const problemOf = (text: string) => {
  try {
    parseConfig(text, "broker.jsonc");
  } catch (err) {
    assert.ok(err instanceof ConfigError, `not a ConfigError: ${err}`);
    return (err as Error).message;
  }
  return "";
};

test("monitoring config: off by default; loopback unless an address is spelled out; host:port errors name file and key", () => {
  const vms = `"vms": []`;
  assert.equal(parseConfig(`{ ${vms} }`).http, undefined);
  assert.deepEqual(parseConfig(`{ "http": "127.0.0.1:8222", ${vms} }`).http, {
    host: "127.0.0.1",
    port: 8222,
    loopback: true,
  });
  assert.deepEqual(parseConfig(`{ "http": 8222, ${vms} }`).http, {
    host: "127.0.0.1",
    port: 8222,
    loopback: true,
  });
  assert.deepEqual(parseConfig(`{ "http": "localhost:9000", ${vms} }`).http?.host, "127.0.0.1");
  assert.deepEqual(parseConfig(`{ "http": "[::1]:0", ${vms} }`).http, {
    host: "::1",
    port: 0,
    loopback: true,
  });
  assert.deepEqual(parseConfig(`{ "http": "0.0.0.0:8222", ${vms} }`).http?.loopback, false);
  assert.match(
    problemOf(`{ "http": ":8222", ${vms} }`),
    /^broker\.jsonc: http: ":8222" has no address: .*127\.0\.0\.1:8222.*0\.0\.0\.0:8222/,
  );
  assert.match(
    problemOf(`{ "http": "monitor.example.com:8222", ${vms} }`),
    /^broker\.jsonc: http: "monitor\.example\.com" is not an IP address/,
  );
  assert.match(
    problemOf(`{ "http": "127.0.0.1:99999", ${vms} }`),
    /^broker\.jsonc: http: port "99999" must be a number from 0 to 65535/,
  );
  assert.match(
    problemOf(`{ "http": "127.0.0.1", ${vms} }`),
    /^broker\.jsonc: http: "127\.0\.0\.1" has no port/,
  );
  assert.match(problemOf(`{ "http": "::1:8222", ${vms} }`), /^broker\.jsonc: http: .*brackets/);
  assert.match(problemOf(`{ "http": true, ${vms} }`), /^broker\.jsonc: http: must be "HOST:PORT"/);
});

test("monitoring endpoint: /healthz, /stats with each host client on its own, /history, refusals, unhealthy when the host socket is gone", async () => {
  const lab = await startStreamingLab({ bridge: true });
  try {
    const health = await getJson<HealthReport>(lab.url + "healthz");
    assert.equal(health.status, 200);
    assert.equal(health.json.status, "ok");
    assert.deepEqual(health.json.problems, []);
    assert.deepEqual(health.json.vms, { configured: 2, connected: 2 });
    assert.equal(health.json.hostClients, 2);

    const { json: stats } = await getJson<StatsDocument>(lab.url + "stats");
    assert.equal(stats.broker.pid, process.pid);
    assert.equal(stats.broker.listen, lab.listen);
    assert.equal(stats.broker.running, true);
    const vm1 = stats.vms.find((v) => v.name === "vm1")!;
    const vm2 = stats.vms.find((v) => v.name === "vm2")!;
    assert.ok(vm1.msgsIn > 0 && vm2.msgsIn > 0, "both VMs' publishes counted");
    assert.equal(vm1.path, "stream");
    assert.equal(vm2.path, "ring");
    assert.deepEqual(vm2.drops, { too_large: 1 });
    // Each host client on its own: its own counters, subscriptions with their counts, rings.
    const hostSessions = stats.sessions.filter((s) => s.endpoint === "host");
    assert.equal(hostSessions.length, 2);
    const byClient = (name: string) => hostSessions.find((s) => s.client.endsWith(` ${name}`));
    const collector = byClient("collector")!, archiver = byClient("archiver")!;
    assert.ok(collector && archiver, `host clients: ${hostSessions.map((s) => s.client)}`);
    const collectorRings = collector.rings!, collectorStats = collector.stats!;
    const archiverStats = archiver.stats!;
    assert.equal(collector.path, "ring");
    assert.equal(collector.wake, "doorbell");
    assert.equal(collectorRings.inbound.capacityBytes > 0, true);
    assert.ok(collectorRings.inbound.usedBytes <= collectorRings.inbound.capacityBytes);
    assert.equal(archiver.path, "stream");
    assert.equal(archiver.rings, undefined);
    assert.deepEqual(collector.subjects.map((s) => s.subject), ["sensors.>"]);
    assert.ok(collector.subjects[0].msgs > 0, "per-subscription count");
    assert.ok(archiver.subjects[0].msgs > 0 && archiver.subjects[0].subject === "sensors.vm1.>");
    assert.ok(collectorStats.msgsOut > 0 && archiverStats.msgsOut > 0);
    assert.ok(
      collectorStats.msgsOut > archiverStats.msgsOut,
      "the collector gets both VMs' streams, the archiver only vm1's: counters are per client",
    );
    assert.equal(collectorStats.msgsIn, 1, "the collector published the one big message");
    assert.equal(typeof collector.backlogBytes, "number");
    assert.equal(stats.host.subscriptions, 2);
    assert.ok(stats.host.msgsOut >= collectorStats.msgsOut + archiverStats.msgsOut - 50);
    // The VM's session: its ring fill (vm2 is on the ring path, vm1 on the port stream).
    const vm2Session = stats.sessions.find((s) => s.endpoint === "vm2")!;
    assert.equal(vm2Session.rings!.inbound.capacityBytes > 0, true);
    assert.deepEqual(vm2Session.subjects.map((s) => s.subject), ["big.>"]);
    assert.equal(vm2Session.subjects[0].msgs, 1);
    // The bridge (configured towards a port where no NATS listens): present, disconnected.
    assert.equal(stats.bridges.length, 1);
    assert.equal(stats.bridges[0].name, "nats");
    assert.equal(stats.bridges[0].connected, false);

    const history = await getJson<{ fields: string[]; samples: Sample[] }>(lab.url + "history");
    assert.deepEqual(history.json.fields, ["msgsIn", "msgsOut", "bytesIn", "bytesOut", "dropped"]);
    assert.ok(history.json.samples.length >= 1);
    assert.deepEqual(Object.keys(history.json.samples[0].endpoints).sort(), ["host", "vm1", "vm2"]);

    // Read-only, and on loopback only for loopback names (DNS rebinding).
    assert.equal((await get(lab.url + "stats", { method: "POST" })).status, 405);
    const rebound = await get(lab.url + "stats", { host: `attacker.example:${lab.port}` });
    assert.equal(rebound.status, 403);
    assert.doesNotMatch(rebound.body, /vm1/);
    assert.equal((await get(lab.url + "stats", { host: `localhost:${lab.port}` })).status, 200);
    assert.equal((await get(lab.url + "stats", { host: `[::1]:${lab.port}` })).status, 200);
    assert.equal((await get(lab.url + "nope")).status, 404);

    // The broker runs but its socket file is gone: no host client can connect. Unhealthy.
    unlinkSync(lab.listen);
    const gone = await getJson<HealthReport>(lab.url + "healthz");
    assert.equal(gone.status, 503);
    assert.equal(gone.json.status, "unavailable");
    assert.match(gone.json.problems.join(";"), /host socket .*broker\.sock is gone/);
  } finally {
    await lab.close();
  }
});

test("/healthz is 503 while the broker drains (SIGTERM), before it stops", async () => {
  const lab = await startStreamingLab();
  // A subscriber that never reads: what is queued for it keeps the drain waiting.
  const socket = netConnect(lab.listen);
  try {
    await new Promise<void>((resolve, reject) =>
      socket.once("connect", resolve).once("error", reject)
    );
    socket.pause();
    socket.write(
      encodeFrame(Op.Hello, encodeValue({ v: PROTOCOL_VERSION, features: [], nonce: 1 })),
    );
    socket.write(encodeFrame(Op.Sub, encodeValue([1, "t", null])));
    await waitFor(
      () => lab.broker.stats().sessions.some((s) => s.subjects[0]?.subject === "t"),
      "the raw subscriber subscribed",
    );
    for (let i = 0; i < 40; i++) await lab.hosts.collector.publish("t", new Uint8Array(60_000));
    await lab.hosts.collector.flush();
    assert.equal((await get(lab.url + "healthz")).status, 200);
    const drained = lab.broker.drain(800);
    let during: { status: number; body: string } | undefined;
    const deadline = Date.now() + 700;
    while (Date.now() < deadline) {
      during = await get(lab.url + "healthz");
      if (during.status !== 200) break;
      await delay(20);
    }
    assert.equal(during?.status, 503, "unhealthy while draining");
    assert.match(JSON.parse(during!.body).problems.join(";"), /not serving \(draining/);
    assert.ok((await drained).pendingBytes > 0, "the drain waited for the subscriber");
  } finally {
    socket.destroy();
    await lab.close();
  }
});

test("host entry: the sum of each host client's own counters; connected and futex-woken while any client is", async () => {
  const lab = await startLab({ shm: true, vms: ["vm1"] });
  try {
    const futex = await lab.host({ wake: "futex", name: "futex-sub" });
    const doorbell = await lab.host({ name: "doorbell-sub" });
    futex.subscribe("t.a", { callback: () => {} });
    doorbell.subscribe("t.>", { callback: () => {} });
    await futex.flush();
    await doorbell.flush();
    const guest = await lab.vms.vm1.connect();
    for (let i = 0; i < 10; i++) await guest.publish(i < 4 ? "t.a" : "t.b", i);
    await guest.flush();
    await waitFor(() => lab.broker.stats().host.msgsOut === 14, "14 deliveries to host clients");
    const stats = lab.broker.stats();
    const mine = (name: string) => stats.sessions.find((s) => s.client.endsWith(` ${name}`))!;
    assert.equal(mine("futex-sub").wake, "futex");
    assert.equal(mine("doorbell-sub").wake, "doorbell");
    assert.equal(mine("futex-sub").stats!.msgsOut, 4);
    assert.equal(mine("doorbell-sub").stats!.msgsOut, 10);
    // The host entry no longer says what the last client to say HELLO did.
    assert.equal(stats.host.wake, "futex", "a futex subscriber is connected");
    assert.equal(stats.host.subscriptions, 2);
    await doorbell.close();
    await waitFor(() => lab.broker.stats().sessions.length === 2, "the doorbell client gone");
    const after = lab.broker.stats().host;
    assert.equal(after.connected, true, "the futex client is still connected");
    assert.equal(after.msgsOut, 14, "what a client that left counted stays in the total");
    assert.equal(after.sessions, 2);
    assert.equal(after.subscriptions, 1);
    await guest.close();
  } finally {
    await lab.close();
  }
});

test("monitoring endpoint: off without the config key; a taken port fails start and holds nothing; a non-loopback bind answers any Host", async () => {
  const { dir, cleanup } = tempDir();
  const quiet = createLogger("monitor-test", "silent");
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const cfg = (http: string | undefined, listen: string) =>
    validateConfig({
      listen: join(dir, listen),
      ...(http ? { http } : {}),
      vms: [{ name: "vm1", socket: join(dir, "vm1.sock") }],
    }, "monitor-test");
  // A port that is certainly taken: ours.
  const squatter = createServer();
  await new Promise<void>((r) => squatter.listen(0, "127.0.0.1", () => r()));
  const taken = (squatter.address() as { port: number }).port;
  const brokers: Broker[] = [];
  const broker = (http: string | undefined, listen: string) => {
    const b = new Broker(cfg(http, listen), { logger: quiet, hostShm: false });
    brokers.push(b);
    return b;
  };
  try {
    const off = broker(undefined, "a.sock");
    await off.start();
    assert.equal(off.monitorAddress, undefined, "no endpoint unless configured");
    await off.stop();
    const refused = broker(`127.0.0.1:${taken}`, "b.sock");
    await assert.rejects(refused.start(), (err: Error) => {
      assert.match(
        err.message,
        new RegExp(`cannot listen on http 127\\.0\\.0\\.1:${taken}: .*config key "http"`),
      );
      return true;
    });
    assert.equal(existsSync(join(dir, "b.sock")), false, "the failed broker's host socket is gone");
    // The failed start released vm1's lock: a broker on every interface starts (any Host).
    const open = broker("0.0.0.0:0", "c.sock");
    await open.start();
    const r = await get(`http://127.0.0.1:${open.monitorAddress!.port}/healthz`, {
      host: "monitor.example:80",
    });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).status, "ok");
  } finally {
    for (const b of brokers) await b.stop();
    await new Promise<void>((r) => squatter.close(() => r()));
    await vm.stop();
    cleanup();
  }
});

test("/metrics: Prometheus text format that promtool check metrics accepts, with stable names and vm/path/reason labels", async (t) => {
  const promtool = requireTool(
    t,
    "promtool",
    [
      "/usr/bin/promtool",
      "/usr/local/bin/promtool",
      // Where npm test's setup unpacks it (scripts/test.mjs).
      fileURLToPath(new URL("../lab/build/prometheus/usr/bin/promtool", import.meta.url)),
    ],
    "apt-get install prometheus",
  );
  if (!promtool) return;
  const lab = await startStreamingLab({ bridge: true });
  try {
    const r = await get(lab.url + "metrics");
    assert.equal(r.status, 200);
    assert.equal(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    const check = spawnSync(promtool, ["check", "metrics"], {
      input: r.body,
      encoding: "utf8",
      timeout: 10_000,
    });
    assert.equal(check.status, 0, `promtool check metrics failed:\n${check.stdout}${check.stderr}`);
    assert.equal((check.stdout + check.stderr).trim(), "", "promtool found lint problems");
    const value = (series: string) => {
      const line = r.body.split("\n").find((l) => l.startsWith(series + " "));
      assert.ok(line, `no sample ${series}`);
      return Number(line.slice(series.length + 1));
    };
    assert.ok(value('vbus_messages_received_total{vm="vm1"}') > 0);
    assert.ok(value('vbus_messages_received_total{vm="vm2"}') > 0);
    assert.ok(value('vbus_messages_sent_total{vm="host"}') > 0);
    assert.equal(value('vbus_messages_dropped_total{vm="vm2",reason="too_large"}'), 1);
    assert.equal(value('vbus_messages_dropped_total{vm="vm1",reason="slow_consumer"}'), 0);
    assert.equal(value('vbus_data_path{vm="vm1",path="stream"}'), 1);
    assert.equal(value('vbus_data_path{vm="vm2",path="ring"}'), 1);
    assert.equal(value('vbus_data_path{vm="vm2",path="stream"}'), 0);
    assert.equal(value('vbus_connected{vm="vm1"}'), 1);
    assert.equal(value('vbus_sessions_open{vm="host"}'), 2);
    assert.ok(value('vbus_ring_capacity_bytes{vm="vm2",ring="inbound"}') > 0);
    assert.equal(value('vbus_subscriptions{vm="host"}'), 2);
    assert.equal(value('vbus_bridge_connected{bridge="nats"}'), 0);
    assert.match(r.body, /^vbus_info\{runtime="(bun|deno)\/[^"]+",version="[^"]+"\} 1$/m);
  } finally {
    await lab.close();
  }
});

/** Run chromium headless (the flags of the issue); resolves with its stdout. */
function chromium(bin: string, userDataDir: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--user-data-dir=${userDataDir}`,
      ...args,
    ], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    let out = "", err = "";
    child.stdout!.on("data", (d) => out += d);
    child.stderr!.on("data", (d) => err += d);
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL"); // its renderer and zygote too
      } catch { /* gone */ }
      reject(new Error(`chromium did not finish within 30 s:\n${err.slice(-2000)}`));
    }, 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`chromium exited ${code}:\n${err.slice(-2000)}`));
    });
  });
}

/** The text of the first element with `class="<cls>"` (possibly among others) after `from`. */
function textOf(html: string, from: number, cls: string): string {
  const m = new RegExp(`class="[^"]*\\b${cls}\\b[^"]*"[^>]*>([^<]*)<`).exec(html.slice(from));
  return m ? m[1] : "";
}

/** "1.2k msg/s" -> 1200. */
function rateValue(text: string): number {
  const m = /^([\d.]+)([kMG]?) msg\/s$/.exec(text.trim());
  if (!m) return NaN;
  return Number(m[1]) * ({ "": 1, k: 1e3, M: 1e6, G: 1e9 } as Record<string, number>)[m[2]];
}

test("dashboard: headless Chromium renders VMs, host clients, non-zero rates, drops and the bridge from the broker's own page", async (t) => {
  const bin = requireTool(
    t,
    "chromium",
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    "apt-get install chromium",
  );
  if (!bin) return;
  const lab = await startStreamingLab({ bridge: true, hostileName: HOSTILE_NAME });
  try {
    // The page and its files load nothing from elsewhere (and the browser is told so).
    const page = await get(lab.url);
    assert.equal(page.status, 200);
    assert.match(
      page.headers["content-security-policy"] ?? "",
      /default-src 'none'; script-src 'self'/,
    );
    for (const file of ["", "dashboard.js", "dashboard.css"]) {
      const body = (await get(lab.url + file)).body;
      const external = body.replace(/"http:\/\/www\.w3\.org\/2000\/svg"/g, "").match(
        /\b(https?:)?\/\/[a-z0-9.-]+/gi,
      );
      assert.equal(external, null, `${file || "index.html"} refers to ${external}`);
    }
    // Let the history have two samples (a second apart): the charts have rates from the start.
    const deadline = Date.now() + 5000;
    let sampled = 0;
    while (Date.now() < deadline) {
      // Two samples with every host client: their rates come from the history too.
      const h = JSON.parse((await get(lab.url + "history")).body) as { samples: Sample[] };
      sampled = h.samples.filter((x) => Object.keys(x.sessions).length >= 3).length;
      if (sampled >= 2) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(sampled >= 2, "/history samples each host client's own counters");
    const shot = join(lab.dir, "dashboard.png");
    // One run: the DOM after the page's JS ran for 2.5 s (its polls), and a screenshot.
    const dom = await chromium(bin, join(lab.dir, "chrome"), [
      "--virtual-time-budget=2500",
      "--window-size=1280,1000",
      "--hide-scrollbars",
      `--screenshot=${shot}`,
      "--dump-dom",
      lab.url,
    ]);
    assert.match(dom, /id="health" class="badge good">healthy</, "the health badge was filled in");
    for (const vm of ["vm1", "vm2"]) {
      const at = dom.indexOf(`data-endpoint="${vm}"`);
      assert.ok(at >= 0, `no card for ${vm}`);
      const rate = textOf(dom, at, "rate-in");
      assert.ok(rateValue(rate) > 0, `${vm}: messages in per second shown as "${rate}"`);
      assert.ok(dom.indexOf("<polyline", at) > at, `${vm}: no chart line`);
    }
    const vm2 = dom.indexOf('data-endpoint="vm2"');
    assert.match(dom.slice(vm2, vm2 + 3000), /too_large 1/);
    assert.match(dom.slice(vm2, vm2 + 400), /badge path-ring[^>]*>ring</);
    assert.match(dom, /<meter [^>]*value="[\d.]+"/, "ring fill meters");
    // Each host client on its own row, with rates; the hostile name is text, not markup.
    for (const client of ["collector", "archiver"]) {
      assert.match(dom, new RegExp(`<td>vbus-ts/[^<]* ${client}</td>`));
    }
    const collectorRow = dom.indexOf(" collector</td>");
    assert.ok(
      rateValue(textOf(dom, collectorRow, "rate-out") + " msg/s") > 0,
      "the collector's out rate",
    );
    assert.ok(
      dom.includes("&lt;img src=x onerror=\"document.title='pwned'\"&gt;"),
      "the hostile name shown as text",
    );
    assert.doesNotMatch(dom, /<img/);
    assert.doesNotMatch(dom, /<title>pwned/);
    // Drops by reason, and the bridge card.
    assert.match(dom, /<td>vm2<\/td><td>too_large<\/td><td class="num">1<\/td>/);
    assert.match(dom, /data-bridge="nats"[^]*disconnected/);
    const png = readFileSync(shot);
    assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG");
    assert.equal(png.readUInt32BE(16), 1280, "screenshot width");
    assert.ok(png.length > 20_000, `screenshot of ${png.length} bytes: a blank page?`);
    console.log(`dashboard screenshot: ${shot} (${png.length} bytes)`);
  } finally {
    await lab.close();
  }
});

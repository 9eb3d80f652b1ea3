/**
 * Permanent connect errors fail at once with what to do, instead of being retried until the
 * connect timeout like a broker that is not up yet: a permission Deno was not given (the
 * README's permission list once lacked --allow-net, and the failure took 10 s to appear), a
 * guest port device that does not exist, a socket this user may not open, and (as the nats CLI
 * does) a broker socket that is missing or stale, unless the caller asked to wait
 * (`waitOnFirstConnect`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, linkSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import process from "node:process";
import { delay, startLab, tempDir } from "./helpers.ts";
import { runClient, startClient } from "./fixtures/run_client.ts";
import { connect } from "../src/client/bus.ts";

/** Well under the 10 s connect timeout every case below sets. */
const AT_ONCE_MS = 4000;

const clientSource = (listen: string) => `
  import { connect } from "vbus";
  try {
    const bus = await connect({ server: ${JSON.stringify(listen)}, timeout: 10_000 });
    console.log("CONNECTED", bus.dataPath);
    await bus.close();
  } catch (err) {
    console.log("FAILED:", err.message);
    process.exit(3);
  }
`;

test("connect errors: Deno without --allow-net fails at once and names the permissions a host client needs", async () => {
  const lab = await startLab({ vms: [] });
  try {
    // The permissions the README once listed for a host client.
    const run = await runClient(clientSource(lab.listen).replace("process.exit", "Deno.exit"), {
      denoFlags: ["--allow-read", "--allow-write", "--allow-env", "--allow-ffi"],
    });
    assert.equal(run.code, 3, run.out);
    assert.match(run.out, /FAILED: could not connect: Requires net access to "unix:/);
    assert.match(run.out, /a host client needs --allow-net --allow-read --allow-write --allow-env/);
    assert.doesNotMatch(run.out, /within 10000 ms/, "not retried until the timeout");
    // The README's list now: it connects.
    const ok = await runClient(clientSource(lab.listen).replace("process.exit", "Deno.exit"), {
      denoFlags: ["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-ffi"],
    });
    assert.equal(ok.code, 0, ok.out);
    assert.match(ok.out, /CONNECTED stream/);
  } finally {
    await lab.close();
  }
});

test("connect errors: a Deno host client without --allow-ffi loads the library and connects on the port stream", async () => {
  const lab = await startLab({ vms: [] });
  try {
    // Loading the library must not touch FFI: only shared memory needs it (an idle ring
    // poller's sched_yield once called Deno.dlopen when the module was imported).
    const run = await runClient(
      clientSource(lab.listen).replace("process.exit", "Deno.exit").replace(
        "timeout: 10_000",
        "timeout: 10_000, shm: false",
      ),
      { denoFlags: ["--allow-net", "--allow-read", "--allow-write", "--allow-env"] },
    );
    assert.equal(run.code, 0, run.out);
    assert.match(run.out, /CONNECTED stream/);
  } finally {
    await lab.close();
  }
});

test("connect errors: a permission lost while connected ends reconnecting at once (Deno), with the error", async () => {
  const lab = await startLab({ vms: [] });
  const child = startClient(
    `
    import { connect } from "vbus";
    const bus = await connect({ server: ${
      JSON.stringify(lab.listen)
    }, timeout: 5000, reconnectDelay: 20 });
    Deno.permissions.revokeSync({ name: "net" });
    console.log("READY");
    const err = await bus.closed;
    console.log("CLOSED:", err?.message);
  `,
    { denoFlags: ["-A"] },
  );
  try {
    await child.waitFor("READY");
    const t0 = Date.now();
    await lab.broker.stop(); // the session ends; reconnecting needs the permission it lost
    const run = await child.exited;
    assert.equal(run.code, 0, run.out);
    assert.match(
      run.out,
      /CLOSED: could not reconnect: Requires net access.*a host client needs --allow-net/,
    );
    assert.ok(Date.now() - t0 < AT_ONCE_MS, `at once (${Date.now() - t0} ms)`);
  } finally {
    child.kill();
    await lab.close();
  }
});

test("connect errors: a guest port device that does not exist fails at once with the hint", async () => {
  const t0 = Date.now();
  await assert.rejects(
    connect({ port: "/dev/virtio-ports/vbus-test-no-such-port", shm: false, timeout: 10_000 }),
    (e: unknown) => {
      const m = (e as Error).message;
      assert.match(
        m,
        /^could not connect: cannot open \/dev\/virtio-ports\/vbus-test-no-such-port/,
      );
      assert.match(m, /no such port: is the VM started with the vbus virtserialport/);
      return true;
    },
  );
  assert.ok(Date.now() - t0 < AT_ONCE_MS, `at once (${Date.now() - t0} ms)`);
});

test("connect errors: a socket this user may not open fails at once (EACCES), saying who may connect", async (t) => {
  const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p));
  if (process.getuid?.() !== 0 || !setpriv) {
    t.skip("needs root and setpriv to run a client as another user (uid 65534)");
    return;
  }
  const lab = await startLab({ vms: [] });
  const home = tempDir();
  try {
    chmodSync(lab.dir, 0o755);
    chmodSync(lab.listen, 0o600); // the broker's user only
    chmodSync(home.dir, 0o777);
    const run = await runClient(clientSource(lab.listen), {
      prefix: [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"],
      scriptDir: home.dir,
      env: { HOME: home.dir, DENO_DIR: `${home.dir}/deno` },
    });
    assert.equal(run.code, 3, run.out);
    assert.match(run.out, /FAILED: could not connect: cannot connect to .*EACCES/);
    assert.match(run.out, /listenMode and listenGroup say who may/);
    assert.ok(run.ms < AT_ONCE_MS + 2000, `at once (${run.ms} ms, with the runtime's start)`);
  } finally {
    home.cleanup();
    await lab.close();
  }
});

test("connect errors: no socket file at the path fails at once (ENOENT), naming the path and what to do", async () => {
  const { dir, cleanup } = tempDir();
  const missing = join(dir, "no-broker.sock");
  try {
    const t0 = Date.now();
    await assert.rejects(connect({ server: missing, timeout: 10_000 }), (e: unknown) => {
      const m = (e as Error).message;
      assert.ok(
        m.startsWith(`could not connect: cannot connect to ${missing}:`),
        `names the path: ${m}`,
      );
      assert.match(m, /ENOENT/);
      assert.match(m, /there is no socket file: is `vbus broker`.*running\?/);
      assert.match(m, /waitOnFirstConnect: true/);
      return true;
    });
    assert.ok(Date.now() - t0 < AT_ONCE_MS, `at once (${Date.now() - t0} ms)`);
  } finally {
    cleanup();
  }
});

test("connect errors: a socket file no broker listens on fails at once (ECONNREFUSED), saying it is stale", async () => {
  const { dir, cleanup } = tempDir();
  const live = join(dir, "live.sock");
  const stale = join(dir, "stale.sock");
  try {
    // A second name for a listening socket outlives the listener: what a killed broker leaves.
    const server = createServer();
    await new Promise<void>((r) => server.listen(live, r));
    linkSync(live, stale);
    await new Promise<void>((r) => server.close(() => r()));
    const t0 = Date.now();
    await assert.rejects(connect({ server: stale, timeout: 10_000 }), (e: unknown) => {
      const m = (e as Error).message;
      assert.ok(
        m.startsWith(`could not connect: cannot connect to ${stale}:`),
        `names the path: ${m}`,
      );
      assert.match(m, /ECONNREFUSED|connection refused/i);
      assert.match(m, /left over from a broker that is not running/);
      return true;
    });
    assert.ok(Date.now() - t0 < AT_ONCE_MS, `at once (${Date.now() - t0} ms)`);
  } finally {
    cleanup();
  }
});

test("connect errors: waitOnFirstConnect waits for a broker whose socket appears later", async () => {
  const lab = await startLab({ vms: [] });
  try {
    await lab.broker.stop(); // its socket is gone
    assert.ok(!existsSync(lab.listen), "the stopped broker removed its socket");
    const t0 = Date.now();
    const connecting = connect({ server: lab.listen, timeout: 10_000, waitOnFirstConnect: true });
    await delay(500);
    await lab.restartBroker();
    const bus = await connecting;
    assert.ok(Date.now() - t0 >= 500, "it waited for the broker");
    assert.equal(bus.info?.identity, "host");
    await bus.close();
    // Waiting stays bounded by `timeout`.
    await lab.broker.stop();
    const t1 = Date.now();
    await assert.rejects(
      connect({ server: lab.listen, timeout: 1000, waitOnFirstConnect: true }),
      (e: unknown) => {
        assert.match(
          (e as Error).message,
          /^could not connect within 1000 ms: cannot connect .*ENOENT/,
        );
        return true;
      },
    );
    assert.ok(Date.now() - t1 >= 900, `waited for the timeout (${Date.now() - t1} ms)`);
  } finally {
    await lab.close();
  }
});

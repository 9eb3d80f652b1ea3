/**
 * `$VBUS.RELOAD` (and `reload()`, SIGHUP's path) on a broker whose configuration was given
 * inline (`parseConfig` text, no file): there is nothing to read again. It once tried to read a
 * file named `<inline>` in the working directory; now it answers that there is no file to
 * reload from, and the broker keeps running with its configuration. A real broker, a real
 * socket, a real client.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { tempDir } from "./helpers.ts";
import { connect } from "../src/client/bus.ts";
import { Broker, RELOAD_SUBJECT } from "../src/broker/broker.ts";
import { parseConfig } from "../src/broker/config.ts";
import { createLogger } from "../src/util/log.ts";

type ReloadAnswer = { ok: true; changes: string[] } | { ok: false; error: string };

test("reload inline: $VBUS.RELOAD says there is no file to reload from, and the broker keeps its config", async () => {
  const { dir, cleanup } = tempDir();
  const listen = join(dir, "broker.sock");
  const broker = new Broker(parseConfig(JSON.stringify({ listen, vms: [] })), {
    logger: createLogger("test-broker", "silent"),
    hostShm: false,
  });
  await broker.start();
  const before = broker.config;
  const bus = await connect({ server: listen, timeout: 5000, shm: false });
  try {
    const { data } = await bus.request<ReloadAnswer>(RELOAD_SUBJECT, null, { timeout: 5000 });
    assert.equal(data.ok, false, JSON.stringify(data));
    const error = (data as { error: string }).error;
    assert.match(error, /given inline, not read from a file, so there is no file to reload from/);
    assert.doesNotMatch(error, /cannot read|ENOENT/, "no file named <inline> was looked for");
    // The direct call (SIGHUP's path) says the same.
    await assert.rejects(broker.reload(), /no file to reload from/);
    // Still running, same configuration, and the session still works.
    assert.equal(broker.config, before);
    const sub = bus.subscribe<number>("after.reload", { max: 1 });
    await bus.flush();
    await bus.publish("after.reload", 7);
    for await (const m of sub) assert.equal(m.data, 7);
    // A configuration passed in is still applied (the inline broker may be reloaded that way).
    const changes = await broker.reload(
      parseConfig(JSON.stringify({ listen, vms: [], drainTimeoutMs: 1234 })),
    );
    assert.equal(broker.config.drainTimeoutMs, 1234, JSON.stringify(changes));
  } finally {
    await bus.close();
    await broker.stop();
    cleanup();
  }
});

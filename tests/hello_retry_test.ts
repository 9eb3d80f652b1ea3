/**
 * A HELLO that gets no WELCOME is sent again on a fresh port, well within `connect()`'s
 * timeout. In a real guest a HELLO can be lost: a process that opens the port right after
 * `vbus agent` exits talks into the VM connection the broker is closing (its agent mux), and
 * before this the client then waited its whole connect timeout (CI saw a 120 s one expire in
 * tests/agent_bench_test.ts). Here the loss is a unix-socket hop of the test's own in front
 * of a real broker: its first connection swallows everything, later ones are passed through.
 * Runs under `deno test -A` and `bun test`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect as netConnect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { startLab } from "./helpers.ts";
import { connect } from "../src/client/bus.ts";
import { HANDSHAKE_ATTEMPT_MS } from "../src/client/connection.ts";

test("hello retry: a HELLO lost on the first connection is sent again, and the client connects", async () => {
  const lab = await startLab({ vms: [] });
  const hop = join(lab.dir, "lossy.sock");
  let connections = 0;
  const sockets: Socket[] = [];
  const server = createServer((client) => {
    sockets.push(client);
    if (++connections === 1) {
      client.on("data", () => {}); // swallowed: no WELCOME will ever come on this one
      return;
    }
    const upstream = netConnect(lab.listen);
    sockets.push(upstream);
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise<void>((resolve) => server.listen(hop, resolve));
  try {
    const t0 = Date.now();
    // A timeout far above one attempt: before the fix, the first attempt used all of it.
    const bus = await connect({ server: hop, timeout: 4 * HANDSHAKE_ATTEMPT_MS, shm: false });
    const took = Date.now() - t0;
    assert.ok(connections >= 2, `connected through ${connections} connection(s)`);
    assert.ok(took < 3 * HANDSHAKE_ATTEMPT_MS, `connected after ${took} ms`);
    const sub = bus.subscribe<string>("retry.check", { max: 1 });
    await bus.publish("retry.check", "through");
    for await (const m of sub) assert.equal(m.data, "through");
    await bus.close();
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await lab.close();
  }
});

// Shared by the vbus systems: a `vbus broker` process per case (host socket in the case's
// temp dir), clients connecting as host-local clients through it. `shm` picks the data path:
// true = shared-memory rings (one region per client session), false = the port stream.
// `wake` picks how the broker wakes a parked client on rings: doorbell frames or futex.
import { writeFileSync } from "node:fs";
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";

export function vbusSystem(
  name: string,
  shm: boolean,
  wake: "doorbell" | "futex" = "doorbell",
): BenchSystem {
  return {
    name,
    describe: !shm
      ? "vbus broker, host clients on the port stream (unix socket, same framing as virtio-serial)"
      : wake === "futex"
      ? "vbus broker, host clients on shared-memory rings, woken by FUTEX_WAKE (a Worker sleeps per client)"
      : "vbus broker, host clients on shared-memory rings (msgpackr in place, doorbells on the socket)",
    peer: false,
    nativeValues: true,

    async start(ctx: ServerContext) {
      const listen = `${ctx.tmpDir}/vbus.sock`;
      const conf = `${ctx.tmpDir}/vbus.json`;
      writeFileSync(conf, JSON.stringify({ listen, vms: [] }));
      const child = ctx.spawnScript(
        "vbus-broker",
        "src/cli/main.ts",
        ["broker", "--config", conf],
        { VBUS_LOG: "warn" },
      );
      await ctx.waitForPath(listen, 15000, child);
      return { endpoint: { listen }, stop: () => child.kill() };
    },

    async open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
      const { connect } = await import("../../mod.ts");
      const bus = await connect({
        server: String(endpoint.listen),
        shm,
        reconnect: false,
        name: opts.id,
        ...(shm ? { wake } : {}),
      });
      if (shm && bus.dataPath !== "ring") {
        throw new Error(`${name}: expected the ring path, got ${bus.dataPath}`);
      }
      if (opts.sub) {
        const on = opts.onValue ?? opts.onMessage as (v: unknown) => void;
        bus.subscribe<Uint8Array>(opts.sub, { callback: (_err, m) => on(m.data) });
        await bus.flush(); // the broker has the subscription
      }
      const subject = opts.pub ?? "";
      let failure: Error | undefined;
      const pending: Promise<unknown>[] = [];
      const fail = (err: Error) => (failure ??= err);
      // tryPublish hands the message over at once when there is room (no Promise); only a
      // message that must wait takes publish(), whose promise flush() then awaits. As a user
      // publishing at full rate would (nats.js's publish() returns nothing either).
      const send = (v: unknown) => {
        try {
          if (!bus.tryPublish(subject, v)) pending.push(bus.publish(subject, v).catch(fail));
        } catch (err) {
          fail(err as Error);
        }
      };
      return {
        // flush() = every publish so far was handed to the ring or the port (the Channel
        // contract); bus.flush() would add a broker round trip (PING/PONG) per call.
        publish: send,
        publishValue: send,
        flush: async () => {
          await Promise.all(pending.splice(0));
          if (failure) throw failure;
        },
        close: () => bus.close(),
      };
    },
  };
}

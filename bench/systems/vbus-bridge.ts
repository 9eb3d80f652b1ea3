// vbus across two hosts: publisher/requester -> broker A -> nats-server -> broker B ->
// subscriber/replier. Two `vbus broker` processes (each with its own host socket in the case's
// temp dir, clients on shared-memory rings as in vbus-ring) bridged through one Debian
// nats-server on 127.0.0.1 (random port, the same settings as the `nats` system). Both brokers
// export and import "bench" and "bench.>" (loop prevention keeps each message to one crossing):
// pub and req clients connect to A, sub and rep clients to B.
import { writeFileSync } from "node:fs";
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";
import { vbusSystem } from "./_vbus.ts";
import { natsServerInfo, natsServerProblem, startNatsServer } from "./_nats_server.ts";
const ring = vbusSystem("vbus-bridge", true);

const system: BenchSystem = {
  name: "vbus-bridge",
  describe:
    "two vbus brokers (clients on rings) bridged through nats-server: pub -> broker A -> NATS -> broker B -> sub",
  peer: false,
  nativeValues: true,

  check: natsServerProblem,
  info: natsServerInfo,

  async start(ctx: ServerContext) {
    // Stopped with the case's other processes by the harness.
    const { port } = await startNatsServer(ctx);
    const brokers: Record<string, string> = {};
    for (const host of ["a", "b"]) {
      const listen = `${ctx.tmpDir}/vbus-${host}.sock`;
      const file = `${ctx.tmpDir}/vbus-${host}.json`;
      const rules = ["bench", "bench.>"];
      writeFileSync(
        file,
        JSON.stringify({
          listen,
          vms: [],
          bridge: {
            nats: {
              servers: [`nats://127.0.0.1:${port}`],
              name: `bench-${host}`,
              export: rules,
              import: rules,
            },
          },
        }),
      );
      const child = ctx.spawnScript(`vbus-broker-${host}`, "src/cli/main.ts", [
        "broker",
        "--config",
        file,
      ], { VBUS_LOG: "warn" });
      await ctx.waitForPath(listen, 15000, child);
      brokers[host] = listen;
    }
    await crossingWorks(brokers.a, brokers.b);
    // Before the brokers are killed, say what the bridges dropped (the report counts losses).
    return { endpoint: brokers, stop: () => reportBridges(ctx, brokers) };
  },

  open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
    const onA = opts.role === "pub" || opts.role === "req";
    return ring.open({ listen: onA ? endpoint.a : endpoint.b }, opts);
  },
};

/** Log each broker's bridge counters and its host clients' drops (bounded, best effort). */
async function reportBridges(ctx: ServerContext, brokers: Record<string, string>): Promise<void> {
  const { connect } = await import("../../mod.ts");
  for (const [host, listen] of Object.entries(brokers)) {
    try {
      const bus = await connect({ server: listen, reconnect: false, shm: false, timeout: 2000 });
      try {
        const msg = await bus.request<{
          bridges: Record<string, unknown>[];
          host: { dropped: number; drops: Record<string, number> };
        }>("$VBUS.STATS", null, { timeout: 2000 });
        const b = msg.data.bridges[0] ?? {};
        ctx.log(
          `broker ${host}: bridge out ${b.msgsOut} in ${b.msgsIn} dropped ${b.dropped} ` +
            `${JSON.stringify(b.drops)} maybeLost ${b.maybeLost} reconnects ${b.reconnects}; ` +
            `host clients dropped ${msg.data.host.dropped} ${JSON.stringify(msg.data.host.drops)}`,
        );
      } finally {
        await bus.close();
      }
    } catch (err) {
      ctx.log(`broker ${host}: no stats (${(err as Error).message})`);
    }
  }
}

/** Resolve once a message published on broker A reaches a subscriber on broker B (bounded). */
async function crossingWorks(a: string, b: string): Promise<void> {
  const { connect } = await import("../../mod.ts");
  const pub = await connect({ server: a, reconnect: false, shm: false });
  const sub = await connect({ server: b, reconnect: false, shm: false });
  try {
    let got = false;
    sub.subscribe("bench.probe", { callback: () => (got = true) });
    await sub.flush();
    const deadline = Date.now() + 15000;
    while (!got) {
      if (Date.now() > deadline) {
        throw new Error("vbus-bridge: nothing crossed from A to B in 15 s");
      }
      await pub.publish("bench.probe", 0);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await pub.close();
    await sub.close();
  }
}

export default system;

// vbus with the replier embedded in the broker's process (`connect({ broker })`, a host
// service that runs the broker itself): the requester reaches it over its ring, and the reply
// comes back with no third process to wake. Request/reply only. The orchestrator's replier
// process still starts, but opens nothing: the echo lives in bench/systems/_embedded_broker.ts.
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";
import { vbusSystem } from "./_vbus.ts";

const ring = vbusSystem("vbus-ring", true);

const system: BenchSystem = {
  name: "vbus-embedded",
  describe:
    "vbus broker with the replier in its own process (connect({ broker }), a ring too); the requester on a ring",
  peer: false,
  nativeValues: true,
  shapes: ["rr"],

  async start(ctx: ServerContext) {
    const listen = `${ctx.tmpDir}/vbus.sock`;
    const child = ctx.spawnScript(
      "vbus-broker+replier",
      "bench/systems/_embedded_broker.ts",
      [listen],
      { VBUS_LOG: "warn" },
    );
    await ctx.waitForPath(`${listen}.ready`, 15000, child);
    return { endpoint: { listen }, stop: () => child.kill() };
  },

  open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
    if (opts.sub === "bench.req") {
      // The replier's role is played inside the broker's process.
      return Promise.resolve({ publish: () => {}, flush: async () => {}, close: async () => {} });
    }
    return ring.open(endpoint, opts);
  },
};
export default system;

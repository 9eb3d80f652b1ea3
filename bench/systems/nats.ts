// Peer: NATS core pub/sub. Debian's nats-server on 127.0.0.1 (random port), started per case;
// clients use the official @nats-io/transport-node.
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";
import { natsServerInfo, natsServerProblem, startNatsServer } from "./_nats_server.ts";

const system: BenchSystem = {
  name: "nats",
  describe: "NATS core (Debian nats-server, 127.0.0.1) + @nats-io/transport-node",
  peer: true,

  check: natsServerProblem,
  info: natsServerInfo,

  async start(ctx: ServerContext) {
    const server = await startNatsServer(ctx);
    return { endpoint: { port: server.port }, stop: server.stop };
  },

  async open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
    const { connect } = await import("@nats-io/transport-node");
    const nc = await connect({
      servers: `127.0.0.1:${endpoint.port}`,
      name: opts.id,
      noEcho: true,
      reconnect: false,
    });
    if (opts.sub) {
      const on = opts.onMessage;
      nc.subscribe(opts.sub, {
        callback: (err, m) => {
          if (!err) on(m.data);
        },
      });
      await nc.flush(); // the server has the subscription
    }
    const subject = opts.pub ?? "";
    return {
      publish: (p) => nc.publish(subject, p),
      flush: () => nc.flush(),
      close: async () => {
        await nc.close();
      },
    };
  },
};
export default system;

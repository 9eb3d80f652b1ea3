// Peer: NATS core pub/sub. Debian's nats-server on 127.0.0.1 (random port), started per case;
// clients use the official @nats-io/transport-node.
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";

const BIN = process.env.NATS_SERVER ?? "nats-server";

const system: BenchSystem = {
  name: "nats",
  describe: "NATS core (Debian nats-server, 127.0.0.1) + @nats-io/transport-node",
  peer: true,

  async check() {
    const r = spawnSync(BIN, ["--version"], { encoding: "utf8" });
    return r.status === 0 ? null : `${BIN} not found (apt-get install -y nats-server)`;
  },

  async info() {
    const r = spawnSync(BIN, ["--version"], { encoding: "utf8" });
    return { server: (r.stdout || r.stderr || "").trim() };
  },

  async start(ctx: ServerContext) {
    const port = await ctx.freePort();
    const conf = `${ctx.tmpDir}/nats.conf`;
    // max_payload raised for the 1 MiB case (default 1 MB counts headers against it); pending
    // buffers raised so that a slower subscriber is measured, not disconnected.
    writeFileSync(
      conf,
      [
        `listen: "127.0.0.1:${port}"`,
        `max_payload: 8MB`,
        `max_pending: 1GB`,
        `write_deadline: "30s"`,
        `no_sys_acc: true`,
        "",
      ].join("\n"),
    );
    const child = ctx.spawn("nats-server", BIN, ["-c", conf]);
    await ctx.waitForPort(port, 15000, child);
    return { endpoint: { port }, stop: () => child.kill() };
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

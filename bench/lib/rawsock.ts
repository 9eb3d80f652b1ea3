// Shared implementation of the raw-socket peers ("unix" and "tcp"): node:net sockets with the
// length-prefixed framing of bench/lib/frame.ts and a relay process in the middle.
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "./system.ts";
import { encodeFrame, FrameParser, FrameWriter } from "./frame.ts";

export function rawSocketSystem(kind: "unix" | "tcp"): BenchSystem {
  return {
    name: kind,
    describe: kind === "unix"
      ? "raw Unix domain socket (node:net), u32-length framing, batched writes, relay process in the middle"
      : "raw TCP loopback (node:net, TCP_NODELAY), u32-length framing, batched writes, relay process in the middle",
    peer: true,

    async start(ctx: ServerContext) {
      if (kind === "unix") {
        const path = `${ctx.tmpDir}/relay.sock`;
        const child = ctx.spawnScript("relay", "bench/systems/_relay.ts", ["unix", path]);
        await ctx.waitForPath(path, 15000, child);
        return { endpoint: { path }, stop: () => child.kill() };
      }
      const port = await ctx.freePort();
      const child = ctx.spawnScript("relay", "bench/systems/_relay.ts", ["tcp", String(port)]);
      await ctx.waitForPort(port, 15000, child);
      return { endpoint: { port }, stop: () => child.kill() };
    },

    async open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
      const net = await import("node:net");
      const sock = kind === "unix"
        ? net.connect({ path: String(endpoint.path) })
        : net.connect({ host: "127.0.0.1", port: Number(endpoint.port) });
      await new Promise<void>((res, rej) => {
        sock.once("connect", () => res());
        sock.once("error", rej);
      });
      if (kind === "tcp") sock.setNoDelay(true);
      let acked: () => void = () => {};
      const ack = new Promise<void>((r) => (acked = r));
      const parser = new FrameParser(() => {
        parser.onFrame = opts.onMessage; // the first frame is the relay's "ok"
        acked();
      });
      sock.on("data", (c: Uint8Array) => parser.push(c));
      sock.on("error", () => {});
      const hello = JSON.stringify({ pub: opts.pub, sub: opts.sub ? [opts.sub] : [] });
      sock.write(encodeFrame(new TextEncoder().encode(hello)));
      await ack;
      const w = new FrameWriter(sock);
      return {
        publish: (p) => w.write(p),
        flush: () => w.flush(),
        close: async () => {
          await w.flush();
          sock.end();
          sock.destroy();
        },
      };
    },
  };
}

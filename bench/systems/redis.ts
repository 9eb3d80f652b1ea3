// Peer: Redis pub/sub. Debian's redis-server on 127.0.0.1 (random port, no persistence),
// started per case; clients use ioredis (publishers send one pipeline per batch).
import { Buffer } from "node:buffer";
import { spawnSync } from "node:child_process";
import type { ChainableCommander, Redis as RedisClient, RedisOptions } from "ioredis";
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";

const BIN = process.env.REDIS_SERVER ?? "redis-server";

const system: BenchSystem = {
  name: "redis",
  describe: "Redis pub/sub (Debian redis-server, 127.0.0.1, no persistence) + ioredis",
  peer: true,

  check() {
    const r = spawnSync(BIN, ["--version"], { encoding: "utf8" });
    return Promise.resolve(
      r.status === 0 ? null : `${BIN} not found (apt-get install -y redis-server)`,
    );
  },

  info() {
    const r = spawnSync(BIN, ["--version"], { encoding: "utf8" });
    return Promise.resolve({ server: (r.stdout || "").trim() });
  },

  async start(ctx: ServerContext) {
    const port = await ctx.freePort();
    const child = ctx.spawn("redis-server", BIN, [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      ctx.tmpDir,
      "--protected-mode",
      "no",
      "--loglevel",
      "warning",
      // a slower subscriber is measured, not disconnected (default hard limit is 32 MB)
      "--client-output-buffer-limit",
      "pubsub 0 0 0",
    ]);
    await ctx.waitForPort(port, 15000, child);
    return { endpoint: { port }, stop: () => child.kill() };
  },

  async open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
    // Loaded only when used: ioredis is a dev dependency of the benchmarks alone.
    const { Redis } = await import("ioredis");
    const base: RedisOptions = {
      host: "127.0.0.1",
      port: Number(endpoint.port),
      lazyConnect: true,
      maxRetriesPerRequest: 1,
      retryStrategy: () => null,
      connectionName: opts.id,
    };
    let sub: RedisClient | null = null;
    if (opts.sub) {
      sub = new Redis(base);
      await sub.connect();
      const on = opts.onMessage;
      sub.on("messageBuffer", (_ch: Uint8Array, msg: Uint8Array) => on(msg));
      await sub.subscribe(opts.sub); // resolves after the server's SUBSCRIBE reply
    }
    let pub: RedisClient | null = null;
    if (opts.pub) {
      pub = new Redis(base);
      await pub.connect();
    }
    // explicit pipeline per batch: one write and one round trip per flush()
    let pipe: ChainableCommander | null = null;
    const noop = () => {};
    const subject = opts.pub ?? "";
    return {
      publish: (p) => {
        if (!pipe) pipe = pub!.pipeline();
        pipe.publish(
          subject,
          Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength),
        );
      },
      flush: () => {
        if (!pipe) return Promise.resolve();
        const p = pipe.exec();
        pipe = null;
        return p.then(noop, noop);
      },
      close: () => {
        if (pub) pub.disconnect();
        if (sub) sub.disconnect();
        return Promise.resolve();
      },
    };
  },
};
export default system;

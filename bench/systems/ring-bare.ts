// The ceiling: a bare shared-memory SPSC ring between the publisher and the subscriber, no
// broker, no codec, no doorbells (the consumer polls). Only 1:1 and request/reply exist for an
// SPSC ring (the outbound ring carries requests, the inbound ring replies).
import { unlinkSync } from "node:fs";
import { setImmediate } from "node:timers";
import type { BenchSystem, Channel, Endpoint, OpenOptions, ServerContext } from "../lib/system.ts";

const REGION_BYTES = 16 * 1024 * 1024;
/** A publisher spinning on a full ring gives up after this long (the consumer died). */
const FULL_SPIN_MS = 10_000;

const system: BenchSystem = {
  name: "ring-bare",
  describe:
    "bare shared-memory SPSC ring (src/ring), no broker, no codec, polling consumer: the ceiling",
  peer: false,
  shapes: ["1:1", "rr"],

  async start(_ctx: ServerContext) {
    const { mapShared } = await import("../../ffi/mod.ts");
    const { initRegion } = await import("../../src/ring/region.ts");
    const path = `/dev/shm/vbus-bench-ring-bare-${process.pid}-${Date.now()}`;
    const m = await mapShared(path, REGION_BYTES, { create: true });
    initRegion(m.bytes);
    return {
      endpoint: { path },
      stop: () => {
        m.unmap();
        try {
          unlinkSync(path);
        } catch { /* already gone */ }
        return Promise.resolve();
      },
    };
  },

  async open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel> {
    const { mapShared } = await import("../../ffi/mod.ts");
    const { attachRegion } = await import("../../src/ring/region.ts");
    const { RingConsumer, RingProducer } = await import("../../src/ring/ring.ts");
    const m = await mapShared(String(endpoint.path), REGION_BYTES);
    // Requesters and publishers write the outbound ring; subscribers and repliers read it.
    const region = attachRegion(
      m.bytes,
      opts.role === "pub" || opts.role === "req" ? "guest" : "host",
    );
    const producer = opts.pub ? new RingProducer(m.bytes, region.tx) : undefined;
    let running = true;
    let loop: Promise<void> = Promise.resolve();
    if (opts.sub) {
      const consumer = new RingConsumer(m.bytes, region.rx);
      const on = opts.onMessage;
      const handler = (b: Uint8Array, off: number, len: number) => on(b.subarray(off, off + len));
      loop = (async () => {
        while (running) {
          if (consumer.poll(handler, 1024) === 0) await new Promise((r) => setImmediate(r));
          else await new Promise((r) => setImmediate(r));
        }
      })();
    }
    return {
      publish(p: Uint8Array) {
        if (!producer) throw new Error("ring-bare: this role does not publish");
        if (producer.tryWrite(p)) return;
        const deadline = Date.now() + FULL_SPIN_MS;
        while (!producer.tryWrite(p)) {
          if (Date.now() > deadline) {
            throw new Error("ring-bare: ring full for 10 s (consumer gone?)");
          }
        }
      },
      flush: () => new Promise((r) => setImmediate(r)),
      async close() {
        running = false;
        await loop;
        m.unmap();
      },
    };
  },
};
export default system;

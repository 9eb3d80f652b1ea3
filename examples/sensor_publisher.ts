/**
 * A guest service that publishes a temperature reading every `intervalMs`.
 *
 * In a guest (the port /dev/virtio-ports/org.vbus.0 is found by default):
 *   deno run -A examples/sensor_publisher.ts      or      bun examples/sensor_publisher.ts
 * On the host, against the broker's socket:
 *   VBUS_SERVER=/run/vbus/broker.sock bun examples/sensor_publisher.ts
 * @module
 */
import { type Bus, connect } from "../mod.ts";

/** One reading, as it travels on the bus (msgpack-encoded). */
export interface Reading {
  sensor: string;
  celsius: number;
  at: number;
}

/**
 * Publish `count` readings on `sensors.<name>.temp`.
 *
 * @example
 * ```ts
 * const bus = await connect();
 * await publishReadings(bus, "kitchen", 3, 100);
 * ```
 */
export async function publishReadings(
  bus: Bus,
  name: string,
  count: number,
  intervalMs: number,
): Promise<void> {
  let celsius = 20;
  for (let i = 0; i < count; i++) {
    celsius += Math.round((Math.random() - 0.5) * 10) / 10;
    const reading: Reading = { sensor: name, celsius, at: Date.now() };
    await bus.publish(`sensors.${name}.temp`, reading);
    if (i + 1 < count) await new Promise((r) => setTimeout(r, intervalMs));
  }
  await bus.flush();
}

if (import.meta.main) {
  const bus = await connect({ name: "sensor-publisher" });
  console.log(`connected as ${bus.info?.identity} (${bus.info?.port})`);
  await publishReadings(bus, bus.info?.identity ?? "sensor", 10, 1000);
  await bus.drain();
}

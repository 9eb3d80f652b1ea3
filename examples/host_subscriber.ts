/**
 * A host process that prints every sensor reading from every guest.
 *
 *   VBUS_SERVER=/run/vbus/broker.sock bun examples/host_subscriber.ts
 *   VBUS_SERVER=/run/vbus/broker.sock deno run -A examples/host_subscriber.ts
 * @module
 */
import { type Bus, connect, type Subscription } from "../mod.ts";
import type { Reading } from "./sensor_publisher.ts";

/**
 * Subscribe to all sensors and hand each reading to `onReading`.
 *
 * @example
 * ```ts
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * watchSensors(bus, (subject, r) => console.log(subject, r.celsius));
 * ```
 */
export function watchSensors(
  bus: Bus,
  onReading: (subject: string, reading: Reading) => void,
): Subscription<Reading> {
  return bus.subscribe<Reading>("sensors.*.temp", {
    callback: (err, msg) => {
      if (err) return console.error("subscription ended:", err.message);
      onReading(msg.subject, msg.data);
    },
  });
}

if (import.meta.main) {
  const bus = await connect({ name: "host-subscriber" });
  bus.on("disconnected", (e) => console.log(`disconnected: ${e.reason}`));
  bus.on(
    "reconnected",
    (e) => console.log(`reconnected, ${e.resubscribed} subscription(s) restored`),
  );
  watchSensors(bus, (subject, r) => console.log(`${subject}: ${r.celsius.toFixed(1)} °C`));
  console.log("watching sensors.*.temp (Ctrl-C to stop)");
  await bus.closed;
}

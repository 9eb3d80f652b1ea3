/**
 * A host service that runs the broker itself: guests and host clients reach it through the
 * broker as usual, and the service's own client talks to the broker in process (no socket,
 * on a shared-memory ring), so its replies cost no hop to another process.
 *
 *   bun examples/embedded_broker.ts /tmp/vbus-embedded.sock
 *   npx vbus req --server /tmp/vbus-embedded.sock time.now null   # elsewhere: prints the time
 * @module
 */
import process from "node:process";
import { Broker, connect, parseConfig } from "../mod.ts";

const listen = process.argv[2] ?? "/tmp/vbus-embedded.sock";
const broker = new Broker(parseConfig(JSON.stringify({ listen, vms: [] })));
await broker.start();

const service = await connect({ broker, name: "clock" });
service.subscribe("time.now", { callback: (_err, msg) => msg.respond(new Date().toISOString()) });
await service.flush();
console.log(`serving time.now on ${listen} (path: ${service.dataPath}); Ctrl-C to stop`);

process.on("SIGINT", async () => {
  await service.close();
  await broker.stop();
  process.exit(0);
});

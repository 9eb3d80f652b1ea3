// The server process of bench/systems/vbus-embedded.ts: a Broker listening on argv[2], and in
// the same process an echo replier connected to it with `connect({ broker })` (on a ring):
// every message on bench.req is published again on bench.rep. LISTEN_PATH.ready appears once
// the replier is subscribed.
import { writeFileSync } from "node:fs";
import process from "node:process";
import { Broker, connect, parseConfig } from "../../mod.ts";

const listen = process.argv[2];
if (!listen) throw new Error("usage: _embedded_broker.ts LISTEN_PATH");
const broker = new Broker(parseConfig(JSON.stringify({ listen, vms: [] })));
await broker.start();
const replier = await connect({ broker, reconnect: false, name: "embedded-replier" });
if (replier.dataPath !== "ring") throw new Error(`expected the ring path, got ${replier.dataPath}`);
replier.subscribe<Uint8Array>("bench.req", {
  callback: (_err, m) => void replier.publish("bench.rep", m.data).catch(() => {}),
});
await replier.flush();
writeFileSync(`${listen}.ready`, ""); // the replier is subscribed: requests may come
const stop = async () => {
  await replier.close();
  await broker.stop();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

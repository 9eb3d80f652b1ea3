// The "broker" of the raw-socket peers: a process in the middle, so that the process shape
// matches NATS and Redis (publisher -> relay -> subscriber).
//
//   deno run -A bench/systems/_relay.ts unix /path/to/sock
//   bun bench/systems/_relay.ts tcp 40123
//
// Protocol (see bench/lib/frame.ts): every connection first sends one hello frame, JSON
// {"pub": subject|null, "sub": [subjects]}; the relay answers with one frame "ok". After that,
// every frame a connection sends is forwarded to every connection subscribed to its pub
// subject. Whole-frame runs are forwarded as received (no per-message work beyond finding frame
// boundaries); a source is paused while any of its destinations has more than QUEUE_LIMIT bytes queued.
import { createServer, type Socket } from "node:net";
import { rmSync } from "node:fs";
import { encodeFrame, FrameSplitter, QUEUE_LIMIT } from "../lib/frame.ts";

const [kind, where] = process.argv.slice(2);
if ((kind !== "unix" && kind !== "tcp") || !where) {
  console.error("usage: _relay.ts unix PATH | tcp PORT");
  process.exit(2);
}

const subscribers = new Map<string, Set<Socket>>();
const OK = encodeFrame(new TextEncoder().encode("ok"));

function onConnection(sock: Socket): void {
  if (kind === "tcp") sock.setNoDelay(true);
  let hello: Uint8Array | null = new Uint8Array(0);
  let pubSubject: string | null = null;
  let mySubs: string[] = [];
  let waiting = 0; // destinations we are waiting a 'drain' from

  const splitter = new FrameSplitter((run) => {
    if (pubSubject === null) return;
    const targets = subscribers.get(pubSubject);
    if (!targets) return;
    for (const t of targets) {
      t.write(run);
      if (t.writableLength >= QUEUE_LIMIT) {
        waiting++;
        if (waiting === 1) sock.pause();
        t.once("drain", () => {
          if (--waiting === 0) sock.resume();
        });
      }
    }
  });

  sock.on("data", (chunk: Uint8Array) => {
    if (hello) {
      const all = new Uint8Array(hello.length + chunk.length);
      all.set(hello);
      all.set(chunk, hello.length);
      if (all.length < 4) {
        hello = all;
        return;
      }
      const len = all[0] | (all[1] << 8) | (all[2] << 16) | (all[3] * 0x1000000);
      if (all.length < 4 + len) {
        hello = all;
        return;
      }
      const h = JSON.parse(new TextDecoder().decode(all.subarray(4, 4 + len)));
      hello = null;
      pubSubject = h.pub ?? null;
      mySubs = h.sub ?? [];
      for (const s of mySubs) {
        let set = subscribers.get(s);
        if (!set) subscribers.set(s, set = new Set());
        set.add(sock);
      }
      sock.write(OK);
      if (all.length > 4 + len) splitter.push(all.subarray(4 + len));
      return;
    }
    splitter.push(chunk);
  });
  const drop = () => {
    for (const s of mySubs) subscribers.get(s)?.delete(sock);
    mySubs = [];
  };
  sock.on("close", drop);
  sock.on("error", drop);
}

const server = createServer(onConnection);
server.on("error", (e) => {
  console.error(`relay: ${e.message}`);
  process.exit(1);
});
if (kind === "unix") {
  try {
    rmSync(where);
  } catch { /* not there */ }
  server.listen(where);
} else {
  server.listen(Number(where), "127.0.0.1");
}
const quit = () => {
  server.close();
  if (kind === "unix") {
    try {
      rmSync(where);
    } catch { /* gone */ }
  }
  process.exit(0);
};
process.on("SIGTERM", quit);
process.on("SIGINT", quit);
// Never outlive the benchmark by long: a relay left behind exits after 15 minutes.
setTimeout(quit, 15 * 60 * 1000).unref?.();

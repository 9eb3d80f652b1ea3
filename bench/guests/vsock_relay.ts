/**
 * The relay of the in-guest `vsock` system: bench/systems/_relay.ts's protocol and forwarding
 * (one hello frame `{pub, sub}` per connection, answered by a frame "ok"; then whole-frame runs
 * from each publisher to every subscriber of its subject; a source paused while a destination
 * has more than QUEUE_LIMIT bytes queued), listening on AF_VSOCK, which node:net cannot. Deno
 * only (`Deno.listen({ transport: "vsock" })`, flag `--unstable-vsock`). With TCPPORT it also
 * listens on 127.0.0.1:TCPPORT (the host's own clients: one relay, two ways in). `tcp PORT`
 * listens on 127.0.0.1 alone: the same code, for hosts without vsock (tests/vm_net_test.ts).
 *
 *   deno run -A --unstable-vsock bench/guests/vsock_relay.ts vsock PORT [TCPPORT]
 *   deno run -A bench/guests/vsock_relay.ts tcp PORT
 * @module
 */
import { encodeFrame, FrameSplitter, QUEUE_LIMIT } from "../lib/frame.ts";
import { type DenoConn, DenoConnSocket } from "./deno_conn_socket.ts";

interface DenoListener extends AsyncIterable<DenoConn> {
  close(): void;
}
const D = (globalThis as unknown as {
  Deno?: {
    args: string[];
    listen(o: Record<string, unknown>): DenoListener;
    exit(code: number): never;
  };
}).Deno;
if (!D) {
  console.error("vsock_relay.ts needs Deno");
  // deno-lint-ignore no-process-global
  process.exit(2);
}
const [kind, portArg, tcpPortArg] = D.args;
const port = Number(portArg);
const tcpPort = tcpPortArg === undefined ? undefined : Number(tcpPortArg);
const okPort = (p: number | undefined) =>
  p === undefined || (Number.isInteger(p) && p > 0 && p < 65536);
if (
  (kind !== "vsock" && kind !== "tcp") || !okPort(port) || !okPort(tcpPort) ||
  (kind === "tcp" && tcpPort)
) {
  console.error("usage: vsock_relay.ts vsock PORT [TCPPORT] | tcp PORT");
  D.exit(2);
}

const subscribers = new Map<string, Set<DenoConnSocket>>();
const OK = encodeFrame(new TextEncoder().encode("ok"));

function onConnection(sock: DenoConnSocket): void {
  let hello: Uint8Array | null = new Uint8Array(0);
  let pubSubject: string | null = null;
  let mySubs: string[] = [];
  let waiting = 0;
  const splitter = new FrameSplitter((run) => {
    const targets = pubSubject === null ? undefined : subscribers.get(pubSubject);
    for (const t of targets ?? []) {
      t.write(run.slice()); // the run is a view into a read buffer the next read reuses
      if (t.writableLength >= QUEUE_LIMIT) {
        if (++waiting === 1) sock.pause();
        t.once("drain", () => {
          if (--waiting === 0) sock.resume();
        });
      }
    }
  });
  sock.on("data", (c) => {
    const chunk = c as Uint8Array;
    if (!hello) return splitter.push(chunk);
    const all = new Uint8Array(hello.length + chunk.length);
    all.set(hello);
    all.set(chunk, hello.length);
    const len = all.length < 4
      ? Infinity
      : all[0] | (all[1] << 8) | (all[2] << 16) | (all[3] * 0x1000000);
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
  });
  const drop = () => {
    for (const s of mySubs) subscribers.get(s)?.delete(sock);
    mySubs = [];
  };
  sock.on("close", drop);
  sock.on("error", drop);
}

const listeners = [
  kind === "vsock"
    ? D.listen({ transport: "vsock", cid: -1, port })
    : D.listen({ transport: "tcp", hostname: "127.0.0.1", port }),
  ...(tcpPort ? [D.listen({ transport: "tcp", hostname: "127.0.0.1", port: tcpPort })] : []),
];
console.error(`vsock_relay: listening (${kind} ${port}${tcpPort ? `, tcp ${tcpPort}` : ""})`);
// Never outlive the benchmark by long.
setTimeout(() => D.exit(0), 15 * 60 * 1000);
await Promise.all(listeners.map(async (l) => {
  for await (const conn of l) onConnection(new DenoConnSocket(conn));
}));

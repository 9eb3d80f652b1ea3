/**
 * The TCP/IP systems vbus is compared with in real guests (bench/guests.ts), one client API for
 * all of them, used inside the guests (bench/guests/agent.ts, over virtio-net) and by the host
 * side of the benchmark (on 127.0.0.1):
 *
 * - `nats`: the official client `@nats-io/transport-node` against Debian's nats-server. One
 *   connection per endpoint, shared by every role (a guest reaches the server through one QEMU
 *   guestfwd rule, which carries one connection: see lab/net.ts). Request/reply is the client's
 *   own `request()`.
 * - `tcp`: node:net with the framing and relay of the host benchmark's raw systems
 *   (bench/lib/frame.ts, bench/systems/_relay.ts): one connection per role, a hello frame
 *   `{pub, sub}`, then u32-LE length-prefixed frames; request/reply = a frame out, the next frame
 *   in.
 * - `vsock`: the same framing over AF_VSOCK (guest CID -> host CID 2), through `Deno.connect`
 *   (neither node:net nor Bun speak AF_VSOCK); needs the host's /dev/vhost-vsock.
 *
 * @example
 * ```ts
 * import { openNet } from "./bench/guests/net_clients.ts";
 * const sub = await openNet("tcp", { host: "10.0.2.100", port: 5001 }, { sub: "t", onMessage: (p) => {} });
 * const pub = await openNet("tcp", { host: "10.0.2.100", port: 5002 }, { pub: "t" });
 * pub.publish(new Uint8Array(64));
 * await pub.flush();
 * ```
 * @module
 */
import { connect as netConnect, type Socket } from "node:net";
import { encodeFrame, FrameParser, FrameWriter } from "../lib/frame.ts";
import { type DenoConn, DenoConnSocket } from "./deno_conn_socket.ts";

/** The TCP/IP systems of the guest benchmark. */
export type NetSystem = "nats" | "tcp" | "vsock";
/** Where a client connects: host + port (nats, tcp) or a vsock CID + port. */
export interface NetEndpoint {
  host?: string;
  port: number;
  cid?: number;
}
/** What one role needs: a subject to publish on and/or one to receive from. */
export interface NetRole {
  pub?: string;
  sub?: string;
  /** Called per message received on `sub`; the payload is only valid during the call. */
  onMessage?: (payload: Uint8Array) => void;
  /** Answer every message received on `sub` with a copy of it (a replier). */
  echo?: boolean;
  /** Client name (NATS). */
  name?: string;
}
/** One role's channel. */
export interface NetChannel {
  /** Queue one message on the role's `pub` subject. */
  publish(payload: Uint8Array): void;
  /** Everything queued is handed to the transport (NATS: a PING/PONG with the server). */
  flush(): Promise<void>;
  /** One round trip: send `payload` on `pub`, resolve with the first answer (`sub`). */
  request(payload: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

type NatsConn = Awaited<ReturnType<typeof import("@nats-io/transport-node").connect>>;
const natsConns = new Map<string, Promise<NatsConn>>();

/** The endpoint's shared NATS connection (opened on first use, never reconnects). */
export function natsConnection(ep: NetEndpoint, name = "gbench"): Promise<NatsConn> {
  const key = `${ep.host ?? "127.0.0.1"}:${ep.port}`;
  let c = natsConns.get(key);
  if (!c) {
    c = import("@nats-io/transport-node").then(({ connect }) =>
      connect({
        servers: key,
        name,
        noEcho: true,
        // A guest's connection rides one QEMU guestfwd rule: a reconnect would reuse the same
        // host-side connection mid-protocol. Fail instead.
        reconnect: false,
        timeout: 20_000,
      })
    );
    natsConns.set(key, c);
    c.catch(() => natsConns.delete(key));
  }
  return c;
}

/** Close every shared NATS connection. */
export async function closeNats(): Promise<void> {
  const all = [...natsConns.values()];
  natsConns.clear();
  for (const c of all) await c.then((nc) => nc.close()).catch(() => {});
}

async function openNats(ep: NetEndpoint, role: NetRole): Promise<NetChannel> {
  const nc = await natsConnection(ep, role.name);
  const sub = role.sub
    ? nc.subscribe(role.sub, {
      callback: (err, m) => {
        if (err) return;
        if (role.echo) m.respond(m.data);
        else role.onMessage?.(m.data);
      },
    })
    : undefined;
  if (sub) await nc.flush(); // the server has the subscription
  const subject = role.pub ?? "";
  return {
    publish: (p) => nc.publish(subject, p),
    flush: () => nc.flush(),
    request: async (p, timeout) => (await nc.request(subject, p, { timeout })).data,
    close: async () => {
      sub?.unsubscribe();
      await nc.flush().catch(() => {});
    },
  };
}

/** A stream connection with the raw systems' framing (hello, then length-prefixed frames). */
async function openFramed(sock: Socket, role: NetRole): Promise<NetChannel> {
  let acked!: () => void;
  let failed!: (e: Error) => void;
  const ack = new Promise<void>((res, rej) => [acked, failed] = [res, rej]);
  let waiter: ((p: Uint8Array) => void) | undefined;
  const w = new FrameWriter(sock);
  const deliver = (p: Uint8Array) => {
    if (waiter) {
      const fn = waiter;
      waiter = undefined;
      fn(p.slice());
    } else if (role.echo) {
      w.write(p.slice());
      w.push();
    } else role.onMessage?.(p);
  };
  const parser = new FrameParser(() => {
    parser.onFrame = deliver; // the first frame is the relay's "ok"
    acked();
  });
  sock.on("data", (c: Uint8Array) => parser.push(c));
  sock.on("error", (e: Error) => failed(e));
  sock.on("close", () => failed(new Error("connection closed before the relay's ok")));
  const hello = JSON.stringify({ pub: role.pub ?? null, sub: role.sub ? [role.sub] : [] });
  sock.write(encodeFrame(new TextEncoder().encode(hello)));
  await ack;
  return {
    publish: (p) => w.write(p),
    flush: () => w.flush(),
    request: (p, timeoutMs) =>
      new Promise<Uint8Array>((res, rej) => {
        const t = setTimeout(() => {
          waiter = undefined;
          rej(new Error(`no answer within ${timeoutMs} ms`));
        }, timeoutMs);
        waiter = (a) => {
          clearTimeout(t);
          res(a);
        };
        w.write(p);
        w.push();
      }),
    close: async () => {
      w.push();
      // end() after everything queued is written: destroy() would discard what is still queued.
      if (sock.writableLength > 0) {
        await new Promise<void>((res) => {
          const t = setTimeout(res, 10_000);
          const done = () => {
            clearTimeout(t);
            res();
          };
          sock.once("drain", done);
          sock.once("close", done);
        });
      }
      sock.end();
    },
  };
}

function connectTcp(ep: NetEndpoint, timeoutMs: number): Promise<Socket> {
  return new Promise<Socket>((res, rej) => {
    const s = netConnect({ host: ep.host ?? "127.0.0.1", port: ep.port });
    const t = setTimeout(() => {
      s.destroy();
      rej(new Error(`tcp connect ${ep.host}:${ep.port}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(t);
      s.setNoDelay(true);
      res(s);
    });
    s.once("error", (e) => {
      clearTimeout(t);
      rej(e);
    });
  });
}

async function connectVsock(ep: NetEndpoint): Promise<DenoConnSocket> {
  const deno = (globalThis as unknown as {
    Deno?: { connect(o: { transport: "vsock"; cid: number; port: number }): Promise<DenoConn> };
  }).Deno;
  if (!deno) throw new Error("vsock needs Deno (node:net and Bun have no AF_VSOCK)");
  return new DenoConnSocket(
    await deno.connect({ transport: "vsock", cid: ep.cid ?? 2, port: ep.port }),
  );
}

/**
 * Open one role's channel on a TCP/IP system. Resolves once a subscription is live (NATS: the
 * server has it; tcp/vsock: the relay answered the hello).
 *
 * @example
 * ```ts
 * const rep = await openNet("nats", { host: "127.0.0.1", port: 4222 }, { sub: "svc", echo: true });
 * ```
 */
export async function openNet(
  system: NetSystem,
  ep: NetEndpoint,
  role: NetRole,
  timeoutMs = 20_000,
): Promise<NetChannel> {
  if (system === "nats") return await openNats(ep, role);
  if (system === "tcp") return await openFramed(await connectTcp(ep, timeoutMs), role);
  if (system === "vsock") {
    // DenoConnSocket has the members of Socket that openFramed and FrameWriter use.
    return await openFramed((await connectVsock(ep)) as unknown as Socket, role);
  }
  throw new Error(`unknown system ${system}`);
}

/**
 * The middle processes of the TCP/IP systems in the in-guest benchmark, started on the host
 * before the guests boot (a QEMU guestfwd rule connects to its host port when QEMU starts, see
 * lab/net.ts): Debian's nats-server and the raw systems' relay (bench/systems/_relay.ts), both on
 * 127.0.0.1, started with exactly the code the host benchmark uses for its `nats` and `tcp`
 * systems. Processes are tracked by bench/lib/proc.ts (killed when this process exits).
 *
 * @example
 * ```ts
 * const s = await startNetServers({ runtime: "bun", dir: "/tmp/x", want: ["nats", "tcp"], log: console.log });
 * s.nats?.port; s.tcp?.pid;
 * await s.stop();
 * ```
 * @module
 */
import { Child, freePort, ROOT, runtimeCommand, waitForPath, waitForPort } from "../lib/proc.ts";
import type { RuntimeName, ServerContext } from "../lib/system.ts";
import { rawSocketSystem } from "../lib/rawsock.ts";
import { natsServerInfo, natsServerProblem, startNatsServer } from "../systems/_nats_server.ts";

/** One running server: where it listens and which process to account CPU to. */
export interface NetServer {
  port: number;
  pid: number;
  /** Version / description for the report. */
  describe: string;
}

/** What {@link startNetServers} started, and why anything was not. */
export interface NetServers {
  nats?: NetServer;
  tcp?: NetServer;
  /** system -> reason it could not start. */
  problems: Record<string, string>;
  stop(): Promise<void>;
}

/**
 * Start nats-server and/or the raw TCP relay on 127.0.0.1 (random free ports). A server that
 * cannot start is listed in `problems` (its system is then skipped), never thrown.
 *
 * @example
 * ```ts
 * const s = await startNetServers({ runtime: "deno", dir, want: ["tcp"], log: () => {} });
 * ```
 */
export async function startNetServers(opts: {
  runtime: RuntimeName;
  dir: string;
  want: ("nats" | "tcp")[];
  log: (s: string) => void;
}): Promise<NetServers> {
  const children: Child[] = [];
  const ctx: ServerContext = {
    runtime: opts.runtime,
    tmpDir: opts.dir,
    root: ROOT,
    freePort,
    spawn(name, cmd, args, env) {
      const c = new Child(name, "server", cmd, args, env);
      children.push(c);
      return c;
    },
    spawnScript(name, script, args, env) {
      const [cmd, a] = runtimeCommand(opts.runtime, script, args);
      const c = new Child(name, "server", cmd, a, env);
      children.push(c);
      return c;
    },
    waitForPort,
    waitForPath,
    log: opts.log,
  };
  const out: NetServers = {
    problems: {},
    stop: async () => {
      for (const c of children) await c.kill();
    },
  };
  const last = () => children[children.length - 1];
  if (opts.want.includes("nats")) {
    const why = await natsServerProblem();
    if (why) out.problems.nats = why;
    else {
      try {
        const s = await startNatsServer(ctx);
        out.nats = { port: s.port, pid: last().pid, describe: (await natsServerInfo()).server };
      } catch (err) {
        out.problems.nats = `nats-server did not start: ${(err as Error).message}`;
      }
    }
  }
  if (opts.want.includes("tcp")) {
    try {
      const s = await rawSocketSystem("tcp").start(ctx);
      out.tcp = {
        port: Number(s.endpoint.port),
        pid: last().pid,
        describe: `bench/systems/_relay.ts under ${opts.runtime}`,
      };
    } catch (err) {
      out.problems.tcp = `relay did not start: ${(err as Error).message}`;
    }
  }
  return out;
}

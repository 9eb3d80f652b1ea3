// Debian's nats-server for the benchmark systems that need one (`nats`, `vbus-bridge`): one
// binary, one set of settings, started per case on 127.0.0.1 (random port).
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import type { ServerContext } from "../lib/system.ts";

/** The nats-server binary (NATS_SERVER overrides). */
export const NATS_SERVER_BIN = process.env.NATS_SERVER ?? "nats-server";

/** Why nats-server cannot be used here, or null. */
export function natsServerProblem(): Promise<string | null> {
  const r = spawnSync(NATS_SERVER_BIN, ["--version"], { encoding: "utf8" });
  return Promise.resolve(
    r.status === 0 ? null : `${NATS_SERVER_BIN} not found (apt-get install -y nats-server)`,
  );
}

/** The server's version line, for the report. */
export function natsServerInfo(): Promise<{ server: string }> {
  const r = spawnSync(NATS_SERVER_BIN, ["--version"], { encoding: "utf8" });
  return Promise.resolve({ server: (r.stdout || r.stderr || "").trim() });
}

/** Start a nats-server for one case; resolves once it accepts connections. */
export async function startNatsServer(
  ctx: ServerContext,
): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = await ctx.freePort();
  const conf = `${ctx.tmpDir}/nats.conf`;
  // max_payload raised for the 1 MiB case (default 1 MB counts headers against it); pending
  // buffers raised so that a slower subscriber is measured, not disconnected.
  writeFileSync(
    conf,
    [
      `listen: "127.0.0.1:${port}"`,
      `max_payload: 8MB`,
      `max_pending: 1GB`,
      `write_deadline: "30s"`,
      `no_sys_acc: true`,
      "",
    ].join("\n"),
  );
  const child = ctx.spawn("nats-server", NATS_SERVER_BIN, ["-c", conf]);
  await ctx.waitForPort(port, 15000, child);
  return { port, stop: () => child.kill() };
}

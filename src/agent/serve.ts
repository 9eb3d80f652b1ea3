/**
 * `vbus agent` as a service: start an {@link Agent}, stop it on SIGTERM/SIGINT (local
 * processes see their connection close and reconnect to the next agent), exit 0.
 *
 * @example
 * ```ts
 * import { serveAgent } from "./serve.ts";
 * const code = await serveAgent({ socket: "/run/vbus/agent.sock", slots: 4 });
 * ```
 * @module
 */
import process from "node:process";
import { readFileSync } from "node:fs";
import { Agent, type AgentOptions } from "./agent.ts";

/**
 * The gid of group `name` (a number is taken as it is), from /etc/group.
 *
 * @example
 * ```ts
 * groupId("0"); // 0
 * ```
 */
export function groupId(name: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  let text = "";
  try {
    text = readFileSync("/etc/group", "utf8");
  } catch { /* no group file */ }
  for (const line of text.split("\n")) {
    const [group, , gid] = line.split(":");
    if (group === name && gid !== undefined) return Number(gid);
  }
  throw new Error(`no group "${name}" (create it: groupadd --system ${name})`);
}

/** Run the agent until SIGTERM or SIGINT; resolves with the exit code. */
export async function serveAgent(opts: AgentOptions): Promise<number> {
  const agent = new Agent(opts);
  await agent.start();
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await agent.stop();
  return 0;
}

// Process management for the orchestrator: every child is tracked and killed on exit, error or
// timeout; CPU time is read from /proc/<pid>/stat (utime + stime, all threads).
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { ChildHandle, RuntimeName } from "./system.ts";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export const RUNTIME_BIN: Record<RuntimeName, string> = {
  deno: process.env.VBUS_DENO ?? join(ROOT, "node_modules", ".bin", "deno"),
  bun: process.env.VBUS_BUN ?? join(ROOT, "node_modules", ".bin", "bun"),
};

export function runtimeCommand(
  rt: RuntimeName,
  script: string,
  args: string[],
): [string, string[]] {
  if (rt === "deno") return [RUNTIME_BIN.deno, ["run", "-A", "--quiet", script, ...args]];
  return [RUNTIME_BIN.bun, ["run", script, ...args]];
}

const live = new Set<Child>();
let hooked = false;
let interruptHandler: (() => void) | null = null;

/** Called (synchronously) on SIGINT/SIGTERM/SIGHUP after the children are killed. */
export function onInterrupt(fn: () => void): void {
  hookExit();
  interruptHandler = fn;
}

export function killAllSync(): void {
  for (const c of live) {
    try {
      process.kill(c.pid, "SIGKILL");
    } catch { /* gone */ }
  }
  live.clear();
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on("exit", killAllSync);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, killing ${live.size} child process(es)\n`);
      killAllSync();
      try {
        interruptHandler?.();
      } catch (e) {
        process.stderr.write(`bench: could not write partial results: ${e}\n`);
      }
      process.exit(130);
    });
  }
}

/**
 * A protocol line of a bench client (`@@{...}` on stdout): its `type` ("ready", "done",
 * "error", ...) and the fields bench/client.ts writes with that type.
 */
export interface ClientMessage {
  type: string;
  /** With type "error": what went wrong. */
  message?: string;
  [field: string]: unknown;
}

type LineHandler = (msg: ClientMessage) => void;

export class Child implements ChildHandle {
  readonly name: string;
  readonly pid: number;
  readonly exited: Promise<number | string>;
  readonly kind: "server" | "client";
  private proc: ChildProcess;
  private tail: string[] = [];
  private partial = "";
  private handlers: LineHandler[] = [];
  private queue: ClientMessage[] = [];
  private done = false;

  constructor(
    name: string,
    kind: "server" | "client",
    cmd: string,
    args: string[],
    env?: Record<string, string>,
  ) {
    hookExit();
    this.name = name;
    this.kind = kind;
    this.proc = spawn(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    if (this.proc.pid === undefined) throw new Error(`cannot start ${name}: ${cmd}`);
    this.pid = this.proc.pid;
    live.add(this);
    this.exited = new Promise((res) => {
      this.proc.on("exit", (code, sig) => {
        this.done = true;
        live.delete(this);
        res(code ?? sig ?? "unknown");
      });
      this.proc.on("error", (e) => {
        this.tail.push(`spawn error: ${e.message}`);
        this.done = true;
        live.delete(this);
        res("spawn-error");
      });
    });
    this.proc.stdout!.setEncoding("utf8");
    this.proc.stderr!.setEncoding("utf8");
    this.proc.stdout!.on("data", (s: string) => this.onData(s));
    this.proc.stderr!.on("data", (s: string) => this.keep(s));
    this.proc.stdin!.on("error", () => {});
  }

  private keep(s: string): void {
    for (const l of s.split("\n")) if (l) this.tail.push(l);
    if (this.tail.length > 200) this.tail.splice(0, this.tail.length - 200);
  }

  private onData(s: string): void {
    const lines = (this.partial + s).split("\n");
    this.partial = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith("@@")) {
        let msg: ClientMessage;
        try {
          msg = JSON.parse(line.slice(2));
        } catch {
          this.keep(line);
          continue;
        }
        if (this.handlers.length) { for (const h of this.handlers) h(msg); }
        else this.queue.push(msg);
      } else if (line) this.keep(line);
    }
  }

  /**
   * Wait for the next protocol message of the given type ("@@{"type":...}" on stdout). `T`
   * names the fields that type carries (the client's JSON is taken as it wrote it).
   */
  next<T extends ClientMessage = ClientMessage>(type: string, timeoutMs: number): Promise<T> {
    const i = this.queue.findIndex((m) => m.type === type || m.type === "error");
    if (i >= 0) {
      const m = this.queue.splice(i, 1)[0];
      return m.type === "error"
        ? Promise.reject(new Error(`${this.name}: ${m.message}`))
        : Promise.resolve(m as T);
    }
    return new Promise((res, rej) => {
      const cleanup = () => {
        clearTimeout(t);
        this.handlers = this.handlers.filter((x) => x !== h);
      };
      const h: LineHandler = (m) => {
        if (m.type === type) {
          cleanup();
          res(m as T);
        } else if (m.type === "error") {
          cleanup();
          rej(new Error(`${this.name}: ${m.message}`));
        } else this.queue.push(m);
      };
      const t = setTimeout(() => {
        cleanup();
        rej(new Error(`${this.name}: no "${type}" within ${timeoutMs} ms\n${this.output()}`));
      }, timeoutMs);
      this.handlers.push(h);
      this.exited.then((code) => {
        if (this.handlers.includes(h)) {
          cleanup();
          rej(new Error(`${this.name} exited (${code}) before "${type}"\n${this.output()}`));
        }
      });
    });
  }

  send(line: string): void {
    if (!this.done) this.proc.stdin!.write(line + "\n");
  }

  output(): string {
    return this.tail.slice(-30).join("\n");
  }

  async kill(graceMs = 1000): Promise<void> {
    if (this.done) return;
    try {
      process.kill(this.pid, "SIGTERM");
    } catch { /* gone */ }
    const t = new Promise((r) => setTimeout(r, graceMs));
    const r = await Promise.race([this.exited.then(() => "exited"), t]);
    if (r !== "exited") {
      try {
        process.kill(this.pid, "SIGKILL");
      } catch { /* gone */ }
      await Promise.race([this.exited, new Promise((r) => setTimeout(r, 2000))]);
    }
  }
}

const CLK_TCK = 100; // Linux USER_HZ, 100 on every mainstream kernel

/** CPU seconds (user, system) used so far by a live process, all threads. */
export function procCpu(pid: number): { user: number; sys: number } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // fields after ")" start at field 3 (state); utime is field 14, stime 15
    return { user: Number(f[11]) / CLK_TCK, sys: Number(f[12]) / CLK_TCK };
  } catch {
    return null;
  }
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const a = srv.address();
      const port = typeof a === "object" && a ? a.port : 0;
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitForPort(
  port: number,
  timeoutMs = 10000,
  child?: ChildHandle,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (let i = 0; Date.now() < until && i < 2000; i++) {
    const ok = await new Promise<boolean>((res) => {
      const s = connect({ host: "127.0.0.1", port }, () => {
        s.destroy();
        res(true);
      });
      s.on("error", () => res(false));
    });
    if (ok) return;
    if (
      child && (await Promise.race([child.exited.then(() => true), sleep(0).then(() => false)]))
    ) {
      throw new Error(`${child.name} exited before listening on ${port}\n${child.output()}`);
    }
    await sleep(10);
  }
  throw new Error(
    `nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms${
      child ? "\n" + child.output() : ""
    }`,
  );
}

export async function waitForPath(
  path: string,
  timeoutMs = 10000,
  child?: ChildHandle,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (let i = 0; Date.now() < until && i < 2000; i++) {
    if (existsSync(path)) return;
    if (
      child && (await Promise.race([child.exited.then(() => true), sleep(0).then(() => false)]))
    ) {
      throw new Error(`${child.name} exited before creating ${path}\n${child.output()}`);
    }
    await sleep(10);
  }
  throw new Error(
    `${path} did not appear within ${timeoutMs} ms${child ? "\n" + child.output() : ""}`,
  );
}

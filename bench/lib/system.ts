// The plug-in interface of the benchmark harness.
//
// A "system" is one module, bench/systems/<name>.ts, whose default export is a
// BenchSystem. The same module is loaded twice:
//   * in the orchestrator (bench/run.ts), which calls check() and start() to launch the
//     system's broker/server processes for one case and stop() them afterwards;
//   * in every client process (bench/client.ts, one OS process per publisher, subscriber,
//     requester or replier), which calls open() once and drives the returned Channel.
// Keep heavy imports (client libraries, FFI) inside open()/start() (dynamic import) so that
// loading the module is cheap and a missing dependency only disables that system.
//
// Only node:* modules and npm packages from package.json may be used: the module must load
// under both Deno and Bun.

export type Role = "pub" | "sub" | "req" | "rep";
export type RuntimeName = "deno" | "bun";

/** JSON-serialisable description of where clients connect (ports, paths, names...). */
export type Endpoint = Record<string, unknown>;

/** A process started by the harness on behalf of a system (tracked, CPU-accounted, killed on exit). */
export interface ChildHandle {
  readonly name: string;
  readonly pid: number;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  /** Lines written on stdout/stderr so far (last 200), for error messages. */
  output(): string;
  /** SIGTERM, then SIGKILL after graceMs; resolves when the process is gone. */
  kill(graceMs?: number): Promise<void>;
}

/** What the orchestrator gives start(). */
export interface ServerContext {
  /** Runtime chosen for any JavaScript broker process of this case (the publisher's runtime). */
  readonly runtime: RuntimeName;
  /** Private scratch directory for this case, deleted after it (unix socket paths, configs). */
  readonly tmpDir: string;
  /** Absolute path of the repository root (cwd of every process). */
  readonly root: string;
  /** A currently free TCP port on 127.0.0.1. */
  freePort(): Promise<number>;
  /** Start a native program (e.g. nats-server). Counted as a "server" process for CPU. */
  spawn(name: string, cmd: string, args: string[], env?: Record<string, string>): ChildHandle;
  /** Start a TypeScript file (path relative to the repo root) under ctx.runtime with the
   *  harness's usual flags (Deno: run -A). Counted as a "server" process for CPU. */
  spawnScript(
    name: string,
    script: string,
    args: string[],
    env?: Record<string, string>,
  ): ChildHandle;
  /** Resolve once a TCP connect to 127.0.0.1:port succeeds (throws after timeoutMs). */
  waitForPort(port: number, timeoutMs?: number, child?: ChildHandle): Promise<void>;
  /** Resolve once a filesystem path exists (e.g. a unix socket, a shm file). */
  waitForPath(path: string, timeoutMs?: number, child?: ChildHandle): Promise<void>;
  log(msg: string): void;
}

export interface ServerHandle {
  /** Passed verbatim (as JSON) to open() in every client process of the case. */
  endpoint: Endpoint;
  /** Stop whatever start() launched. Processes started through ctx are killed anyway. */
  stop(): Promise<void>;
}

/** What a client process asks for. Every role uses at most one publish and one receive subject:
 *   pub: pub="bench"            sub=null
 *   sub: pub=null               sub="bench"
 *   req: pub="bench.req"        sub="bench.rep"   (publish, then wait for the echo)
 *   rep: pub="bench.rep"        sub="bench.req"   (echo every message back) */
export interface OpenOptions {
  /** Unique per process within a case, e.g. "sub-2". */
  id: string;
  role: Role;
  pub: string | null;
  sub: string | null;
  /** Called once per delivered message. The payload may be a view into a reusable buffer:
   *  it is only valid during the call. */
  onMessage: (payload: Uint8Array) => void;
  /** Largest payload this case will send (bytes). */
  maxPayload: number;
  /** "obj4" cases on a system with `nativeValues`: called with each decoded value instead of
   *  onMessage. */
  onValue?: (value: unknown) => void;
  runtime: RuntimeName;
}

export interface Channel {
  /** Queue one message on opts.pub. Must not block; may buffer until flush(). */
  publish(payload: Uint8Array): void;
  /** Systems with `nativeValues`: queue one structured value (the system encodes it). */
  publishValue?(value: unknown): void;
  /** Resolve when everything queued so far has been handed to the transport and the
   *  transport is ready for more (this is where backpressure is applied). The publisher calls
   *  it after every batch; the replier after every reply; the requester after every request. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface BenchSystem {
  /** Must equal the file name: bench/systems/<name>.ts */
  name: string;
  /** One line for the report, e.g. "NATS 2.9 (Debian nats-server) + @nats-io/transport-node". */
  describe: string;
  /** Peers are what vbus is compared against (ratios are computed vs peers). */
  peer: boolean;
  /** The system carries structured values itself (publishValue/onValue); otherwise "obj4"
   *  cases pack and unpack them with msgpackr in the client. */
  nativeValues?: boolean;
  /** Shapes this system can run ("1:1", "1:4", "4:1", "rr"); absent = all. Others are not run. */
  shapes?: string[];
  /** Orchestrator side. null when usable, otherwise the reason to skip (shown in the report). */
  check?(): Promise<string | null>;
  /** Orchestrator side. Launch broker/relay/server processes for one case. Resolve only when
   *  clients can connect. Systems without a broker return { endpoint: {...}, stop: async () => {} }. */
  start(ctx: ServerContext): Promise<ServerHandle>;
  /** Client side. Connect; resolve only once the subscription on opts.sub (if any) is live at
   *  the broker, so that nothing published after "go" is missed. */
  open(endpoint: Endpoint, opts: OpenOptions): Promise<Channel>;
  /** Optional: run this script (path relative to the repo root, started under the case's runtime)
   *  as the client process instead of bench/client.ts, for systems that want their own hot loop
   *  (e.g. a zero-copy ring consumer). It receives the same JSON spec as argv[2] and must speak
   *  the line protocol described in bench/README.md ("Client line protocol"). open() is then
   *  never called and may throw. */
  clientScript?: string;
  /** Optional extra information for the report (versions...), orchestrator side. */
  info?(): Promise<Record<string, string>>;
}

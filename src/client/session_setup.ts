/**
 * Setting up a session: the connect loop (open the port, retry with backoff, give up on
 * errors retrying cannot cure) and the handshake on one port (HELLO with a fresh nonce, the
 * WELCOME that answers it, the shared-memory attach; bytes from an earlier session are
 * skipped). What an established session does with its frames is the connection's business:
 * the handshake hands the port over through {@link HandshakeHooks}.
 *
 * @example
 * ```ts
 * import {
 *   connectLoop,
 *   handshake,
 *   type HandshakeHooks,
 *   type HandshakeOptions,
 * } from "./session_setup.ts";
 * import { connectUnix } from "../port/socket_port.ts";
 * declare const hooks: HandshakeHooks; // the connection's closures (see connection.ts)
 * const stop = new AbortController(); // aborted when the connection closes
 * const setup: HandshakeOptions = {
 *   timeout: 10_000,
 *   signal: stop.signal,
 *   offerShm: false,
 *   require: [],
 * };
 * const outcome = await connectLoop({
 *   opener: () => connectUnix("/run/vbus/broker.sock"),
 *   attempt: (port) => handshake(port, setup, hooks),
 *   delay: 50,
 *   maxDelay: 2000,
 *   maxAttempts: -1,
 *   signal: stop.signal,
 *   everConnected: false,
 *   waitOnFirstConnect: false, // no socket file: fail at once
 *   closed: () => false,
 *   retrying: (attempt, delay, err) => console.log(`attempt ${attempt}: ${err.message}`, delay),
 * });
 * if (outcome.kind === "failed") throw outcome.error;
 * ```
 * @module
 */
import type { Port, PortOpener } from "../port/port.ts";
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { encodeFrame, type Frame, FrameDecoder } from "../protocol/frame.ts";
import { decodeErrHead, decodeWelcomeHead } from "../protocol/heads.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import { type HelloHead, Op, type WelcomeHead } from "../protocol/ops.ts";
import { Backoff, sleep } from "../util/backoff.ts";
import { isNoBroker, isPermanentConnectError } from "./hints.ts";
import { type AttachInfo, openAgentPort } from "../agent/attach.ts";

/**
 * Opens a connection through `vbus agent` at `socket` (docs/PROTOCOL.md section 14): each
 * attempt connects to the agent, hands its ATTACH (this process's slot) to `onAttach`
 * before the HELLO, and returns the port carrying the ordinary protocol.
 *
 * @example
 * ```ts
 * import { agentOpener } from "./session_setup.ts";
 * const opener = agentOpener("/run/vbus/agent.sock", (a) => console.log("slot", a.slot));
 * const port = await opener();
 * ```
 */
export function agentOpener(socket: string, onAttach: (a: AttachInfo) => void): PortOpener {
  return async () => {
    const { port, attach } = await openAgentPort(socket);
    onAttach(attach);
    return port;
  };
}

/** What a handshake needs from its connection. */
export interface HandshakeHooks {
  /** The HELLO head for `nonce`, with the shared-memory offer when `offerShm` and there is one. */
  hello(nonce: number, offerShm: boolean): HelloHead;
  /**
   * The WELCOME for a HELLO that offered shared memory: attach to the broker's region. Returns
   * why it cannot be used (the session then starts again without it), or undefined.
   */
  attach(port: Port, welcome: WelcomeHead): string | undefined;
  /** The session is established on `port`: from now on its frames go to `frame`. */
  established(port: Port, welcome: WelcomeHead): void;
  /** A frame of the established session. */
  frame(frame: Frame): void;
  /** The established session's port closed (`err`: how it failed, if it did). */
  closed(port: Port, err?: Error): void;
  /** The established session's byte stream cannot be decoded any more. */
  broken(port: Port, err: Error): void;
}

/** Options of one {@link handshake}. */
export interface HandshakeOptions {
  /** Milliseconds to wait for the WELCOME. */
  timeout: number;
  /** Aborting it closes the port (the connection closed, or `connect()` timed out). */
  signal: AbortSignal;
  /** Offer shared memory in HELLO. */
  offerShm: boolean;
  /** Features the session cannot do without: a WELCOME lacking one fails with BAD_VERSION. */
  require: readonly string[];
}

/**
 * Say HELLO on `port` and wait for its WELCOME. Resolves once the session is established
 * (`hooks.established` ran); rejects when the port closes first, after `timeout`, on
 * `ERR BAD_VERSION`, or when the broker lacks a required feature.
 *
 * @example
 * ```ts
 * import { handshake, type HandshakeHooks } from "./session_setup.ts";
 * import { connectUnix } from "../port/socket_port.ts";
 * declare const hooks: HandshakeHooks; // the connection's (see connection.ts)
 * const port = await connectUnix("/run/vbus/broker.sock");
 * const signal = new AbortController().signal; // aborted when the connection closes
 * await handshake(port, { timeout: 5000, signal, offerShm: true, require: ["no-echo"] }, hooks);
 * ```
 */
export function handshake(
  port: Port,
  opts: HandshakeOptions,
  hooks: HandshakeHooks,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder(DEFAULT_LIMITS.maxFrameBytes * 2);
    let nonce = 0;
    let offerShm = opts.offerShm;
    let established = false;
    const timer = setTimeout(() => {
      port.close();
      fail(new VbusError(ErrorCode.Port, `no WELCOME from the broker on ${port.description}`));
    }, opts.timeout);
    const onAbort = () => port.close();
    opts.signal.addEventListener("abort", onAbort, { once: true });
    const fail = (err: Error) => {
      clearTimeout(timer);
      opts.signal.removeEventListener("abort", onAbort);
      reject(err);
    };
    const onFrame = (frame: Frame) => {
      if (established) return hooks.frame(frame);
      if (frame.op === Op.Err) {
        const e = decodeErrHead(frame.head);
        if (e.code === ErrorCode.BadVersion) {
          port.close();
          fail(new VbusError(e.code, e.message));
        }
        return;
      }
      if (frame.op !== Op.Welcome) return; // stale bytes from an earlier session
      const welcome = decodeWelcomeHead(frame.head);
      if (welcome.nonce !== nonce) return;
      const missing = opts.require.filter((f) => !welcome.features.includes(f));
      if (missing.length > 0) {
        port.close();
        fail(
          new VbusError(
            ErrorCode.BadVersion,
            `the broker does not support ${missing.map((f) => `"${f}"`).join(", ")} ` +
              `(asked for by the connect options; a newer broker has it)`,
          ),
        );
        return;
      }
      if (offerShm) {
        const problem = hooks.attach(port, welcome);
        if (problem !== undefined) {
          offerShm = false;
          sendHello();
          return;
        }
      }
      established = true;
      clearTimeout(timer);
      opts.signal.removeEventListener("abort", onAbort);
      decoder.setMaxFrameBytes(welcome.maxFrameBytes);
      hooks.established(port, welcome);
      resolve();
    };
    port.start(
      (chunk) => {
        try {
          decoder.push(chunk, onFrame);
        } catch (err) {
          if (!established) {
            decoder.resync(); // garbage before our WELCOME: skip to the next frame start
            return;
          }
          hooks.broken(port, err as Error);
        }
      },
      (err) => {
        if (!established) {
          fail(
            err ??
              new VbusError(
                ErrorCode.Port,
                `${port.description} closed before WELCOME (is the broker connected?)`,
              ),
          );
        } else hooks.closed(port, err);
      },
    );
    const sendHello = () => {
      nonce = Math.floor(Math.random() * 0x7fffffff);
      const hello = hooks.hello(nonce, offerShm);
      if (!hello.shm) offerShm = false;
      port.write(encodeFrame(Op.Hello, encodeValue(hello)));
    };
    sendHello();
  });
}

/** Options of {@link connectLoop}. */
export interface ConnectLoopOptions {
  /** Opens the port (again on every attempt). */
  opener: PortOpener;
  /** Sets up the session on an open port (a {@link handshake}). */
  attempt(port: Port): Promise<void>;
  /** First retry delay in ms; doubles up to `maxDelay`. */
  delay: number;
  /** Largest retry delay in ms. */
  maxDelay: number;
  /** Failed attempts in a row after which it gives up; -1 = never. */
  maxAttempts: number;
  /** Stops the loop (the connection closed, or the first connect's timeout passed). */
  signal: AbortSignal;
  /** A session was established before: this is a reconnect. */
  everConnected: boolean;
  /**
   * On the first connect, retry a broker socket that is missing or stale ({@link isNoBroker})
   * instead of giving up at once.
   */
  waitOnFirstConnect: boolean;
  /** The connection was closed meanwhile. */
  closed(): boolean;
  /** An attempt failed and another follows after `delay` ms. */
  retrying(attempt: number, delay: number, err: Error): void;
}

/** How a {@link connectLoop} ended. */
export type ConnectOutcome =
  | { kind: "connected" }
  /** Closed or aborted before a session was established; the last attempt's error. */
  | { kind: "stopped"; lastError?: Error }
  /** Retrying cannot help: a permanent error, the broker's refusal, or too many attempts. */
  | { kind: "failed"; error: Error };

/**
 * Open the port and set up a session until one is established, retrying with backoff.
 * Never rejects: the outcome says how it ended.
 *
 * @example
 * ```ts
 * import { connectLoop, type ConnectLoopOptions } from "./session_setup.ts";
 * declare const opts: ConnectLoopOptions; // written out in the module doc's example
 * const outcome = await connectLoop(opts);
 * if (outcome.kind !== "connected") console.error("no session", outcome);
 * ```
 */
export async function connectLoop(o: ConnectLoopOptions): Promise<ConnectOutcome> {
  const backoff = new Backoff({ initialMs: o.delay, maxMs: o.maxDelay });
  let lastError: Error | undefined;
  while (!o.closed() && !o.signal.aborted) {
    try {
      const port = await o.opener();
      if (o.closed() || o.signal.aborted) {
        port.close();
        break;
      }
      await o.attempt(port);
      return { kind: "connected" };
    } catch (e) {
      const err = lastError = e as Error;
      if (err instanceof VbusError && err.code === ErrorCode.BadVersion) {
        return { kind: "failed", error: err };
      }
      if (isPermanentConnectError(err, o.everConnected)) return { kind: "failed", error: err };
      // No broker there: nats fails at once; waiting is asked for, and reconnects always wait.
      if (!o.everConnected && !o.waitOnFirstConnect && isNoBroker(err)) {
        return { kind: "failed", error: err };
      }
      const attempt = backoff.attempts + 1;
      if (o.maxAttempts >= 0 && attempt > o.maxAttempts) {
        return {
          kind: "failed",
          error: new VbusError(
            ErrorCode.Port,
            `gave up after ${o.maxAttempts} attempts: ${err.message}`,
          ),
        };
      }
      const delay = backoff.next();
      o.retrying(attempt, delay, err);
      await sleep(delay, o.signal);
    }
  }
  return { kind: "stopped", lastError };
}

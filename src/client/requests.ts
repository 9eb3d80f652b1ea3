/**
 * The requests a connection waits on: each has a token (the last token of its reply subject
 * in the connection's inbox), a timer, and the subject it was sent to (to name it in errors,
 * and to fail it when the broker refuses the publish).
 *
 * @example
 * ```ts
 * import { RequestTable } from "./requests.ts";
 * const table = new RequestTable();
 * const token = table.nextToken();
 * const reply = new Promise((resolve, reject) => table.add(token, "svc.time", 1000, resolve, reject));
 * // with a signal: table.add(token, subject, 1000, resolve, reject, AbortSignal.timeout(500))
 * table.settle(token, new Error("the connection closed"));
 * ```
 * @module
 */
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import type { Msg } from "./msg.ts";

interface PendingRequest {
  resolve(msg: Msg<unknown>): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
  subject: string;
  /** Removes the abort listener, when the request has a signal. */
  unlisten?: () => void;
}

/** Pending requests by token; see the module doc. */
export class RequestTable {
  #pending = new Map<string, PendingRequest>();
  #next = 0;

  /** A token no pending request of this connection uses. */
  nextToken(): string {
    return (this.#next++).toString(36);
  }

  /**
   * Wait for the reply to `token`; rejects with TIMEOUT after `timeout` ms, or with ABORTED
   * (named "AbortError") when `signal` aborts first. Either way the entry is removed, so a late
   * reply is ignored.
   */
  add(
    token: string,
    subject: string,
    timeout: number,
    resolve: (msg: Msg<unknown>) => void,
    reject: (err: Error) => void,
    signal?: AbortSignal,
  ): void {
    if (signal?.aborted) {
      reject(abortedError(subject, signal));
      return;
    }
    const timer = setTimeout(() => {
      this.settle(
        token,
        new VbusError(
          ErrorCode.Timeout,
          `request to "${subject}" timed out after ${timeout} ms`,
          subject,
        ),
      );
    }, timeout);
    const req: PendingRequest = { resolve, reject, timer, subject };
    if (signal) {
      const onAbort = () => this.settle(token, abortedError(subject, signal));
      signal.addEventListener("abort", onAbort, { once: true });
      req.unlisten = () => signal.removeEventListener("abort", onAbort);
    }
    this.#pending.set(token, req);
  }

  /** Requests waiting. */
  get size(): number {
    return this.#pending.size;
  }

  /** True while `token` waits. */
  has(token: string): boolean {
    return this.#pending.has(token);
  }

  /** The subject the request `token` was sent to. */
  subjectOf(token: string): string | undefined {
    return this.#pending.get(token)?.subject;
  }

  /** Answer (or fail) the request `token`; nothing happens if it no longer waits. */
  settle(token: string, result: Msg<unknown> | Error): void {
    const req = this.#pending.get(token);
    if (!req) return;
    this.#pending.delete(token);
    clearTimeout(req.timer);
    req.unlisten?.();
    if (result instanceof Error) req.reject(result);
    else req.resolve(result);
  }

  /** Fail the oldest request sent to `subject` (the broker refused that publish). */
  failOneTo(subject: string, err: Error): void {
    for (const [token, req] of this.#pending) {
      if (req.subject === subject) {
        this.settle(token, err);
        return;
      }
    }
  }

  /** Fail every pending request. */
  failAll(err: Error): void {
    for (const token of [...this.#pending.keys()]) this.settle(token, err);
  }
}

function abortedError(subject: string, signal: AbortSignal): VbusError {
  const err = new VbusError(ErrorCode.Aborted, `request to "${subject}" was aborted`, subject);
  err.name = "AbortError";
  (err as { cause?: unknown }).cause = signal.reason;
  return err;
}

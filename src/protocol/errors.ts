/**
 * Errors with stable codes. The same codes travel in ERR frames, so a guest sees exactly what
 * the broker objected to.
 *
 * @example
 * ```ts
 * import { ErrorCode, VbusError } from "./errors.ts";
 * try {
 *   throw new VbusError(ErrorCode.Timeout, "request timed out after 1000 ms");
 * } catch (err) {
 *   if (err instanceof VbusError && err.code === ErrorCode.Timeout) console.log("retry later");
 * }
 * ```
 * @module
 */

/**
 * Stable error codes, shared by the client API and the wire protocol.
 *
 * @example
 * ```ts
 * import { ErrorCode, VbusError } from "./errors.ts";
 * function explain(err: unknown): string {
 *   if (!(err instanceof VbusError)) return "not a vbus error";
 *   if (err.code === ErrorCode.PermissionDenied) return `not allowed: ${err.subject}`;
 *   if (err.code === ErrorCode.NoResponders) return "nobody answers that subject";
 *   return err.message;
 * }
 * console.log(explain(new VbusError(ErrorCode.NoResponders, "no responders")));
 * ```
 */
export const ErrorCode = {
  /** The bytes on the port are not a valid frame (bad magic, op, or msgpack head). */
  BadFrame: "BAD_FRAME",
  /** A frame exceeds the negotiated maximum size. */
  FrameTooLarge: "FRAME_TOO_LARGE",
  /** A subject or pattern is invalid (empty token, whitespace, misplaced wildcard, too long). */
  BadSubject: "BAD_SUBJECT",
  /** Headers are not a map of strings, or are too large. */
  BadHeaders: "BAD_HEADERS",
  /** The session holds the maximum number of subscriptions. */
  TooManySubscriptions: "TOO_MANY_SUBSCRIPTIONS",
  /** The VM's permissions do not allow this publish or subscribe. */
  PermissionDenied: "PERMISSION_DENIED",
  /** Messages were dropped because the subscriber did not keep up. */
  SlowConsumer: "SLOW_CONSUMER",
  /** The session publishes faster than its limit allows. */
  Flood: "FLOOD",
  /** The peer speaks a protocol version or feature set this side cannot use. */
  BadVersion: "BAD_VERSION",
  /** A frame arrived that is not valid in the current state (e.g. PUB before HELLO). */
  BadState: "BAD_STATE",
  /** A request found no subscriber to answer it. */
  NoResponders: "NO_RESPONDERS",
  /** A request got no reply in time. */
  Timeout: "TIMEOUT",
  /** A request was given up by its `AbortSignal` (client side only; its `name` is "AbortError"). */
  Aborted: "ABORTED",
  /** The connection is closed (by `close()` or after too many errors). */
  Closed: "CLOSED",
  /** The port is disconnected and the reconnect buffer is full. */
  BufferFull: "BUFFER_FULL",
  /** A value could not be encoded or decoded with msgpack. */
  Codec: "CODEC",
  /** The port could not be opened or failed. */
  Port: "PORT",
  /** The session was closed by the broker because it misbehaved. */
  SessionClosed: "SESSION_CLOSED",
} as const;

/**
 * One of {@link ErrorCode}'s values.
 *
 * @example
 * ```ts
 * import { ErrorCode, type ErrorCodeValue } from "./errors.ts";
 * const retryable: ErrorCodeValue[] = [ErrorCode.Timeout, ErrorCode.BufferFull];
 * console.log(retryable.includes(ErrorCode.Timeout)); // true
 * ```
 */
export type ErrorCodeValue = typeof ErrorCode[keyof typeof ErrorCode];

/**
 * An error with a stable `code` and, when it concerns one, the `subject`.
 *
 * @example
 * ```ts
 * const err = new VbusError(ErrorCode.PermissionDenied, "publish denied", "secret.x");
 * console.log(err.code, err.subject);
 * ```
 */
export class VbusError extends Error {
  /** An error with `code` (one of {@link ErrorCode}, or a code a newer broker sent). */
  constructor(
    /** What went wrong, as a stable code: compare it with {@link ErrorCode}'s values. */
    readonly code: ErrorCodeValue | string,
    message: string,
    /** The subject the error concerns, when it concerns one. */
    readonly subject?: string,
  ) {
    super(message);
    this.name = "VbusError";
  }
}

/**
 * A received message. The value is decoded from msgpack on first access of `data`, so code
 * that only forwards or inspects subjects never pays for decoding.
 *
 * Any VM can publish, so a payload is untrusted input: it is decoded under the value rules of
 * `codec.ts` (plain msgpack, timestamps and `undefined`; no structured-clone references, no
 * msgpackr records, nothing nested deeper than 512, nothing truncated). A message whose
 * payload breaks them is still delivered like any other: its `data` (and `toJSON()`) throw a
 * `CODEC` {@link VbusError}, the same one on every access, and the connection reports it once
 * as an `error` status event with the subject, when it is first found. Catch it and go on:
 * the subscription is unaffected.
 *
 * **How long a message's bytes live** (the same on every data path, see docs/API.md): a
 * message handed to a subscription *callback* can be read (`data`, `raw`) until the callback
 * returns or, when it returns a promise, until that promise settles; after that both throw a
 * `CODEC` error saying so. On the shared-memory ring a synchronous callback reads the payload
 * in place (zero copy); an `async function` callback, or one that returns a promise, gets the
 * payload copied out of shared memory so it stays readable while the promise is pending.
 * Messages of an iterated subscription and request replies are the application's to keep.
 * Binary values inside `data` are views of the payload bytes: copy (`.slice()`) one you keep
 * past that point.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect();
 * for await (const msg of bus.subscribe<{ temp: number }>("sensors.>")) {
 *   let temp: number;
 *   try {
 *     temp = msg.data.temp;
 *   } catch (err) {
 *     console.error(`skipped a message on ${msg.subject}: ${(err as Error).message}`);
 *     continue;
 *   }
 *   console.log(msg.subject, temp);
 *   msg.respond({ ok: true }); // false (and nothing sent) when it has no reply subject
 * }
 * ```
 * @module
 */
import { decodeValue } from "../protocol/codec.ts";
import type { Headers } from "../protocol/ops.ts";
import type { PublishOptions } from "./options.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";

/** What messages need from their connection: one object per connection, never the Bus. */
export interface MsgContext {
  /**
   * Publish an answer to `reply`. Throws what a publish would reject with at once (closed
   * connection, invalid headers); failures found later are reported as `error` events.
   */
  respond(reply: string, value: unknown, opts?: Omit<PublishOptions, "reply">): void;
  /** Called once per message whose payload cannot be decoded (the connection reports it). */
  undecodable(msg: Msg<unknown>, err: VbusError): void;
  /**
   * A copy of `source[start, end)` for a payload that must outlive its ring slot: the
   * connection's `PayloadSlab` (payload_slab.ts), so a chunk holds one connection's messages.
   */
  copy(source: Uint8Array, start: number, end: number): Uint8Array;
}

function expiredError(subject: string): VbusError {
  return new VbusError(
    ErrorCode.Codec,
    `the payload of this message on "${subject}" was only valid during the callback (until it returned, or until the promise it returned settled): read msg.data inside it, and copy binary values you keep`,
    subject,
  );
}

/** Internal operations on a message, for the connection (see {@link createMsg}). */
let internals!: {
  create<T>(
    ctx: MsgContext,
    sid: number,
    subject: string,
    reply: string | undefined,
    headers: Headers | undefined,
    payload: Uint8Array,
    lent: boolean,
    start: number,
    end: number,
  ): Msg<T>;
  keep(msg: Msg<unknown>): void;
  expire(msg: Msg<unknown>): void;
};

/**
 * A message delivered to a subscription or as a request's reply.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect({ server: "/run/vbus/broker.sock" });
 * bus.subscribe<number>("math.double", { callback: (_err, msg) => msg.respond(msg.data * 2) });
 * ```
 */
export class Msg<T = unknown> {
  /** The subject it was published to. */
  readonly subject: string;
  /** Reply subject set by a requester, or undefined. */
  readonly reply: string | undefined;
  /** Headers, or undefined when none were sent. */
  readonly headers: Headers | undefined;
  /** The id of the subscription it was delivered to (connection-local). */
  readonly sid: number;
  #ctx: MsgContext;
  /**
   * The payload is `#buf[#start, #end)`; its view (`raw`) is made only when asked for, since a
   * view of a mapped region is the largest single cost of a small message in Bun.
   */
  #buf: Uint8Array;
  #start: number;
  #end: number;
  #raw?: Uint8Array;
  /** `#buf` is a shared-memory ring that reuses the payload's slot once the callback is done. */
  #lent: boolean;
  #expired = false;
  #decoded = false;
  #data?: T;
  #decodeError?: VbusError;

  private constructor(
    ctx: MsgContext,
    sid: number,
    subject: string,
    reply: string | undefined,
    headers: Headers | undefined,
    buf: Uint8Array,
    lent: boolean,
    start: number,
    end: number,
  ) {
    this.#ctx = ctx;
    this.sid = sid;
    this.subject = subject;
    this.reply = reply;
    this.headers = headers;
    this.#buf = buf;
    this.#start = start;
    this.#end = end;
    if (start === 0 && end === buf.length) this.#raw = buf;
    this.#lent = lent;
  }

  static {
    internals = {
      create: (ctx, sid, subject, reply, headers, payload, lent, start, end) =>
        new Msg(ctx, sid, subject, reply, headers, payload, lent, start, end),
      keep: (msg) => {
        if (!msg.#lent || msg.#expired) return;
        const own = msg.#ctx.copy(msg.#buf, msg.#start, msg.#end);
        msg.#buf = own;
        msg.#start = 0;
        msg.#end = own.length;
        msg.#raw = own;
        msg.#lent = false;
      },
      expire: (msg) => {
        msg.#expired = true;
      },
    };
  }

  /**
   * The msgpack-encoded value as received, for code that decodes it itself. In a callback it
   * is readable as long as `data` is (see the module doc), and may be a view into shared memory.
   */
  get raw(): Uint8Array {
    if (this.#expired) throw expiredError(this.subject);
    return this.#raw ??= this.#buf.subarray(this.#start, this.#end);
  }

  /**
   * The published value, decoded on first access (`undefined` for an empty payload). Throws a
   * `CODEC` {@link VbusError} when the payload is not a value a peer may send (see the module
   * doc): the message is then reported, and every later access throws the same; or when a
   * callback's message is read after the callback is done.
   */
  get data(): T {
    if (this.#decodeError) throw this.#decodeError;
    if (this.#expired) throw expiredError(this.subject);
    if (!this.#decoded) {
      try {
        this.#data = decodeValue<T>(this.#buf, this.#start, this.#end);
      } catch (err) {
        const e = this.#decodeError = new VbusError(
          ErrorCode.Codec,
          `message on "${this.subject}": ${(err as Error).message}`,
          this.subject,
        );
        this.#ctx.undecodable(this as Msg<unknown>, e);
        throw e;
      }
      this.#decoded = true;
    }
    return this.#data as T;
  }

  /** The error `data` threw for this message's payload, once it was found undecodable. */
  get decodeError(): VbusError | undefined {
    return this.#decodeError;
  }

  /**
   * Answer a request: publish `value` to this message's reply subject. Returns false, and
   * sends nothing, when the message has no reply subject (as nats.js does); true once the
   * answer is handed to the connection. Throws like `publish` on a closed connection or bad
   * headers; a failure found later (e.g. the connection closed before it was sent) is an
   * `error` status event, never an unhandled rejection.
   */
  respond(value?: unknown, opts?: Omit<PublishOptions, "reply">): boolean {
    if (!this.reply) return false;
    this.#ctx.respond(this.reply, value, opts);
    return true;
  }

  /**
   * A plain-object view for logging and JSON output. Throws like {@link data} for a payload
   * that cannot be decoded.
   */
  toJSON(): { subject: string; data: unknown; reply?: string; headers?: Headers } {
    const out: { subject: string; data: unknown; reply?: string; headers?: Headers } = {
      subject: this.subject,
      data: this.data,
    };
    if (this.reply) out.reply = this.reply;
    if (this.headers) out.headers = this.headers;
    return out;
  }
}

/**
 * Make a message (the connection does, for each MSG it receives). Its payload is
 * `payload[start, end)` (default: all of it). `lent`: those bytes are a ring slot, valid until
 * the message is kept or expired.
 *
 * @example
 * ```ts
 * import { createMsg, type MsgContext } from "./msg.ts";
 * import { encodeValue } from "../protocol/codec.ts";
 * const ctx: MsgContext = {
 *   respond: (reply, value) => console.log("answer", value, "to", reply),
 *   undecodable: (msg, err) => console.error(msg.subject, err.message),
 *   copy: (source, start, end) => source.slice(start, end),
 * };
 * const msg = createMsg<number>(ctx, 1, "a.b", undefined, undefined, encodeValue(42), false);
 * msg.data; // 42
 * ```
 */
export function createMsg<T>(
  ctx: MsgContext,
  sid: number,
  subject: string,
  reply: string | undefined,
  headers: Headers | undefined,
  payload: Uint8Array,
  lent: boolean,
  start = 0,
  end: number = payload.length,
): Msg<T> {
  return internals.create<T>(ctx, sid, subject, reply, headers, payload, lent, start, end);
}

/**
 * A callback returned a promise: copy a payload still lent from the ring into memory of its
 * own, so the message stays readable until that promise settles.
 *
 * @example
 * ```ts
 * import { expireMsg, keepMsg, type Msg } from "./msg.ts";
 * declare const msg: Msg<unknown>; // lent from a ring slot
 * declare const callback: (err: Error | null, msg: Msg<unknown>) => unknown;
 * const result = callback(null, msg);
 * if (result instanceof Promise) {
 *   keepMsg(msg); // readable until the promise settles
 *   result.then(() => expireMsg(msg), () => expireMsg(msg));
 * } else expireMsg(msg);
 * ```
 */
export function keepMsg(msg: Msg<unknown>): void {
  internals.keep(msg);
}

/**
 * The callback the message was handed to is done with it: from now on `data` and `raw` throw.
 *
 * @example
 * ```ts
 * import { expireMsg, type Msg } from "./msg.ts";
 * declare const msg: Msg<unknown>; // a message whose callback returned
 * expireMsg(msg); // msg.data now throws CODEC
 * ```
 */
export function expireMsg(msg: Msg<unknown>): void {
  internals.expire(msg);
}

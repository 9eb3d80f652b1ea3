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
 *   if (msg.reply) msg.respond({ ok: true });
 * }
 * ```
 * @module
 */
import { decodeValue } from "../protocol/codec.ts";
import type { Headers } from "../protocol/ops.ts";
import type { PublishOptions } from "./options.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";

function expiredError(subject: string): VbusError {
  return new VbusError(
    ErrorCode.Codec,
    `the payload of this message on "${subject}" lived in shared memory and was only valid during the callback: read msg.data (and copy binary values) inside the callback`,
    subject,
  );
}

/** What a message needs from its connection: answering, and reporting an undecodable payload. */
export interface Responder {
  publish(subject: string, value: unknown, opts?: PublishOptions): Promise<void>;
  /** Called once per message whose payload cannot be decoded (the connection reports it). */
  undecodable?(msg: Msg<unknown>, err: VbusError): void;
}

/** A message delivered to a subscription. */
export class Msg<T = unknown> {
  #decoded = false;
  #data?: T;
  #raw: Uint8Array;
  #expired = false;
  #decodeError?: VbusError;

  constructor(
    /** The subject it was published to. */
    readonly subject: string,
    /** Reply subject set by a requester, or undefined. */
    readonly reply: string | undefined,
    /** Headers, or undefined when none were sent. */
    readonly headers: Headers | undefined,
    raw: Uint8Array,
    readonly sid: number,
    private readonly responder: Responder,
  ) {
    this.#raw = raw;
  }

  /**
   * The msgpack-encoded value as received. For a message handed to a subscription callback
   * from shared memory this is a view into the ring, valid only until the callback returns.
   */
  get raw(): Uint8Array {
    if (this.#expired) throw expiredError(this.subject);
    return this.#raw;
  }

  /**
   * The published value, decoded on first access (`undefined` for an empty payload). Binary
   * values inside it share the rule of {@link raw}: copy them to keep them past a callback.
   * Throws a `CODEC` {@link VbusError} when the payload is not a value a peer may send (see
   * the module doc): the message is then reported, and every later access throws the same.
   */
  get data(): T {
    if (!this.#decoded) {
      if (this.#decodeError) throw this.#decodeError;
      if (this.#expired) throw expiredError(this.subject);
      try {
        this.#data = decodeValue<T>(this.#raw);
      } catch (err) {
        const e = this.#decodeError = new VbusError(
          ErrorCode.Codec,
          `message on "${this.subject}": ${(err as Error).message}`,
          this.subject,
        );
        this.responder.undecodable?.(this as Msg<unknown>, e);
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

  /** @internal The ring slot behind `raw` is about to be reused. */
  expire(): void {
    this.#expired = true;
  }

  /**
   * Answer a request: publish `value` to this message's reply subject. Rejects when the
   * message has no reply subject.
   */
  respond(value: unknown, opts?: Omit<PublishOptions, "reply">): Promise<void> {
    if (!this.reply) {
      return Promise.reject(new Error(`message on "${this.subject}" has no reply subject`));
    }
    return this.responder.publish(this.reply, value, opts);
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

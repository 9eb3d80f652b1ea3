/**
 * A received message. The value is decoded from msgpack on first access of `data`, so code
 * that only forwards or inspects subjects never pays for decoding.
 *
 * @example
 * ```ts
 * import { connect } from "../../mod.ts";
 * const bus = await connect();
 * for await (const msg of bus.subscribe<{ temp: number }>("sensors.>")) {
 *   console.log(msg.subject, msg.data.temp);
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

/** What a message needs to answer itself. */
export interface Responder {
  publish(subject: string, value: unknown, opts?: PublishOptions): Promise<void>;
}

/** A message delivered to a subscription. */
export class Msg<T = unknown> {
  #decoded = false;
  #data?: T;
  #raw: Uint8Array;
  #expired = false;

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
   */
  get data(): T {
    if (!this.#decoded) {
      if (this.#expired) throw expiredError(this.subject);
      this.#data = decodeValue<T>(this.#raw);
      this.#decoded = true;
    }
    return this.#data as T;
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
    if (!this.reply) return Promise.reject(new Error(`message on "${this.subject}" has no reply subject`));
    return this.responder.publish(this.reply, value, opts);
  }

  /** A plain-object view for logging and JSON output. */
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

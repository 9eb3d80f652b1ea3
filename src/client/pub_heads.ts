/**
 * The head of a PUB frame, `[subject, reply, headers]`, checked against what the broker said
 * in WELCOME (or the protocol's defaults before the first session) before anything is sent:
 * a bad subject, reply subject or headers is the caller's error, thrown at once, never a
 * frame the broker refuses later. The head of a plain publish (no reply, no headers) is
 * checked and encoded once per subject and cached, since a publisher usually repeats a few
 * subjects; the cache starts again when the broker's limits may have changed (a new WELCOME).
 * In Deno each cached head is a view of a shared 4 KiB chunk (`encodeValue`), so a full cache
 * of 1024 heads keeps up to about 4 MiB alive.
 *
 * @example
 * ```ts
 * import { PubHeads } from "./pub_heads.ts";
 * const heads = new PubHeads();
 * const head = heads.head("sensors.temp", undefined, undefined); // encoded, then cached
 * heads.head("bad subject", undefined, undefined); // throws BAD_SUBJECT
 * ```
 * @module
 */
import { encodeValue } from "../protocol/codec.ts";
import { ErrorCode, VbusError } from "../protocol/errors.ts";
import { headersSize, isHeaders } from "../protocol/heads.ts";
import { DEFAULT_LIMITS } from "../protocol/limits.ts";
import { Feature, type Headers, type WelcomeHead } from "../protocol/ops.ts";
import { validateSubject } from "../subject/subject.ts";
import type { PublishOptions } from "./options.ts";

/** Subjects whose PUB head is kept encoded. */
const HEAD_CACHE_SIZE = 1024;

/** Encodes and checks PUB heads; see the module doc. */
export class PubHeads {
  /** Plain heads of subjects found valid under {@link #limitsOf}'s limits. */
  #cache = new Map<string, Uint8Array>();
  #limitsOf: WelcomeHead | undefined;

  /**
   * The encoded PUB head for a publish to `subject` with `opts`, under the limits of
   * `welcome` (the current or last session; the defaults when there was none).
   */
  head(
    subject: string,
    opts: PublishOptions | undefined,
    welcome: WelcomeHead | undefined,
  ): Uint8Array {
    // A subject whose plain head is cached was found valid under these limits: a steady
    // publisher pays one map lookup, not a validation, per message.
    if (welcome !== this.#limitsOf) {
      this.#cache.clear();
      this.#limitsOf = welcome;
    }
    const reply = opts?.reply ?? null;
    const headers = opts?.headers ?? null;
    if (reply === null && headers === null) {
      const cached = this.#cache.get(subject);
      if (cached !== undefined) return cached;
    }
    const maxSubject = welcome?.maxSubjectBytes ?? DEFAULT_LIMITS.maxSubjectBytes;
    const problem = validateSubject(subject, maxSubject);
    if (problem) {
      throw new VbusError(
        ErrorCode.BadSubject,
        `invalid subject "${subject}": ${problem}`,
        subject,
      );
    }
    if (reply !== null) {
      const p = validateSubject(reply, maxSubject);
      if (p) {
        throw new VbusError(ErrorCode.BadSubject, `invalid reply subject "${reply}": ${p}`, reply);
      }
    }
    if (headers !== null) checkHeaders(headers, subject, welcome);
    return reply === null && headers === null
      ? this.#plain(subject)
      : encodeValue([subject, reply, headers]);
  }

  #plain(subject: string): Uint8Array {
    let head = this.#cache.get(subject);
    if (!head) {
      if (this.#cache.size >= HEAD_CACHE_SIZE) this.#cache.clear();
      head = encodeValue([subject, null, null]);
      this.#cache.set(subject, head);
    }
    return head;
  }
}

function checkHeaders(headers: Headers, subject: string, welcome: WelcomeHead | undefined) {
  if (!isHeaders(headers)) {
    throw new VbusError(
      ErrorCode.BadHeaders,
      "headers must map non-empty strings to strings",
      subject,
    );
  }
  if (welcome && !welcome.features.includes(Feature.Headers)) {
    throw new VbusError(ErrorCode.BadHeaders, "the broker did not accept headers", subject);
  }
  const max = welcome?.maxHeaderBytes ?? DEFAULT_LIMITS.maxHeaderBytes;
  if (headersSize(headers) > max) {
    throw new VbusError(ErrorCode.BadHeaders, `headers exceed ${max} bytes`, subject);
  }
}

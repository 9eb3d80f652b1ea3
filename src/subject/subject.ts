/**
 * Subjects: dot-separated tokens such as `sensors.vm1.temp`. Patterns (used to subscribe and in
 * permissions) may use `*` for exactly one token and `>` as the last token for "one or more
 * tokens". Published subjects are literal: no wildcards.
 *
 * @example
 * ```ts
 * import { matches, validateSubject } from "./subject.ts";
 * validateSubject("sensors.vm1.temp"); // undefined: valid
 * matches("sensors.*.temp", "sensors.vm1.temp"); // true
 * matches("sensors.>", "sensors.vm1.temp"); // true
 * ```
 * @module
 */

/** Matches exactly one token. */
export const WILDCARD_ONE = "*";
/** Matches one or more trailing tokens; only valid as the last token. */
export const WILDCARD_REST = ">";
/** Separator between tokens. */
export const TOKEN_SEPARATOR = ".";

const encoder = new TextEncoder();

/** Byte length of a string in UTF-8, without allocating for pure-ASCII strings. */
export function utf8Length(s: string): number {
  // Fast path: most subjects are ASCII; only fall back to encoding when needed.
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 0x7f) return encoder.encode(s).length;
  }
  return s.length;
}

function checkTokens(
  s: string,
  maxBytes: number,
  allowWildcards: boolean,
  maxTokens: number,
): string | undefined {
  if (s.length === 0) return "subject is empty";
  if (utf8Length(s) > maxBytes) return `subject is longer than ${maxBytes} bytes`;
  let tokenStart = 0;
  let tokens = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : 0x2e;
    if (c === 0x2e /* . */) {
      if (++tokens > maxTokens) return `subject has more than ${maxTokens} tokens`;
      const len = i - tokenStart;
      if (len === 0) return "subject has an empty token";
      if (len === 1) {
        const t = s.charCodeAt(tokenStart);
        if (t === 0x2a /* * */ || t === 0x3e /* > */) {
          if (!allowWildcards) return "wildcards are not allowed in a published subject";
          if (t === 0x3e && i !== s.length) return "'>' is only allowed as the last token";
        }
      } else if (allowWildcards) {
        // A wildcard character inside a longer token is a literal; that surprises people.
        for (let j = tokenStart; j < i; j++) {
          const t = s.charCodeAt(j);
          if (t === 0x2a || t === 0x3e) return "wildcards must be whole tokens";
        }
      }
      tokenStart = i + 1;
    } else if (c <= 0x20 || c === 0x7f) {
      return "subject contains whitespace or a control character";
    }
  }
  return undefined;
}

/**
 * Check a literal subject (for publishing). Returns a problem description, or `undefined`.
 *
 * @example
 * ```ts
 * validateSubject("a.b"); // undefined
 * validateSubject("a.*"); // "wildcards are not allowed in a published subject"
 * ```
 */
export function validateSubject(
  subject: string,
  maxBytes = 256,
  maxTokens = Infinity,
): string | undefined {
  return checkTokens(subject, maxBytes, false, maxTokens);
}

/**
 * Check a subscription or permission pattern. Returns a problem description, or `undefined`.
 *
 * @example
 * ```ts
 * validatePattern("a.*.c"); // undefined
 * validatePattern("a.>.c"); // "'>' is only allowed as the last token"
 * ```
 */
export function validatePattern(
  pattern: string,
  maxBytes = 256,
  maxTokens = Infinity,
): string | undefined {
  return checkTokens(pattern, maxBytes, true, maxTokens);
}

/**
 * Number of tokens in a subject or pattern: what it costs in the subscription index.
 *
 * @example
 * ```ts
 * countTokens("a.*.c"); // 3
 * ```
 */
export function countTokens(subject: string): number {
  let n = 1;
  for (let i = 0; i < subject.length; i++) if (subject.charCodeAt(i) === 0x2e) n++;
  return n;
}

/**
 * Does a (valid) pattern match a (valid) literal subject?
 *
 * @example
 * ```ts
 * matches("a.*", "a.b"); // true
 * matches("a.*", "a.b.c"); // false
 * matches("a.>", "a"); // false: '>' needs at least one token
 * ```
 */
export function matches(pattern: string, subject: string): boolean {
  const p = pattern.split(TOKEN_SEPARATOR);
  const s = subject.split(TOKEN_SEPARATOR);
  for (let i = 0; i < p.length; i++) {
    if (p[i] === WILDCARD_REST) return s.length > i;
    if (i >= s.length) return false;
    if (p[i] !== WILDCARD_ONE && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

/**
 * Is every subject matched by `inner` also matched by `outer`? Used for permissions: a
 * subscription to `inner` is allowed only inside an allowed pattern `outer`.
 *
 * @example
 * ```ts
 * covers("a.>", "a.*.c"); // true
 * covers("a.*", "a.>"); // false
 * ```
 */
export function covers(outer: string, inner: string): boolean {
  const o = outer.split(TOKEN_SEPARATOR);
  const n = inner.split(TOKEN_SEPARATOR);
  for (let i = 0; i < o.length; i++) {
    if (o[i] === WILDCARD_REST) return n.length > i;
    if (i >= n.length) return false;
    if (n[i] === WILDCARD_REST) return false; // inner reaches further than a single token
    if (o[i] !== WILDCARD_ONE && o[i] !== n[i]) return false;
  }
  return o.length === n.length;
}

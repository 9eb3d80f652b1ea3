/**
 * Reply routes of requests crossing the bridge. A request's reply subject never crosses as it
 * is: the bridge replaces it with a subject of its own (`<inbox>.<token>`) and remembers here
 * where an answer to that token must go. A route lives for a fixed time (answers may come
 * more than once: several responders, a stream of replies) and the table holds a bounded
 * number of them, the oldest forgotten first; an answer to a forgotten token is dropped and
 * counted by the bridge.
 *
 * @example
 * ```ts
 * import { ReplyTable } from "./reply_table.ts";
 * const table = new ReplyTable<string>({ ttlMs: 30_000, max: 10_000 });
 * const token = table.add("_INBOX.vm1.abc.7");
 * table.get(token); // "_INBOX.vm1.abc.7"
 * ```
 * @module
 */

/** How long routes live and how many are kept. */
export interface ReplyTableLimits {
  ttlMs: number;
  max: number;
}

/** See the module doc. */
export class ReplyTable<T> {
  // Insertion order is expiry order: every route lives ttlMs.
  #routes = new Map<string, { route: T; expires: number }>();
  #next = 0;
  #limits: ReplyTableLimits;
  #evicted = 0;

  constructor(limits: ReplyTableLimits) {
    this.#limits = limits;
  }

  /** Routes remembered now. */
  get size(): number {
    return this.#routes.size;
  }

  /** Routes forgotten because the table was full (not because they expired). */
  get evicted(): number {
    return this.#evicted;
  }

  /** Remember `route`; returns its token (a short subject token). */
  add(route: T, now = Date.now()): string {
    this.#expire(now);
    if (this.#routes.size >= this.#limits.max) {
      this.#routes.delete(this.#routes.keys().next().value as string);
      this.#evicted++;
    }
    const token = (this.#next++).toString(36);
    this.#routes.set(token, { route, expires: now + this.#limits.ttlMs });
    return token;
  }

  /** The route of `token`, or undefined when unknown or expired. */
  get(token: string, now = Date.now()): T | undefined {
    const found = this.#routes.get(token);
    if (!found) return undefined;
    if (found.expires <= now) {
      this.#expire(now);
      return undefined;
    }
    return found.route;
  }

  /** Forget `token` (e.g. the request was answered with "no responders"). */
  delete(token: string): void {
    this.#routes.delete(token);
  }

  /** Forget everything. */
  clear(): void {
    this.#routes.clear();
  }

  #expire(now: number) {
    for (const [token, { expires }] of this.#routes) {
      if (expires > now) return;
      this.#routes.delete(token);
    }
  }
}

/**
 * Permission checks for one session. A VM may publish to subjects matched by its `publish`
 * patterns and subscribe to patterns lying inside its `subscribe` patterns. Two things are
 * always allowed so request/reply works under restrictions: subscribing inside the session's
 * own inbox prefix, and publishing once to a reply subject the session was handed in a message.
 *
 * @example
 * ```ts
 * import { PermissionGuard } from "./permissions.ts";
 * const guard = new PermissionGuard({ publish: ["sensors.vm1.>"] }, "_INBOX.vm1.x");
 * guard.canPublish("sensors.vm1.temp"); // true
 * guard.canPublish("cmd.vm2.reboot"); // false
 * ```
 * @module
 */
import { covers, matches } from "../subject/subject.ts";
import type { Permissions } from "./config.ts";

/** Every session's reply inbox lives under this prefix. */
export const INBOX_PREFIX = "_INBOX.";
/** Reply subjects remembered per session (oldest forgotten first). */
export const MAX_PENDING_REPLIES = 10_000;

/** Decides what one session may do. */
export class PermissionGuard {
  #publish?: string[];
  #subscribe?: string[];
  #inboxPattern: string;
  #replies = new Set<string>();

  constructor(permissions: Permissions | undefined, inboxPrefix: string) {
    this.#publish = permissions?.publish;
    this.#subscribe = permissions?.subscribe;
    this.#inboxPattern = `${inboxPrefix}.>`;
  }

  /**
   * New publish and subscribe patterns (a config reload), keeping the inbox and the reply
   * grants the session already holds: a responder may still answer what it was sent.
   */
  update(permissions: Permissions | undefined): void {
    this.#publish = permissions?.publish;
    this.#subscribe = permissions?.subscribe;
  }

  /** True when the session has no publish restriction. */
  get publishUnrestricted(): boolean {
    return this.#publish === undefined;
  }

  /** May the session publish to the literal `subject`? Consumes a one-time reply grant. */
  canPublish(subject: string): boolean {
    if (!this.#publish) return true;
    for (const p of this.#publish) if (matches(p, subject)) return true;
    return this.#replies.delete(subject);
  }

  /** May the session subscribe to `pattern`? */
  canSubscribe(pattern: string): boolean {
    if (covers(this.#inboxPattern, pattern)) return true;
    if (!this.#subscribe) return true;
    for (const p of this.#subscribe) if (covers(p, pattern)) return true;
    return false;
  }

  /**
   * Remember that the session was handed `reply` and may answer it once. Only inbox subjects
   * are granted: a requester cannot name an arbitrary subject and have a responder publish there.
   */
  grantReply(reply: string): void {
    if (!this.#publish || !reply.startsWith(INBOX_PREFIX)) return;
    if (this.#replies.size >= MAX_PENDING_REPLIES) {
      this.#replies.delete(this.#replies.values().next().value as string);
    }
    this.#replies.add(reply);
  }
}

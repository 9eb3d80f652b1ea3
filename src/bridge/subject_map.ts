/**
 * Subject mapping between the broker's subjects and NATS subjects. A rule pairs a local
 * pattern with a remote one that has the same wildcards in the same order; whatever the
 * wildcards match on one side fills them on the other. `"sensors.>"` maps to itself; a
 * per-host prefix is `{ "local": "sensors.>", "remote": "hostA.sensors.>" }`; literal tokens
 * may differ in number (`{ "local": "svc.*", "remote": "dc1.a.svc.*" }`).
 *
 * The same mapping applies to patterns that lie inside a rule's pattern (the bridge maps
 * queue-group subscriptions that way), and {@link intersect} gives the subjects two patterns
 * have in common.
 *
 * @example
 * ```ts
 * import { SubjectMapping } from "./subject_map.ts";
 * const m = new SubjectMapping({ local: "sensors.*.temp", remote: "hostA.sensors.*.temp" });
 * m.toRemote("sensors.vm1.temp"); // "hostA.sensors.vm1.temp"
 * m.toLocal("hostA.sensors.vm2.temp"); // "sensors.vm2.temp"
 * ```
 * @module
 */
import {
  covers,
  matches,
  TOKEN_SEPARATOR,
  validatePattern,
  WILDCARD_ONE,
  WILDCARD_REST,
} from "../subject/subject.ts";

/**
 * One mapping rule: a local pattern and the NATS pattern it corresponds to.
 *
 * @example
 * ```ts
 * import { ruleProblem, type SubjectRule } from "./subject_map.ts";
 * const rule: SubjectRule = { local: "svc.*.>", remote: "hostA.svc.*.>" };
 * console.log(ruleProblem(rule)); // undefined: it maps both ways
 * console.log(ruleProblem({ local: "svc.>", remote: "svc.*" })); // … the same wildcards …
 * ```
 */
export interface SubjectRule {
  /** Pattern of subjects on this broker. */
  local: string;
  /** The corresponding pattern on NATS (the same wildcards in the same order). */
  remote: string;
}

/** Why `rule` cannot map subjects both ways, or undefined when it can. */
export function ruleProblem(rule: SubjectRule, maxBytes = 4096): string | undefined {
  for (const side of ["local", "remote"] as const) {
    const problem = validatePattern(rule[side], maxBytes);
    if (problem) return `invalid ${side} pattern "${rule[side]}": ${problem}`;
  }
  const a = wildcards(rule.local), b = wildcards(rule.remote);
  if (a !== b) {
    return `"${rule.local}" and "${rule.remote}" must have the same wildcards in the same order ` +
      `(local has "${a || "none"}", remote has "${b || "none"}")`;
  }
  return undefined;
}

/** The wildcard tokens of a pattern in order, e.g. "*>" for "a.*.b.>". */
function wildcards(pattern: string): string {
  let out = "";
  for (const t of pattern.split(TOKEN_SEPARATOR)) {
    if (t === WILDCARD_ONE || t === WILDCARD_REST) out += t;
  }
  return out;
}

/** A compiled {@link SubjectRule}. */
export class SubjectMapping {
  readonly local: string;
  readonly remote: string;
  readonly identity: boolean;
  #localTokens: string[];
  #remoteTokens: string[];

  constructor(rule: SubjectRule) {
    const problem = ruleProblem(rule);
    if (problem) throw new Error(problem);
    this.local = rule.local;
    this.remote = rule.remote;
    this.identity = rule.local === rule.remote;
    this.#localTokens = rule.local.split(TOKEN_SEPARATOR);
    this.#remoteTokens = rule.remote.split(TOKEN_SEPARATOR);
  }

  /** Does a local subject fall under this rule? */
  matchesLocal(subject: string): boolean {
    return matches(this.local, subject);
  }

  /** Does a NATS subject fall under this rule? */
  matchesRemote(subject: string): boolean {
    return matches(this.remote, subject);
  }

  /** Does a local pattern lie inside this rule's local pattern? */
  coversLocal(pattern: string): boolean {
    return covers(this.local, pattern);
  }

  /** The NATS subject (or pattern) for a local one inside {@link local}. */
  toRemote(local: string): string {
    return this.identity ? local : translate(local, this.#localTokens, this.#remoteTokens);
  }

  /** The local subject (or pattern) for a NATS one inside {@link remote}. */
  toLocal(remote: string): string {
    return this.identity ? remote : translate(remote, this.#remoteTokens, this.#localTokens);
  }
}

/** Capture what `from`'s wildcards match in `subject`, and fill `to`'s wildcards with it. */
function translate(subject: string, from: string[], to: string[]): string {
  const tokens = subject.split(TOKEN_SEPARATOR);
  const captured: string[] = [];
  for (let i = 0; i < from.length; i++) {
    if (from[i] === WILDCARD_REST) {
      captured.push(tokens.slice(i).join(TOKEN_SEPARATOR));
      break;
    }
    if (from[i] === WILDCARD_ONE) captured.push(tokens[i]);
  }
  let next = 0;
  const out = to.map((t) => t === WILDCARD_ONE || t === WILDCARD_REST ? captured[next++] : t);
  return out.join(TOKEN_SEPARATOR);
}

/**
 * The pattern matching exactly the subjects both patterns match, or null when none. Two
 * patterns always meet in one pattern (or not at all), since `>` can only end one.
 *
 * @example
 * ```ts
 * intersect("a.>", "*.b.c"); // "a.b.c"
 * intersect("a.*", "b.*"); // null
 * ```
 */
export function intersect(a: string, b: string): string | null {
  const x = a.split(TOKEN_SEPARATOR), y = b.split(TOKEN_SEPARATOR);
  const out: string[] = [];
  for (let i = 0;; i++) {
    if (i === x.length && i === y.length) return out.join(TOKEN_SEPARATOR);
    if (x[i] === WILDCARD_REST) {
      if (i >= y.length) return null;
      return [...out, ...y.slice(i)].join(TOKEN_SEPARATOR);
    }
    if (y[i] === WILDCARD_REST) {
      if (i >= x.length) return null;
      return [...out, ...x.slice(i)].join(TOKEN_SEPARATOR);
    }
    if (i >= x.length || i >= y.length) return null;
    if (x[i] === WILDCARD_ONE) out.push(y[i]);
    else if (y[i] === WILDCARD_ONE || y[i] === x[i]) out.push(x[i]);
    else return null;
  }
}

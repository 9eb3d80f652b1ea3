/**
 * A subscription index: a token trie from patterns to subscriptions, with a bounded cache of
 * match results so that a steady stream on a few subjects costs one map lookup per message.
 * The cache is bounded by the references it holds (the sum of its results' lengths), not only
 * by its number of subjects: with thousands of subscriptions to `>`, each cached subject holds
 * thousands of references. An uncached match walks at most one node per token of the indexed
 * patterns; {@link Sublist.lastMatchCost} tells a caller how many it walked, so it can charge
 * the work to whoever caused it.
 *
 * @example
 * ```ts
 * import { Sublist } from "./sublist.ts";
 * const list = new Sublist<string>();
 * list.insert("a.*", "first");
 * list.insert("a.>", "second");
 * list.match("a.b"); // ["first", "second"]
 * ```
 * @module
 */
import { TOKEN_SEPARATOR, WILDCARD_ONE, WILDCARD_REST } from "./subject.ts";

interface Node<S> {
  children: Map<string, Node<S>>;
  one?: Node<S>; // the `*` child
  rest: Set<S>; // subscriptions whose pattern ends here with `>`
  exact: Set<S>; // subscriptions whose pattern ends at this node
}

function newNode<S>(): Node<S> {
  return { children: new Map(), rest: new Set(), exact: new Set() };
}

/** Number of distinct subjects whose match results are cached. */
export const SUBLIST_CACHE_SIZE = 4096;
/** Subscription references all cached results may hold together (8 bytes each). */
export const SUBLIST_CACHE_REFS = 256 * 1024;
/**
 * Results with more references than this are not cached; they are collected into reused
 * arrays instead (see {@link Sublist.release}), so that a flood of new subjects matching
 * thousands of subscriptions allocates nothing per message.
 */
export const SUBLIST_CACHED_RESULT_MAX = 1024;

/** Index of subscriptions by subject pattern. */
export class Sublist<S> {
  #root: Node<S> = newNode();
  #cache = new Map<string, S[]>();
  #cachedRefs = 0;
  #spare: S[][] = []; // reusable arrays for large uncached results
  #count = 0;
  #lastCost = 0;

  /** Number of entries in the index. */
  get size(): number {
    return this.#count;
  }

  /** Add `sub` under a valid `pattern`. */
  insert(pattern: string, sub: S): void {
    let node = this.#root;
    const tokens = pattern.split(TOKEN_SEPARATOR);
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (t === WILDCARD_REST) {
        node.rest.add(sub);
        this.#changed();
        return;
      }
      if (t === WILDCARD_ONE) {
        node = node.one ??= newNode();
      } else {
        let next = node.children.get(t);
        if (!next) node.children.set(t, next = newNode());
        node = next;
      }
    }
    node.exact.add(sub);
    this.#changed();
  }

  /** Remove `sub` from under `pattern`; returns whether it was there. */
  remove(pattern: string, sub: S): boolean {
    const path: [Node<S>, string][] = [];
    let node: Node<S> | undefined = this.#root;
    const tokens = pattern.split(TOKEN_SEPARATOR);
    let removed = false;
    for (let i = 0; i < tokens.length && node; i++) {
      const t = tokens[i];
      if (t === WILDCARD_REST) {
        removed = node.rest.delete(sub);
        node = undefined;
        break;
      }
      path.push([node, t]);
      node = t === WILDCARD_ONE ? node.one : node.children.get(t);
    }
    if (node) removed = node.exact.delete(sub);
    if (!removed) return false;
    // Prune empty nodes so a churn of unique subjects does not grow the trie forever.
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, t] = path[i];
      const child = t === WILDCARD_ONE ? parent.one : parent.children.get(t);
      if (!child || child.exact.size || child.rest.size || child.children.size || child.one) break;
      if (t === WILDCARD_ONE) parent.one = undefined;
      else parent.children.delete(t);
    }
    this.#count--;
    this.#clearCache();
    return true;
  }

  /** Trie nodes the last {@link match} walked (0 when it was answered from the cache). */
  get lastMatchCost(): number {
    return this.#lastCost;
  }

  /**
   * All subscriptions whose pattern matches the literal `subject`. Do not mutate the result;
   * hand it to {@link release} when done with it (a large result's array is then reused).
   */
  match(subject: string): readonly S[] {
    const cached = this.#cache.get(subject);
    if (cached) {
      this.#lastCost = 0;
      return cached;
    }
    const tokens = subject.split(TOKEN_SEPARATOR);
    const out: S[] = this.#spare.pop() ?? [];
    this.#lastCost = collect(this.#root, tokens, 0, out);
    if (out.length > SUBLIST_CACHED_RESULT_MAX) {
      (out as LargeResult).reusable = true;
      return out;
    }
    const cache = this.#cache;
    while (
      cache.size > 0 &&
      (cache.size >= SUBLIST_CACHE_SIZE || this.#cachedRefs + out.length > SUBLIST_CACHE_REFS)
    ) {
      // Evict the oldest entry (Map keeps insertion order).
      const oldest = cache.keys().next().value as string;
      this.#cachedRefs -= cache.get(oldest)!.length;
      cache.delete(oldest);
    }
    cache.set(subject, out);
    this.#cachedRefs += out.length;
    return out;
  }

  /** Done with a result of {@link match}: a large one's array may be reused. */
  release(result: readonly S[]): void {
    const r = result as S[] & LargeResult;
    if (!r.reusable || this.#spare.length >= SPARE_ARRAYS) return;
    r.reusable = false;
    r.length = 0;
    this.#spare.push(r);
  }

  #changed() {
    this.#count++;
    this.#clearCache();
  }

  #clearCache() {
    this.#cache.clear();
    this.#cachedRefs = 0;
  }
}

/** Arrays kept for reuse (one per nested match in flight is enough). */
const SPARE_ARRAYS = 4;

interface LargeResult {
  reusable?: boolean;
}

/** Collect matches of `tokens[i..]` under `node` into `out`; returns the nodes walked. */
function collect<S>(node: Node<S>, tokens: string[], i: number, out: S[]): number {
  for (const s of node.rest) out.push(s); // `>` here matches tokens[i..] when non-empty
  if (i === tokens.length) {
    // `>` needs at least one more token: undo what was pushed for an empty remainder.
    out.length -= node.rest.size;
    for (const s of node.exact) out.push(s);
    return 1;
  }
  let walked = 1;
  const next = node.children.get(tokens[i]);
  if (next) walked += collect(next, tokens, i + 1, out);
  if (node.one) walked += collect(node.one, tokens, i + 1, out);
  return walked;
}

import { test } from "node:test";
import assert from "node:assert/strict";
import { covers, matches, validatePattern, validateSubject } from "../src/subject/subject.ts";
import { Sublist } from "../src/subject/sublist.ts";

test("subject: literal subjects are validated", () => {
  assert.equal(validateSubject("sensors.vm1.temp"), undefined);
  assert.match(validateSubject("")!, /empty/);
  assert.match(validateSubject("a..b")!, /empty token/);
  assert.match(validateSubject("a.b.")!, /empty token/);
  assert.match(validateSubject("a b")!, /whitespace/);
  assert.match(validateSubject("a.*")!, /wildcards are not allowed/);
  assert.match(validateSubject("a.>")!, /wildcards are not allowed/);
  assert.match(validateSubject("x".repeat(257))!, /longer than 256/);
  assert.equal(validateSubject("x".repeat(256)), undefined);
  // Multi-byte characters count as their UTF-8 bytes.
  assert.match(validateSubject("é".repeat(129))!, /longer than 256/);
});

test("subject: patterns allow whole-token wildcards only", () => {
  assert.equal(validatePattern("a.*.c"), undefined);
  assert.equal(validatePattern("a.>"), undefined);
  assert.equal(validatePattern(">"), undefined);
  assert.match(validatePattern("a.>.c")!, /last token/);
  assert.match(validatePattern("a.b*")!, /whole tokens/);
  assert.match(validatePattern("a.>b")!, /whole tokens/);
});

test("subject: matching with * and >", () => {
  assert.ok(matches("a.b", "a.b"));
  assert.ok(!matches("a.b", "a.c"));
  assert.ok(matches("a.*", "a.b"));
  assert.ok(!matches("a.*", "a.b.c"));
  assert.ok(!matches("a.*", "a"));
  assert.ok(matches("a.>", "a.b.c"));
  assert.ok(!matches("a.>", "a"));
  assert.ok(matches(">", "anything.at.all"));
  assert.ok(matches("*.b.>", "x.b.y.z"));
});

test("subject: covers decides whether a pattern lies inside another", () => {
  assert.ok(covers("a.>", "a.b"));
  assert.ok(covers("a.>", "a.*.c"));
  assert.ok(covers("a.>", "a.>"));
  assert.ok(covers("a.*", "a.b"));
  assert.ok(!covers("a.*", "a.>"));
  assert.ok(!covers("a.b", "a.*"));
  assert.ok(covers(">", "x.>"));
  assert.ok(!covers("a.>", "a"));
});

test("sublist: match, remove, cache invalidation", () => {
  const list = new Sublist<string>();
  list.insert("a.b", "exact");
  list.insert("a.*", "one");
  list.insert("a.>", "rest");
  list.insert(">", "all");
  list.insert("b.*", "other");
  assert.deepEqual([...list.match("a.b")].sort(), ["all", "exact", "one", "rest"]);
  assert.deepEqual([...list.match("a.b.c")].sort(), ["all", "rest"]);
  assert.deepEqual([...list.match("a")].sort(), ["all"]);
  assert.ok(list.remove("a.*", "one"));
  assert.ok(!list.remove("a.*", "one"));
  assert.deepEqual([...list.match("a.b")].sort(), ["all", "exact", "rest"]);
  assert.ok(list.remove(">", "all"));
  assert.deepEqual([...list.match("a")], []);
  assert.equal(list.size, 3);
});

test("sublist: agrees with matches() on random patterns", () => {
  const tokens = ["a", "b", "c", "*", ">"];
  let seed = 42;
  const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
  const patterns: string[] = [];
  for (let i = 0; i < 200; i++) {
    const len = 1 + rnd(4);
    const parts = [];
    for (let j = 0; j < len; j++) {
      const t = tokens[rnd(j === len - 1 ? 5 : 4)];
      parts.push(t);
    }
    patterns.push(parts.join("."));
  }
  const list = new Sublist<number>();
  patterns.forEach((p, i) => list.insert(p, i));
  for (let k = 0; k < 300; k++) {
    const len = 1 + rnd(4);
    const subject = Array.from({ length: len }, () => tokens[rnd(3)]).join(".");
    const expected = patterns.map((p, i) => (matches(p, subject) ? i : -1)).filter((i) => i >= 0);
    assert.deepEqual([...list.match(subject)].sort((x, y) => x - y), expected, subject);
  }
});

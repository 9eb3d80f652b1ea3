/**
 * PUB heads (src/client/pub_heads.ts): a plain head is checked once and then served from the
 * cache, but only under the limits it was checked against: after a new WELCOME with a smaller
 * subject limit, a subject the cache holds is checked again and refused.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PubHeads } from "../src/client/pub_heads.ts";
import { decodeValue } from "../src/protocol/codec.ts";
import { ErrorCode } from "../src/protocol/errors.ts";
import type { WelcomeHead } from "../src/protocol/ops.ts";
import { DEFAULT_LIMITS } from "../src/protocol/limits.ts";

function welcome(maxSubjectBytes: number): WelcomeHead {
  return {
    v: 1,
    features: [],
    nonce: 1,
    identity: "host",
    session: "s1",
    inbox: "_INBOX.s1",
    maxFrameBytes: DEFAULT_LIMITS.maxFrameBytes,
    maxSubjectBytes,
    maxSubscriptions: 100,
    maxHeaderBytes: DEFAULT_LIMITS.maxHeaderBytes,
    pingIntervalMs: 10_000,
  };
}

test("pub heads: a plain head is encoded once per subject and limits", () => {
  const heads = new PubHeads();
  const w = welcome(256);
  const a = heads.head("sensors.vm1.temp", undefined, w);
  assert.deepEqual(decodeValue(a), ["sensors.vm1.temp", null, null]);
  assert.equal(heads.head("sensors.vm1.temp", undefined, w), a, "served from the cache");
  const withReply = heads.head("sensors.vm1.temp", { reply: "r.1" }, w);
  assert.deepEqual(decodeValue(withReply), ["sensors.vm1.temp", "r.1", null]);
});

test("pub heads: a cached subject is checked again under a new WELCOME's limits", () => {
  const heads = new PubHeads();
  const subject = "sensors.vm1.temperature"; // 23 bytes
  heads.head(subject, undefined, welcome(256));
  assert.throws(
    () => heads.head(subject, undefined, welcome(16)),
    (err: Error & { code?: string }) => err.code === ErrorCode.BadSubject,
  );
  // And a bad subject is never cached.
  assert.throws(() => heads.head("bad subject", undefined, welcome(256)));
  assert.throws(() => heads.head("bad subject", undefined, welcome(256)));
});

test("pub heads: the first WELCOME replaces the default limits for cached subjects", () => {
  const heads = new PubHeads();
  const subject = "a".repeat(40);
  heads.head(subject, undefined, undefined); // before any session: the protocol's defaults
  assert.throws(
    () => heads.head(subject, undefined, welcome(32)),
    (err: Error & { code?: string }) => err.code === ErrorCode.BadSubject,
  );
});

test("pub heads: options without a reply or headers are a plain publish", () => {
  const heads = new PubHeads();
  const w = welcome(256);
  const plain = heads.head("x.y", undefined, w);
  assert.equal(heads.head("x.y", {}, w), plain);
  assert.equal(heads.head("x.y", { reply: undefined, headers: undefined }, w), plain);
});

/**
 * Hostile guests against subscription matching (issue 9, item 9): a VM must not make every
 * publish slow for everyone by subscribing to long patterns of literals and `*`. The limits
 * (`maxSubjectTokens` per pattern, `maxSubscriptionTokens` per session) bound what one session
 * can put in the index; under the worst they allow, another VM's round trips stay fast. The
 * broker runs in its own process, so its stalls are not the test's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Op, type WelcomeHead } from "../src/protocol/ops.ts";
import { encodeValue } from "../src/protocol/codec.ts";
import { encodeFrame } from "../src/protocol/frame.ts";
import { startChildBroker } from "./fixtures/child_broker.ts";
import { percentile } from "./fixtures/measure.ts";
import { frame } from "./fixtures/raw_guest.ts";

/** Defaults the broker is expected to apply (limits.maxSubjectTokens / maxSubscriptionTokens). */
const MAX_SUBJECT_TOKENS = 32;
const MAX_SUBSCRIPTION_TOKENS = 16_384;

/** A small deterministic PRNG, so every run attacks with the same patterns. */
function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A pattern of `n` tokens: `n - 1` random picks of `a` or `*`, then `z`. Every such pattern is
 * consistent with a subject of `a`s up to its last token, so matching one of those subjects
 * walks every node of the index; the final `z` makes sure nothing matches.
 */
function hostilePattern(n: number, random: () => number): string {
  const tokens: string[] = [];
  for (let i = 0; i < n - 1; i++) tokens.push(random() < 0.5 ? "a" : "*");
  tokens.push("z");
  return tokens.join(".");
}

const SUBJECT_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxy";

/** The `i`th distinct subject of `n` tokens: `n - 1` `a`s and a 2-character last token. */
function hostileSubject(n: number, i: number): string {
  const c = SUBJECT_CHARS;
  const last = c[Math.floor(i / c.length) % c.length] + c[i % c.length];
  return `${"a.".repeat(n - 1)}${last}`;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test("hostile match (item 9a): a pattern over maxSubjectTokens and subscriptions past maxSubscriptionTokens are refused", async () => {
  const b = await startChildBroker({ vms: [{ name: "vm1", kind: "raw" }] });
  try {
    const g = b.chardev("vm1");
    await g.hello();
    const random = mulberry32(1);
    const tooLong = hostilePattern(MAX_SUBJECT_TOKENS + 1, random);
    g.send(Op.Sub, [1, tooLong, null]);
    await g.sync();
    const tooLongErrs = g.errors();
    console.log(
      `item 9a: a ${MAX_SUBJECT_TOKENS + 1}-token SUB got ${JSON.stringify(tooLongErrs)}`,
    );
    assert.equal(tooLongErrs.length, 1, `a ${MAX_SUBJECT_TOKENS + 1}-token pattern was refused`);
    assert.equal(tooLongErrs[0].code, "BAD_SUBJECT");
    assert.equal(tooLongErrs[0].subject, tooLong);

    // Distinct 32-token patterns until well past the per-session token budget.
    const wanted = Math.ceil(MAX_SUBSCRIPTION_TOKENS / MAX_SUBJECT_TOKENS) + 8;
    const subs: Uint8Array[] = [];
    for (let i = 0; i < wanted; i++) {
      subs.push(frame(Op.Sub, [i + 2, hostilePattern(MAX_SUBJECT_TOKENS, random), null]));
    }
    subs.push(frame(Op.Sub, [wanted + 2, "one", null])); // a single token past the budget
    b.chardev("vm1").write(concat(subs));
    await g.sync(20_000);
    const accepted = (await b.vmStats("vm1")).subscriptions;
    const refused = g.errors().slice(1);
    console.log(
      `item 9a: ${wanted} x ${MAX_SUBJECT_TOKENS}-token SUBs + 1 x 1-token: ${accepted} accepted ` +
        `(${accepted * MAX_SUBJECT_TOKENS} tokens), ${refused.length} refused, first: ` +
        JSON.stringify(refused[0]),
    );
    assert.ok(
      accepted * MAX_SUBJECT_TOKENS <= MAX_SUBSCRIPTION_TOKENS,
      `${accepted} subscriptions of ${MAX_SUBJECT_TOKENS} tokens stand: more than ` +
        `${MAX_SUBSCRIPTION_TOKENS} tokens for one session`,
    );
    assert.ok(
      accepted * MAX_SUBJECT_TOKENS > MAX_SUBSCRIPTION_TOKENS - 2 * MAX_SUBJECT_TOKENS,
      `only ${accepted} subscriptions of ${MAX_SUBJECT_TOKENS} tokens accepted: the budget is ` +
        `smaller than ${MAX_SUBSCRIPTION_TOKENS} tokens`,
    );
    assert.equal(refused.length, wanted + 1 - accepted, "every refused SUB got an ERR");
    for (const e of refused) {
      assert.ok(
        ["TOO_MANY_SUBSCRIPTIONS", "BAD_SUBJECT"].includes(e.code),
        `refused with ${e.code}`,
      );
      assert.match(e.message, /16[ ,]?384|maxSubscriptionTokens/, "the message names the limit");
    }
  } finally {
    await b.close();
  }
});

test("hostile match (item 9b): under the worst patterns the limits allow, another VM's round-trip p99 stays under 250 ms (Bun) / 1 s (Deno)", async () => {
  const b = await startChildBroker({
    vms: [{ name: "vm1", kind: "raw" }, { name: "vm2", kind: "sim" }],
  });
  try {
    const dev = b.chardev("vm1");
    const attacker = dev;
    const welcome = (await attacker.hello()) as WelcomeHead;
    const random = mulberry32(7);
    // The attacker does the worst it is allowed: it probes whether 128-token patterns (the most
    // that fit in 256 bytes) are accepted; if not, it uses patterns of maxSubjectTokens up to
    // the session's token budget.
    const probe = hostilePattern(128, random);
    attacker.send(Op.Sub, [1, probe, null]);
    await attacker.sync();
    const tokens = dev.errors().length === 0 ? 128 : MAX_SUBJECT_TOKENS;
    const count = tokens === 128
      ? welcome.maxSubscriptions
      : Math.floor(MAX_SUBSCRIPTION_TOKENS / MAX_SUBJECT_TOKENS);
    const subs: Uint8Array[] = [];
    for (let i = tokens === 128 ? 1 : 0; i < count; i++) {
      subs.push(frame(Op.Sub, [i + 2, hostilePattern(tokens, random), null]));
    }
    dev.write(concat(subs));
    await attacker.sync(60_000);
    const accepted = (await b.vmStats("vm1", 20_000)).subscriptions;
    const setupErrors = dev.errors().length;

    const responder = await b.host();
    responder.subscribe<number>("svc.echo", { callback: (_e, m) => m.respond(m.data) });
    await responder.flush();
    const victim = await b.connectVm("vm2");
    const roundTrips = async (n: number, before?: (i: number) => void): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        before?.(i);
        const t = performance.now();
        await victim.request("svc.echo", i, { timeout: 30_000 });
        out.push(performance.now() - t);
      }
      return out;
    };
    try {
      await roundTrips(20); // warm-up
      const quiet = await roundTrips(100);
      // 200 distinct non-matching subjects, in 5 bursts of 40 spread over the round trips.
      let n = 0;
      const payload = encodeValue(0);
      const burst = () => {
        const pubs: Uint8Array[] = [];
        for (let k = 0; k < 40; k++) {
          pubs.push(
            encodeFrame(Op.Pub, encodeValue([hostileSubject(tokens, n++), null, null]), payload),
          );
        }
        dev.write(concat(pubs));
      };
      const attacked = await roundTrips(100, (i) => i % 20 === 10 && burst());
      await attacker.sync(60_000);
      const vm1 = await b.vmStats("vm1", 20_000);
      const ms = (v: number) => v.toFixed(1);
      console.log(
        `item 9b: attacker holds ${accepted} patterns of ${tokens} tokens, published ${n} ` +
          `subjects (${vm1.msgsIn} accepted, ${
            dev.errors().length - setupErrors
          } refused); victim ` +
          `round trips p50/p99 before ${ms(percentile(quiet, 0.5))}/${
            ms(percentile(quiet, 0.99))
          } ms, ` +
          `during ${ms(percentile(attacked, 0.5))}/${ms(percentile(attacked, 0.99))} ms ` +
          `(max ${ms(Math.max(...attacked))} ms)`,
      );
      assert.ok(accepted > 0, "the attacker's patterns are in the index");
      assert.equal(vm1.msgsIn, n, "every attacking publish was routed");
      // Deno's broker matches new subjects about three times slower than Bun's and reads other
      // sockets later while busy (bench/results/hostile/latest-deno.md); the original code
      // measured 2.4 s (Bun) and 2.7 s (Deno) here.
      const bound = "Deno" in globalThis ? 1000 : 250;
      assert.ok(
        percentile(attacked, 0.99) < bound,
        `victim round-trip p99 ${ms(percentile(attacked, 0.99))} ms under a matching attack ` +
          `(${accepted} x ${tokens}-token patterns)`,
      );
    } finally {
      await victim.close();
    }
  } finally {
    await b.close();
  }
});

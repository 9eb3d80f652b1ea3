// What `vbus pub` / `req` / `reply` send, and how they fail: VALUE is JSON unless --string or
// --raw says otherwise (never guessed), standard input with - / --stdin (binary-safe with
// --raw: bytes in = bytes out through `vbus sub --raw`), a publish the broker refuses is an
// error with exit 1, and --connect-timeout bounds the wait for a broker. The CLI runs as real
// processes against an in-process broker. Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startLab, waitFor } from "./helpers.ts";
import { killAll, vbus } from "./fixtures/cli_child.ts";
import type { Bus } from "../src/client/bus.ts";
import type { Msg } from "../src/client/msg.ts";

/** Collect what a host client receives on `subject`. */
async function collect(bus: Bus, subject: string): Promise<Msg[]> {
  const got: Msg[] = [];
  bus.subscribe(subject, { callback: (_e, m) => got.push(new MsgCopy(m) as unknown as Msg) });
  await bus.flush();
  return got;
}

/** A message's fields, read inside the callback (a ring slot is only valid there). */
class MsgCopy {
  subject: string;
  data: unknown;
  headers: unknown;
  constructor(m: Msg) {
    this.subject = m.subject;
    const d = m.data;
    this.data = d instanceof Uint8Array ? new Uint8Array(d) : d; // a plain copy, not a Buffer view
    this.headers = m.headers;
  }
}

function allBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + (i >> 8)) & 0xff; // every byte value, no pattern repeat at 256
  return b;
}

test("cli payload: VALUE is JSON, --string text, --raw bytes; a non-JSON VALUE is refused, not guessed", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const host = await lab.host();
    const got = await collect(host, "v.>");
    const env = { VBUS_SERVER: lab.listen };
    const send = async (args: string[], code = 0) => {
      const p = vbus(["pub", ...args], { env });
      assert.equal(await p.exitWithin(60_000), code, `vbus pub ${args.join(" ")}: ${p.errors()}`);
      return p;
    };
    await send(["v.num", "42"]);
    await send(["v.str", '"42"']);
    await send(["v.obj", '{"c": 21.5, "ok": true, "tags": ["a"]}', "--json"]);
    await send(["v.null", "null"]);
    await send(["v.text", "hello world", "--string"]);
    await send(["v.text", "42", "--string"]);
    await send(["v.raw", "héllo", "--raw"]);
    await send(["v.neg", "--", "-5"]);
    const bad = await send(["v.bad", "hello"], 2);
    assert.match(bad.errors(), /VALUE "hello" is not JSON .*use --string/);
    const badObj = await send(["v.bad", "{c: 1}"], 2);
    assert.match(badObj.errors(), /VALUE "\{c: 1\}" is not JSON/);
    await send(["v.end", "true"]);
    await waitFor(() => got.some((m) => m.subject === "v.end"), "the last publish", 20_000);
    assert.deepEqual(got.map((m) => [m.subject, m.data]), [
      ["v.num", 42],
      ["v.str", "42"],
      ["v.obj", { c: 21.5, ok: true, tags: ["a"] }],
      ["v.null", null],
      ["v.text", "hello world"],
      ["v.text", "42"],
      ["v.raw", new TextEncoder().encode("héllo")],
      ["v.neg", -5],
      ["v.end", true], // nothing was published for the refused VALUEs
    ]);
  } finally {
    killAll();
    await lab.close();
  }
});

test("cli payload: standard input (- / --stdin) as JSON, text or exact bytes; sub --raw gives the bytes back", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const host = await lab.host();
    const got = await collect(host, "in.>");
    const env = { VBUS_SERVER: lab.listen };
    const pipe = async (args: string[], stdin: Uint8Array | string, code = 0) => {
      const p = vbus(["pub", ...args], { env, stdin });
      assert.equal(await p.exitWithin(60_000), code, `vbus pub ${args.join(" ")}: ${p.errors()}`);
      return p;
    };
    const binary = allBytes(300_000);
    await pipe(["in.json", "-"], '{"from": "stdin"}\n');
    await pipe(["in.text", "--stdin", "--string"], "line 1\nline 2\n");
    await pipe(["in.bin", "-", "--raw"], binary);
    await pipe(["in.empty", "-", "--raw"], new Uint8Array(0));
    const notText = await pipe(["in.bad", "-", "--string"], new Uint8Array([0x66, 0xff, 0xfe]), 1);
    assert.match(
      notText.errors(),
      /^vbus pub: standard input is not UTF-8 text; use --raw to send its bytes\n$/,
    );
    const notJson = await pipe(["in.bad", "-"], "two words", 1);
    assert.match(notJson.errors(), /standard input is not one JSON value .*--string .*--raw/);
    await pipe(["in.end", "-", "--count", "2"], "1");
    await waitFor(
      () => got.filter((m) => m.subject === "in.end").length === 2,
      "the last publishes",
      20_000,
    );
    assert.deepEqual(got.map((m) => [m.subject, m.data]), [
      ["in.json", { from: "stdin" }],
      ["in.text", "line 1\nline 2\n"],
      ["in.bin", binary],
      ["in.empty", new Uint8Array(0)],
      ["in.end", 1],
      ["in.end", 1],
    ]);

    // Through the CLI both ways: bytes in = bytes out.
    const sub = vbus(["sub", "rt.bin", "--count", "1", "--raw"], { env });
    const before = lab.broker.stats().host.subscriptions;
    await waitFor(
      () => lab.broker.stats().host.subscriptions > before,
      "vbus sub subscribed",
      30_000,
    );
    await pipe(["rt.bin", "-", "--raw"], binary);
    assert.equal(await sub.exitWithin(60_000), 0, sub.errors());
    assert.deepEqual(sub.stdoutBytes(), binary);

    // req and reply read standard input too.
    const replier = vbus([
      "reply",
      "svc.echo",
      "--stdin",
      "--raw",
      "--count",
      "2",
      "--output",
      "json",
    ], {
      env,
      stdin: new Uint8Array([0, 1, 2, 255]),
    });
    // Answered once it has subscribed (no responders until then).
    let probe: Msg | undefined;
    for (let i = 0; i < 300 && !probe; i++) {
      probe = await host.request("svc.echo", "probe", { timeout: 2000 }).catch(async () => {
        await new Promise((r) => setTimeout(r, 100));
        return undefined;
      });
    }
    assert.deepEqual(
      [...(probe?.data as Uint8Array ?? [])],
      [0, 1, 2, 255],
      "the replier answers with stdin's bytes",
    );
    const req = vbus(["req", "svc.echo", "-", "--string", "--output", "json"], {
      env,
      stdin: "ping",
    });
    assert.equal(await req.exitWithin(60_000), 0, req.errors());
    assert.deepEqual(JSON.parse(req.output()).data, { $binary: "AAEC/w==" });
    assert.equal(await replier.exitWithin(60_000), 0, replier.errors());
    assert.deepEqual(replier.output().trim().split("\n").map((l) => JSON.parse(l).data), [
      "probe",
      "ping",
    ]);
  } finally {
    killAll();
    await lab.close();
  }
});

test("cli payload: a publish the broker refuses exits 1 with its error; a permitted one exits 0", async () => {
  const lab = await startLab({
    vms: [],
    hostPermissions: { publish: ["ok.>"], subscribe: [">"] },
  });
  try {
    const env = { VBUS_SERVER: lab.listen };
    const host = await lab.host();
    const got = await collect(host, ">");
    const denied = vbus(["pub", "secret.x", "1"], { env });
    const many = vbus(["pub", "secret.y", "1", "--count", "1000"], { env });
    const allowed = vbus(["pub", "ok.x", "1"], { env });
    assert.equal(await denied.exitWithin(60_000), 1, denied.errors());
    assert.equal(
      denied.errors(),
      'vbus pub: refused by the broker: publish to "secret.x" is not permitted (PERMISSION_DENIED)\n',
    );
    assert.equal(await many.exitWithin(60_000), 1, many.errors());
    assert.match(
      many.errors(),
      /^vbus pub: refused by the broker: publish to "secret\.y" is not permitted \(PERMISSION_DENIED\)( \(and \d+ more\))?\n$/,
    );
    assert.equal(await allowed.exitWithin(60_000), 0, allowed.errors());
    await waitFor(() => got.length > 0, "the permitted publish", 20_000);
    assert.deepEqual(got.map((m) => m.subject), ["ok.x"]);
    // it stopped at the first refusal it heard of, long before 1000
    assert.ok(lab.broker.stats().host.denied < 1000, `denied ${lab.broker.stats().host.denied}`);
    const sub = vbus(["sub", "$VBUS.x"], { env });
    assert.equal(await sub.exitWithin(60_000), 1);
    assert.match(sub.errors(), /^vbus sub: subscribe to "\$VBUS\.x" is not permitted\n$/);
  } finally {
    killAll();
    await lab.close();
  }
});

test("cli payload: --connect-timeout bounds the wait for a broker that is not there", async () => {
  const lab = await startLab({ vms: [] });
  const missing = join(lab.dir, "no-broker.sock");
  try {
    const t0 = Date.now();
    const p = vbus(["pub", "a", "1", "--server", missing, "--connect-timeout", "300ms"]);
    assert.equal(await p.exitWithin(60_000), 1);
    const ms = Date.now() - t0;
    assert.match(
      p.errors(),
      /^vbus pub: could not connect within 300 ms: .*ENOENT.*no broker listens on/,
    );
    // Process start-up (Deno type-strips the CLI) dominates; the default 10 s would show.
    assert.ok(ms < 9000, `${ms} ms`);
  } finally {
    killAll();
    await lab.close();
  }
});

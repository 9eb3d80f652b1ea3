// How `vbus sub`, `req` and `reply` print: for people on a terminal (checked under a real
// pseudo-terminal with util-linux `script`), JSON lines on a pipe, --human / --json / --raw /
// --output to choose. Real CLI processes against an in-process broker. Runs under
// `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import process from "node:process";
import { type Lab, startLab, waitFor } from "./helpers.ts";
import { cliArgv, killAll, ROOT, vbus, type VbusChild } from "./fixtures/cli_child.ts";
import { shellQuote } from "../src/vm/qemu_args.ts";

/** Start `vbus sub ARGS` and wait until the broker has its subscription. */
async function subscribed(lab: Lab, args: string[]): Promise<VbusChild> {
  const before = lab.broker.stats().host.subscriptions;
  const p = vbus(args, { env: { VBUS_SERVER: lab.listen } });
  await waitFor(
    () => lab.broker.stats().host.subscriptions > before,
    `vbus ${args.join(" ")} subscribed`,
    30_000,
  );
  return p;
}

async function publishAll(lab: Lab) {
  const host = await lab.host();
  await host.publish("out.a", "plain text");
  await host.publish("out.b", { n: [1, 2] }, {
    headers: { k: "v", trace: "1" },
    reply: "reply.here",
  });
  await host.publish("out.c", new Uint8Array([0, 255, 10]));
  await host.publish("out.d", 42);
  await host.flush();
  await host.close();
}

test("cli output: --human, --json (the default on a pipe) and --raw for sub", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const human = await subscribed(lab, ["sub", "out.*", "--count", "4", "--human"]);
    const json = await subscribed(lab, ["sub", "out.*", "--count", "4", "--json"]);
    const piped = await subscribed(lab, ["sub", "out.*", "--count", "4"]);
    const raw = await subscribed(lab, ["sub", "out.*", "--count", "4", "--raw"]);
    const output = await subscribed(lab, ["sub", "out.*", "--count", "4", "--output", "human"]);
    await publishAll(lab);
    for (const p of [human, json, piped, raw, output]) {
      assert.equal(await p.exitWithin(60_000), 0, p.errors());
    }
    assert.equal(
      human.output(),
      '[#1] Received on "out.a"\nplain text\n\n' +
        '[#2] Received on "out.b" with reply "reply.here"\nk: v\ntrace: 1\n\n{"n":[1,2]}\n\n' +
        '[#3] Received on "out.c"\n{"$binary":"AP8K"}\n\n' +
        '[#4] Received on "out.d"\n42\n\n',
    );
    assert.equal(output.output(), human.output());
    const lines = [
      { subject: "out.a", data: "plain text" },
      {
        subject: "out.b",
        data: { n: [1, 2] },
        reply: "reply.here",
        headers: { k: "v", trace: "1" },
      },
      { subject: "out.c", data: { $binary: "AP8K" } },
      { subject: "out.d", data: 42 },
    ];
    assert.deepEqual(json.output().trimEnd().split("\n").map((l) => JSON.parse(l)), lines);
    assert.equal(piped.output(), json.output());
    // payloads only, nothing between them: text, JSON, the binary's bytes, JSON
    assert.deepEqual(
      [...raw.stdoutBytes()],
      [
        ...new TextEncoder().encode('plain text{"n":[1,2]}'),
        0,
        255,
        10,
        ...new TextEncoder().encode("42"),
      ],
    );
  } finally {
    killAll();
    await lab.close();
  }
});

test("cli output: req prints the reply's value for people, its JSON line, or its bytes", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const host = await lab.host();
    host.subscribe("svc.>", {
      callback: (_e, m) => {
        const answer = m.subject === "svc.text" ? "it is noon" : new Uint8Array([1, 2, 3]);
        m.respond(answer, m.subject === "svc.text" ? { headers: { unit: "time" } } : undefined);
      },
    });
    await host.flush();
    const env = { VBUS_SERVER: lab.listen };
    const human = vbus(["req", "svc.text", "null", "--human"], { env });
    const json = vbus(["req", "svc.text", "null"], { env });
    const raw = vbus(["req", "svc.bin", "null", "--raw"], { env });
    const rawIn = vbus(["req", "svc.text", "-", "--raw", "--output", "human"], { env, stdin: "x" });
    for (const p of [human, json, raw, rawIn]) {
      assert.equal(await p.exitWithin(60_000), 0, p.errors());
    }
    assert.equal(human.output(), "unit: time\n\nit is noon\n");
    assert.equal(rawIn.output(), human.output());
    const line = JSON.parse(json.output());
    assert.equal(line.data, "it is noon");
    assert.deepEqual(line.headers, { unit: "time" });
    assert.deepEqual([...raw.stdoutBytes()], [1, 2, 3]);
  } finally {
    killAll();
    await lab.close();
  }
});

test("cli output: on a terminal sub prints for people unless --json says otherwise", async (t) => {
  if (spawnSync("script", ["--version"]).status !== 0) {
    t.skip("util-linux `script` (a pseudo-terminal for stdout) is not installed");
    return;
  }
  const lab = await startLab({ vms: [] });
  const scripts: ReturnType<typeof spawn>[] = [];
  try {
    // `script` gives the CLI a pseudo-terminal as stdout and copies what it printed.
    const inTerminal = async (args: string[]) => {
      const before = lab.broker.stats().host.subscriptions;
      const command = [process.execPath, ...cliArgv(args)].map(shellQuote).join(" ");
      const child = spawn("script", ["-qefc", command, "/dev/null"], {
        cwd: ROOT,
        env: { ...process.env, VBUS_LOG: "warn", VBUS_SERVER: lab.listen },
        stdio: ["ignore", "pipe", "pipe"],
      });
      scripts.push(child); // killed in finally; the CLI under it gets SIGHUP when its terminal goes
      let out = "";
      child.stdout.on("data", (d) => out += d);
      child.stderr.on("data", (d) => out += d);
      const done = new Promise<number>((r) => child.on("close", (c) => r(c ?? -1)));
      await waitFor(
        () => lab.broker.stats().host.subscriptions > before,
        "subscribed in a terminal",
        30_000,
      );
      return { done, out: () => out.replaceAll("\r\n", "\n") };
    };
    const human = await inTerminal(["sub", "tty.x", "--count", "1"]);
    const json = await inTerminal(["sub", "tty.x", "--count", "1", "--json"]);
    const host = await lab.host();
    await host.publish("tty.x", { hello: "terminal" });
    await host.flush();
    const bounded = (p: Promise<number>) =>
      Promise.race([
        p,
        new Promise<number>((_, rej) =>
          setTimeout(() => rej(new Error("script did not end")), 60_000)
        ),
      ]);
    assert.equal(await bounded(human.done), 0, human.out());
    assert.equal(await bounded(json.done), 0, json.out());
    assert.equal(human.out(), '[#1] Received on "tty.x"\n{"hello":"terminal"}\n\n');
    assert.equal(json.out(), '{"subject":"tty.x","data":{"hello":"terminal"}}\n');
  } finally {
    for (const c of scripts) if (c.exitCode === null) c.kill("SIGKILL");
    killAll();
    await lab.close();
  }
});

// The `vbus` CLI as real processes of the runtime running the tests: usage errors (one line,
// a hint, exit 2), per-command --help, --version, shell completion, and every command end to
// end against a broker process. Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { tempDir, waitFor } from "./helpers.ts";
import { SimulatedVm } from "../src/sim/simulated_vm.ts";
import { ROOT, vbus, type VbusChild } from "./fixtures/cli_child.ts";
import { COMMANDS } from "../src/cli/commands.ts";

const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

test("cli: a usage mistake is one line naming the problem and the help to read, exit 2", async () => {
  const cases: [string[], RegExp][] = [
    [[], /^vbus: no command given; see 'vbus --help'$/],
    [["bogus"], /^vbus: unknown command "bogus"; see 'vbus --help'$/],
    [["pub"], /^vbus: pub needs SUBJECT and a VALUE; see 'vbus pub --help'$/],
    [
      ["pub", "only-subject"],
      /^vbus: pub needs a VALUE after SUBJECT \(or - \/ --stdin to read standard input\); see 'vbus pub --help'$/,
    ],
    [
      ["pub", "a", "b", "c"],
      /^vbus: pub takes SUBJECT and VALUE, got 3: "a" "b" "c" \(quote a VALUE that has spaces\); see 'vbus pub --help'$/,
    ],
    [
      ["pub", "a", "1", "--stdin"],
      /^vbus: pub: give VALUE or --stdin, not both; see 'vbus pub --help'$/,
    ],
    [
      ["pub", "a", "-5"],
      /^vbus: unknown option -5 \(a VALUE starting with "-" goes after --, e.g\. -- -5\); see 'vbus pub --help'$/,
    ],
    [
      ["pub", "a", "hello"],
      /^vbus: VALUE "hello" is not JSON \(.*\); to send it as text use --string or quote it as JSON \('"hello"'\); see 'vbus pub --help'$/,
    ],
    [
      ["pub", "a", "1", "--string", "--raw"],
      /^vbus: --string and --raw exclude each other; see 'vbus pub --help'$/,
    ],
    [
      ["sub", "a", "--count", "x"],
      /^vbus: --count must be a positive integer, got "x"; see 'vbus sub --help'$/,
    ],
    [["sub", "a", "--count"], /^vbus: --count needs a value \(--count N\); see 'vbus sub --help'$/],
    [["sub", "a", "--nope"], /^vbus: unknown option --nope; see 'vbus sub --help'$/],
    [["sub", "a", "--stdin"], /^vbus: sub does not take --stdin; see 'vbus sub --help'$/],
    [["sub", "a", "--json=yes"], /^vbus: --json takes no value; see 'vbus sub --help'$/],
    [
      ["sub", "a", "--json", "--human"],
      /^vbus: --json and --human exclude each other; see 'vbus sub --help'$/,
    ],
    [
      ["req", "a", "1", "--timeout", "soon"],
      /^vbus: --timeout must be a positive integer, got "soon" \(milliseconds, or a duration: 500ms, 5s, 2m\); see 'vbus req --help'$/,
    ],
    [
      ["pub", "a", "1", "--connect-timeout", "0"],
      /^vbus: --connect-timeout must be a positive integer, got "0" .*; see 'vbus pub --help'$/,
    ],
    [
      ["pub", "a", "1", "--ivshmem", "slot4"],
      /^vbus: --ivshmem: "slot4" is not a PCI address .*; see 'vbus pub --help'$/,
    ],
    [["--count", "1"], /^vbus: --count belongs after a command; see 'vbus --help'$/],
    [["broker"], /^vbus: broker needs --config FILE; see 'vbus broker --help'$/],
    [
      ["libvirt-xml", "vm1"],
      /^vbus: libvirt-xml needs --config FILE; see 'vbus libvirt-xml --help'$/,
    ],
    [
      ["completion", "tcsh"],
      /^vbus: no completion for "tcsh": choose bash or zsh; see 'vbus completion --help'$/,
    ],
    [["help", "nope"], /^vbus: unknown command "nope"; see 'vbus --help'$/],
  ];
  // A few at a time: the machine is shared.
  const runs: VbusChild[] = [];
  for (let i = 0; i < cases.length; i += 4) {
    const batch = cases.slice(i, i + 4).map(([args]) => vbus(args));
    await Promise.all(batch.map((p) => p.exitWithin(60_000)));
    runs.push(...batch);
  }
  for (const [i, [args, expected]] of cases.entries()) {
    const p = runs[i];
    assert.equal(
      await p.exitWithin(60_000),
      2,
      `exit code of vbus ${args.join(" ")}: ${p.errors()}`,
    );
    assert.equal(p.output(), "", args.join(" "));
    const lines = p.errors().trimEnd().split("\n");
    assert.equal(lines.length, 1, `one line for vbus ${args.join(" ")}, got:\n${p.errors()}`);
    assert.match(lines[0], expected, args.join(" "));
  }
  const badLog = vbus(["stats"], { env: { VBUS_LOG: "loud" } });
  assert.equal(await badLog.exitWithin(60_000), 2);
  assert.match(badLog.errors(), /VBUS_LOG="loud" is not a log level/);
});

test("cli: --help per command, help COMMAND, --version from package.json", async () => {
  const all = vbus(["--help"]);
  const pub = vbus(["pub", "--help"]);
  const helpPub = vbus(["help", "pub"]);
  const pubBadArgs = vbus(["pub", "-h"]); // help wins over missing arguments
  const version = vbus(["--version"]);
  const v = vbus(["-V"]);
  for (const p of [all, pub, helpPub, pubBadArgs, version, v]) {
    assert.equal(await p.exitWithin(60_000), 0, p.errors());
  }
  for (const name of Object.keys(COMMANDS)) {
    assert.match(all.output(), new RegExp(`^  ${name} `, "m"));
  }
  assert.match(all.output(), /Exit status: 0 done, 1 the command failed .*, 2 bad usage/);
  assert.match(pub.output(), /^Usage: vbus pub SUBJECT \[VALUE \| -\] \[options\]\n/);
  assert.match(pub.output(), /--stdin +read VALUE from standard input/);
  assert.match(pub.output(), /--count N +publish N times \(default 1\)/);
  assert.doesNotMatch(pub.output(), /vbus broker|--queue|--interval/, "only pub's usage");
  assert.equal(helpPub.output(), pub.output());
  assert.equal(pubBadArgs.output(), pub.output());
  const sub = vbus(["sub", "--help"]);
  assert.equal(await sub.exitWithin(60_000), 0);
  assert.match(sub.output(), /--json +print one JSON line per message/);
  assert.doesNotMatch(sub.output(), /--stdin|--header/);
  assert.match(
    version.output(),
    new RegExp(`^vbus ${VERSION.replaceAll(".", "\\.")} \\((bun|deno) [0-9.]+\\)\\n$`),
  );
  assert.equal(v.output(), version.output());
});

test("cli: bash completion completes commands, each command's options and option values", async (t) => {
  if (spawnSync("bash", ["-c", "true"]).status !== 0) {
    t.skip("bash not installed");
    return;
  }
  const script = vbus(["completion", "bash"]);
  const zsh = vbus(["completion", "zsh"]);
  assert.equal(await script.exitWithin(60_000), 0, script.errors());
  assert.equal(await zsh.exitWithin(60_000), 0, zsh.errors());
  assert.match(zsh.output(), /^autoload -U \+X bashcompinit && bashcompinit\n/);
  const { dir, cleanup } = tempDir();
  try {
    const file = join(dir, "vbus.bash");
    writeFileSync(file, script.output());
    writeFileSync(join(dir, "broker.jsonc"), "{}");
    // What bash would offer after the words typed so far (the last one being completed).
    const complete = (...words: string[]) => {
      const r = spawnSync("bash", [
        "-c",
        `cd "${dir}" && source "${file}" && COMP_WORDS=(${
          words.map((w) => `'${w}'`).join(" ")
        }) && COMP_CWORD=${words.length - 1} && { _vbus; printf '%s\\n' "\${COMPREPLY[@]}"; }`,
      ], { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split("\n").filter(Boolean).sort();
    };
    assert.deepEqual(complete("vbus", "p"), ["pub"]);
    assert.deepEqual(complete("vbus", "re"), ["reload", "reply", "req"]);
    assert.deepEqual(complete("vbus", "pub", "x", "--co"), ["--connect-timeout", "--count"]);
    assert.deepEqual(complete("vbus", "sub", "x", "--st"), [], "sub takes no --stdin");
    assert.deepEqual(complete("vbus", "sub", "x", "--wake", ""), ["doorbell", "futex"]);
    assert.deepEqual(complete("vbus", "libvirt-xml", "vm1", "--device", ""), ["channel", "shmem"]);
    assert.deepEqual(complete("vbus", "broker", "--config", "bro"), ["broker.jsonc"]);
    assert.deepEqual(complete("vbus", "completion", ""), ["bash", "zsh"]);
    assert.deepEqual(complete("vbus", "help", "qe"), ["qemu-args"]);
    assert.deepEqual(
      complete("vbus", "pub", "x", "--count", ""),
      [],
      "a value is typed, not completed",
    );
  } finally {
    cleanup();
  }
});

test("cli: broker, sub, pub, req/reply, stats, qemu-args and libvirt-xml end to end", async () => {
  const { dir, cleanup } = tempDir();
  const vm = new SimulatedVm("vm1", join(dir, "vm1.sock"));
  await vm.start();
  const config = join(dir, "broker.jsonc");
  const listen = join(dir, "broker.sock");
  const shmFile = `/dev/shm/vbus-test-vm1-${process.pid}`;
  writeFileSync(
    config,
    `{
    // a complete example
    "listen": "${listen}",
    "vms": [{ "name": "vm1", "socket": "${join(dir, "vm1.sock")}", "shm": "${shmFile}" }]
  }`,
  );
  const broker = vbus(["broker", "--config", config]);
  const procs: VbusChild[] = [broker];
  try {
    await waitFor(() => vm.hostConnected, "broker connected to the VM port", 15_000);
    const sub = vbus(["sub", "greet.*", "--count", "2", "--server", listen]);
    procs.push(sub);
    // Subscribed once the broker counts it.
    const stats = async () => {
      const s = vbus(["stats"], { env: { VBUS_SERVER: listen } });
      assert.equal(await s.exitWithin(60_000), 0, s.errors());
      return JSON.parse(s.output());
    };
    for (let i = 0; i < 200 && (await stats()).host.subscriptions < 1; i++) { /* poll */ }
    const pub1 = vbus(["pub", "greet.a", "hello", "--string", "--server", listen]);
    assert.equal(await pub1.exitWithin(60_000), 0, pub1.errors());
    const pub2 = vbus(["pub", "greet.b", '{"n":[1,2]}', "--header", "k=v"], {
      env: { VBUS_SERVER: listen },
    });
    assert.equal(await pub2.exitWithin(60_000), 0, pub2.errors());
    assert.equal(await sub.exitWithin(60_000), 0, sub.errors());
    // stdout is a pipe here: JSON lines by default
    const lines = sub.output().trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines, [
      { subject: "greet.a", data: "hello" },
      { subject: "greet.b", data: { n: [1, 2] }, headers: { k: "v" } },
    ]);

    const replier = vbus(["reply", "svc.time", '"noon"', "--count", "1", "--server", listen]);
    procs.push(replier);
    let answer = "";
    for (let i = 0; i < 100 && !answer; i++) {
      const req = vbus(["req", "svc.time", "null", "--timeout", "2s", "--server", listen]);
      const code = await req.exitWithin(60_000);
      if (code === 0) answer = req.output();
      else assert.match(req.errors(), /no responders/);
    }
    const reply = JSON.parse(answer);
    assert.equal(reply.data, "noon");
    assert.match(reply.subject, /^_INBOX\.host\./);
    assert.equal(await replier.exitWithin(60_000), 0);

    const noOne = vbus(["req", "nobody", "1", "--server", listen]);
    assert.equal(await noOne.exitWithin(60_000), 1);
    assert.match(noOne.errors(), /no responders for "nobody"/);

    const s = await stats();
    assert.equal(s.vms[0].name, "vm1");

    const q = vbus(["qemu-args", "vm1", "--config", config]);
    assert.equal(await q.exitWithin(60_000), 0, q.errors());
    assert.match(q.output(), /virtserialport/);
    assert.match(q.output(), /name=org\.vbus\.0/);
    assert.match(q.output(), /ivshmem-plain/);
    const x = vbus(["libvirt-xml", "vm1", "--config", config]);
    const ch = vbus(["libvirt-xml", "vm1", "--config", config, "--device", "channel"]);
    const sh = vbus(["libvirt-xml", "vm1", "--config", config, "--device", "shmem"]);
    const bad = vbus(["libvirt-xml", "vm1", "--config", config, "--device", "disk"]);
    for (const p of [x, ch, sh]) assert.equal(await p.exitWithin(60_000), 0, p.errors());
    assert.match(
      x.output(),
      /^<devices>\n {2}<channel type='unix'>\n[^]* {2}<\/channel>\n {2}<shmem name='vbus-test-vm1-\d+'>\n[^]*<\/devices>\n$/,
    );
    assert.match(ch.output(), /^<channel type='unix'>\n[^]*<\/channel>\n$/);
    assert.match(
      sh.output(),
      /^<shmem name='vbus-test-vm1-\d+'>\n {2}<model type='ivshmem-plain'\/>\n {2}<size unit='M'>16<\/size>\n<\/shmem>\n$/,
    );
    assert.equal(await bad.exitWithin(60_000), 2);
    assert.match(
      bad.errors(),
      /^vbus: --device must be channel or shmem, got "disk"; see 'vbus libvirt-xml --help'\n$/,
    );
    const missing = vbus(["qemu-args", "vm9", "--config", config]);
    assert.equal(await missing.exitWithin(60_000), 1);
    assert.match(missing.errors(), /no VM named "vm9"/);
  } finally {
    for (const p of procs) p.kill("SIGTERM");
    await broker.done;
    await vm.stop();
    rmSync(shmFile, { force: true });
    cleanup();
  }
});

test("cli: a broker config error names the file and key and exits 1", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const config = join(dir, "bad.json");
    writeFileSync(config, `{ "vms": [{ "name": "vm1" }] }`);
    const p = vbus(["broker", "--config", config]);
    assert.equal(await p.exitWithin(60_000), 1);
    assert.match(p.errors(), /bad\.json: vms\[0\]\.socket: is required/);
  } finally {
    cleanup();
  }
});

// The npm package as a user gets it: `npm pack` of this checkout (after `npm run build`), the
// tarball installed into a fresh project outside the repo (so nothing resolves from the repo's
// node_modules), and there: the library imported and a real pub/sub + request run through a
// real broker under Bun and under Deno, the package's types checked by Deno, and `npx vbus`
// running the built CLI. Plus the JSR side: `deno publish --dry-run` without
// --allow-slow-types. The pack and install happen once per run of this file.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import {
  accessSync,
  constants,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
const repoBin = (name: string) => realpathSync(join(repo, "node_modules", ".bin", name));
const BUN = repoBin("bun");
const DENO = repoBin("deno");
/** Generous per-test bound: the first test also builds, packs and installs. */
const TIMEOUT = 180_000;
/** A packed tarball above this would mean something big slipped into `files`. */
const MAX_TARBALL_BYTES = 1 << 20;

/** An executable on PATH (node and npm: the test runs under Deno or Bun). */
function onPath(name: string): string {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch { /* next */ }
  }
  throw new Error(`${name} is not on PATH: the package test needs Node and npm`);
}
const NODE = onPath("node");
const NPM = onPath("npm");

function run(cmd: string, args: string[], opts: { cwd: string; env?: Record<string, string> }) {
  const r: SpawnSyncReturns<string> = spawnSync(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? (process.env as Record<string, string>),
    encoding: "utf8",
    timeout: TIMEOUT,
    maxBuffer: 64 << 20,
  });
  return {
    code: r.status,
    out: r.stdout ?? "",
    err: r.stderr ?? "",
    all: `${r.stdout}\n${r.stderr}`,
  };
}

function ok(r: ReturnType<typeof run>, what: string) {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}):\n${r.all.slice(-4000)}`);
  return r;
}

interface Packed {
  tarball: string;
  size: number;
  unpackedSize: number;
  files: string[];
  /** The fresh project the tarball is installed in. */
  project: string;
  /** A directory holding only `bun` and `deno`, as a user's ~/.local/bin would. */
  userBin: string;
}

const temp = mkdtempSync(join(tmpdir(), "vbus-package-"));
after(() => rmSync(temp, { recursive: true, force: true }));

let packed: Promise<Packed> | undefined;
/** Build, pack and install once; every test that needs the installed package awaits this. */
function installed(): Promise<Packed> {
  return packed ??= Promise.resolve().then(() => {
    // Two runs of this file at once must not build the same dist/ together.
    const lock = join(tmpdir(), "vbus-package-build.lock");
    const packDir = join(temp, "pack");
    mkdirSync(packDir);
    ok(
      run("flock", [lock, NODE, join(repo, "scripts", "build.mjs")], { cwd: repo }),
      "npm run build",
    );
    const pack = ok(
      run(
        "flock",
        [lock, NPM, "pack", "--ignore-scripts", "--json", "--pack-destination", packDir],
        { cwd: repo },
      ),
      "npm pack",
    );
    const info = JSON.parse(pack.out)[0] as {
      filename: string;
      size: number;
      unpackedSize: number;
      files: { path: string }[];
    };
    const project = join(temp, "project");
    mkdirSync(project);
    writeFileSync(
      join(project, "package.json"),
      JSON.stringify({ name: "vbus-consumer", private: true, type: "module" }, null, 2),
    );
    const tarball = join(packDir, info.filename);
    ok(
      run(NPM, ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball], {
        cwd: project,
      }),
      "npm install of the tarball",
    );
    const userBin = join(temp, "user-bin");
    mkdirSync(userBin);
    symlinkSync(BUN, join(userBin, "bun"));
    symlinkSync(DENO, join(userBin, "deno"));
    return {
      tarball,
      size: info.size,
      unpackedSize: info.unpackedSize,
      files: info.files.map((f) => f.path),
      project,
      userBin,
    };
  });
}

test(
  "package: the tarball ships the build, bin, docs and LICENSE; no sources, tests, bench, lab or lockfile",
  { timeout: TIMEOUT },
  async () => {
    const p = await installed();
    console.log(
      `package: ${p.tarball}: ${p.size} bytes packed, ${p.unpackedSize} unpacked, ${p.files.length} files: ` +
        [...new Set(p.files.map((f) => f.split("/").slice(0, 2).join("/")))].sort().join(", "),
    );
    for (
      const must of [
        "package.json",
        "LICENSE",
        "README.md",
        "bin/vbus.mjs",
        "dist/mod.js",
        "dist/mod.d.ts",
        "dist/package.json",
        "dist/ffi/deno.js",
        "dist/ffi/bun.js",
        "dist/ffi/futex_worker.js",
        "dist/src/cli/main.js",
        "dist/src/monitor/dashboard/index.html",
        "docs/PROTOCOL.md",
      ]
    ) {
      assert.ok(p.files.includes(must), `${must} missing from the tarball`);
    }
    const forbidden = p.files.filter((f) =>
      /^(tests|bench|lab|examples|scripts|src|ffi|deploy|node_modules)\//.test(f) ||
      f === "package-lock.json" || f === "mod.ts" || (f.endsWith(".ts") && !f.endsWith(".d.ts"))
    );
    assert.deepEqual(forbidden, [], "files that must not be in the package");
    assert.ok(p.size < MAX_TARBALL_BYTES, `tarball is ${p.size} bytes`);
  },
);

test("package: installing it brings msgpackr, jsonc-parser and the NATS client, not the runtimes", {
  timeout: TIMEOUT,
}, async () => {
  const p = await installed();
  const modules = join(p.project, "node_modules");
  for (const dep of ["vbus", "msgpackr", "jsonc-parser", "@nats-io/transport-node"]) {
    assert.ok(existsSync(join(modules, dep, "package.json")), `${dep} not installed`);
  }
  for (const runtime of ["bun", "deno"]) {
    assert.ok(!existsSync(join(modules, runtime)), `${runtime} was installed with vbus`);
  }
  const pkg = JSON.parse(readFileSync(join(modules, "vbus", "package.json"), "utf8"));
  const jsr = JSON.parse(readFileSync(join(repo, "deno.json"), "utf8"));
  assert.equal(pkg.version, jsr.version, "package.json and deno.json versions differ");
  assert.deepEqual(pkg.peerDependenciesMeta, { bun: { optional: true }, deno: { optional: true } });
});

/** A consumer program: a broker, a ring subscriber woken by futex, a publisher, a request. */
const PUBSUB = `
import { Broker, connect, createLogger, type Msg, parseConfig } from "vbus";
import { join } from "node:path";
import process from "node:process";

const listen = join(process.argv[2], "broker.sock");
const broker = new Broker(parseConfig(JSON.stringify({ listen, http: "127.0.0.1:0", vms: [] })), {
  logger: createLogger("consumer", "silent"),
});
await broker.start();
const sub = await connect({ server: listen, wake: "futex" });
const pub = await connect({ server: listen });
const got: unknown[] = [];
const three = new Promise<void>((resolve) => {
  sub.subscribe<{ n: number }>("greet.*", {
    callback: (_err, m: Msg<{ n: number }>) => {
      got.push(m.data);
      if (got.length === 3) resolve();
    },
  });
});
sub.subscribe<number>("math.double", { callback: (_err, m) => { m.respond(m.data * 2); } });
await sub.flush();
for (const n of [1, 2, 3]) await pub.publish("greet.x", { n });
await three;
const answer = await pub.request<number>("math.double", 21);
const http = \`http://127.0.0.1:\${broker.monitorAddress!.port}\`;
const stats = await (await fetch(\`\${http}/stats\`)).json();
const dashboard = await (await fetch(\`\${http}/\`)).text();
console.log(JSON.stringify({
  got,
  answer: answer.data,
  paths: [sub.dataPath, pub.dataPath],
  futex: sub.ringStats?.futex !== undefined,
  version: stats.broker.version,
  dashboard: dashboard.includes("<html"),
}));
await pub.close();
await sub.close();
await broker.stop();
`;

function runConsumer(p: Packed, name: string, argv: string[]) {
  const dir = mkdtempSync(join(temp, `${name}-`));
  writeFileSync(join(p.project, `${name}.ts`), PUBSUB);
  const r = ok(
    run(argv[0], [...argv.slice(1), `${name}.ts`, dir], { cwd: p.project }),
    `${name}.ts`,
  );
  const last = r.out.trim().split("\n").pop()!;
  const result = JSON.parse(last);
  assert.deepEqual(result.got, [{ n: 1 }, { n: 2 }, { n: 3 }]);
  assert.equal(result.answer, 42);
  // Rings mean the FFI backend and the shared-memory code ran from dist/; futex means the
  // futex worker (a `new URL(...)` module, not an import) loaded from dist/ too.
  assert.deepEqual(result.paths, ["ring", "ring"]);
  assert.equal(result.futex, true, "the futex waiter did not start from the installed package");
  // Files read next to the modules: the version (dist/package.json) and the dashboard's assets.
  assert.equal(
    result.version,
    JSON.parse(readFileSync(join(repo, "package.json"), "utf8")).version,
  );
  assert.equal(result.dashboard, true, "the dashboard's index.html was not served");
}

test("package: Bun imports the installed library and runs pub/sub and a request through a broker", {
  timeout: TIMEOUT,
}, async () => {
  runConsumer(await installed(), "bun-consumer", [BUN]);
});

test(
  "package: Deno imports the installed library from node_modules and runs pub/sub and a request through a broker",
  { timeout: TIMEOUT },
  async () => {
    runConsumer(await installed(), "deno-consumer", [DENO, "run", "-A"]);
  },
);

/** Uses the types a consumer leans on: generics, the callback's Msg, Broker, config, errors. */
const TYPED = `
import { Broker, type BrokerConfig, type Bus, connect, ErrorCode, type Msg, parseConfig, VbusError } from "vbus";
const config: BrokerConfig = parseConfig('{ "listen": "/tmp/x.sock", "vms": [] }');
const broker: Broker = new Broker(config);
const bus: Bus = await connect({ server: "/tmp/x.sock" });
bus.subscribe<{ celsius: number }>("sensors.*", {
  callback: (err: Error | null, m: Msg<{ celsius: number }>) =>
    console.log(err instanceof VbusError ? err.code : null, m.data.celsius.toFixed(1)),
});
const answer: Msg<number> = await bus.request<number>("math.double", 21);
const doubled: number = answer.data * 2;
console.log(doubled, ErrorCode, broker);
`;

test(
  "package: Deno type-checks a consumer against the package's .d.ts (and catches a type error)",
  { timeout: TIMEOUT },
  async () => {
    const p = await installed();
    // Only vbus imports: a consumer's own `node:` imports would need @types/node in its project.
    writeFileSync(join(p.project, "typed.ts"), TYPED);
    ok(run(DENO, ["check", "typed.ts"], { cwd: p.project }), "deno check of a correct consumer");
    writeFileSync(
      join(p.project, "mistyped.ts"),
      `import { connect } from "vbus";\nconst bus = await connect();\nawait bus.publish(42, "not a subject first");\n`,
    );
    const bad = run(DENO, ["check", "mistyped.ts"], { cwd: p.project });
    assert.notEqual(
      bad.code,
      0,
      "a publish(number, ...) type-checked: the package's types are missing or any",
    );
    assert.match(bad.all, /TS2345/);
  },
);

test(
  "package: tsc, strict and without skipLibCheck, type-checks a consumer against the .d.ts (with @types/node)",
  { timeout: TIMEOUT },
  async () => {
    const p = await installed();
    // The .d.ts use node: types (sockets, file handles), as @types/bun users have anyway.
    const typesNode =
      JSON.parse(readFileSync(join(repo, "package.json"), "utf8")).devDependencies["@types/node"];
    const dir = join(temp, "tsc-consumer");
    mkdirSync(dir);
    writeFileSync(
      join(dir, "package.json"),
      JSON.stringify({ name: "tsc-consumer", private: true, type: "module" }),
    );
    ok(
      run(NPM, [
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        p.tarball,
        `@types/node@${typesNode}`,
      ], { cwd: dir }),
      "npm install of the tarball and @types/node",
    );
    writeFileSync(join(dir, "typed.ts"), TYPED);
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          module: "nodenext",
          target: "es2022",
          strict: true,
          noEmit: true,
          types: ["node"],
        },
        files: ["typed.ts"],
      }),
    );
    ok(
      run(join(repo, "node_modules", ".bin", "tsc"), ["-p", dir], { cwd: dir }),
      "tsc of a correct consumer",
    );
  },
);

/** A broker with a `math.double` responder, until SIGTERM; prints "ready" then "got N" per request. */
const SERVE = `
import { Broker, connect, createLogger, parseConfig } from "vbus";
import process from "node:process";

const broker = new Broker(parseConfig(JSON.stringify({ listen: process.argv[2], vms: [] })), {
  logger: createLogger("consumer", "silent"),
});
await broker.start();
const bus = await connect({ server: process.argv[2] });
bus.subscribe<number>("math.double", {
  callback: (_err, m) => {
    console.log("got " + m.data);
    m.respond(m.data * 2);
  },
});
await bus.flush();
process.on("SIGTERM", async () => {
  await bus.close();
  await broker.stop();
  process.exit(0);
});
console.log("ready");
`;

test(
  "package: npx vbus runs the installed CLI under Bun and under Deno, and says what to install when neither is there",
  { timeout: TIMEOUT },
  async () => {
    const p = await installed();
    const env = (extra: Record<string, string>) => ({
      ...(process.env as Record<string, string>),
      PATH: [p.userBin, dirname(NODE), dirname(NPM)].join(delimiter),
      ...extra,
    });
    const help = ok(
      run(NPM, ["exec", "--offline", "--", "vbus", "--help"], { cwd: p.project, env: env({}) }),
      "npx vbus --help",
    );
    assert.match(help.out, /Usage:/);

    writeFileSync(join(p.project, "serve.ts"), SERVE);
    const socket = join(temp, "cli-broker.sock");
    const server = spawn(BUN, ["serve.ts", socket], {
      cwd: p.project,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let served = "";
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve.ts not ready: ${served}`)), 30_000);
      server.stdout!.on("data", (d) => {
        served += d;
        if (served.includes("ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
      server.on("exit", (code) => reject(new Error(`serve.ts exited ${code}: ${served}`)));
    });
    const exited = new Promise((resolve) => server.on("exit", resolve));
    try {
      await ready;
      for (const runtime of ["bun", "deno"]) {
        const r = ok(
          run(NPM, ["exec", "--offline", "--", "vbus", "req", "math.double", "21"], {
            cwd: p.project,
            env: env({ VBUS_RUNTIME: runtime, VBUS_SERVER: socket }),
          }),
          `VBUS_RUNTIME=${runtime} npx vbus req`,
        );
        assert.match(r.out, /\b42\b/, `${runtime}: ${r.all}`);
      }
    } finally {
      server.kill("SIGTERM");
      await exited;
    }
    // Read once it exited: Bun writes a pipe's console output lazily.
    assert.equal(served.match(/got 21/g)?.length, 2, served);

    // No runtime beside the package nor on PATH: a clear message, not a spawn error.
    const none = run(NODE, [join(p.project, "node_modules", "vbus", "bin", "vbus.mjs"), "--help"], {
      cwd: p.project,
      env: { ...(process.env as Record<string, string>), PATH: "" },
    });
    assert.equal(none.code, 127, none.all);
    assert.match(none.err, /needs Bun or Deno.*npm install bun/s);
  },
);

test(
  "package: deno publish --dry-run passes without --allow-slow-types and publishes no tests, bench or lab",
  { timeout: TIMEOUT },
  () => {
    // --allow-dirty: this is the working tree as it is. The dry run needs no network (checked
    // with `unshare -n`): it type-checks and checks slow types locally.
    const r = ok(
      run(DENO, ["publish", "--dry-run", "--allow-dirty"], {
        cwd: repo,
        env: { ...(process.env as Record<string, string>), NO_COLOR: "1" },
      }),
      "deno publish --dry-run",
    );
    assert.match(r.all, /Dry run complete/);
    assert.doesNotMatch(r.all, /error\[/, "a JSR check (slow types, license, ...) failed");
    const files = [...r.all.matchAll(/file:\/\/(\S+)/g)].map((m) => m[1].slice(repo.length + 1));
    assert.ok(files.includes("mod.ts") && files.includes("LICENSE"), files.join(", "));
    assert.deepEqual(
      files.filter((f) => /^(tests|bench|lab|examples|scripts|node_modules|dist)\//.test(f)),
      [],
    );
  },
);

/**
 * Every `ts` code block of README.md and docs/API.md is run, as written, against a real broker
 * (with shared memory for host clients), as a program of its own under the runtime the tests
 * run under; it must exit 0 and, where listed below, print what its comments say. All of them
 * type-check too (`deno check`, in both runtimes). `sh`, `jsonc` and `text` blocks are not run
 * (the CLI's own tests run the CLI).
 *
 * The only substitutions (the snippets are written for a user's machine):
 * 1. module specifiers: the package name `"vbus"` and `"./mod.ts"` are this checkout's mod.ts,
 *    other relative specifiers are resolved from the document's folder;
 * 2. the socket path `/run/vbus/broker.sock` is the test broker's socket;
 * 3. `VBUS_SERVER` is set to that socket, so a snippet written for a guest (`connect()` with no
 *    `server`) connects to the test broker as a host client.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { startLab } from "./helpers.ts";
import { DENO, runClient } from "./fixtures/run_client.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DOCS = ["README.md", "docs/API.md"];
const SOCKET_IN_DOCS = "/run/vbus/broker.sock";

interface Snippet {
  /** `file:line` of the block's opening fence. */
  where: string;
  source: string;
}

/** The `ts` blocks of `file`, with module specifiers made absolute (substitution 1). */
function snippets(file: string): Snippet[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  const base = new URL(file, `file://${ROOT}`);
  const out: Snippet[] = [];
  for (const m of text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
    const line = text.slice(0, m.index).split("\n").length;
    const source = m[1].replace(/from "([^"]+)"/g, (_all, spec: string) => {
      if (spec === "vbus" || (spec === "./mod.ts" && file === "README.md")) {
        return `from ${JSON.stringify(new URL("../mod.ts", import.meta.url).href)}`;
      }
      if (spec.startsWith("./") || spec.startsWith("../")) {
        return `from ${JSON.stringify(new URL(spec, base).href)}`;
      }
      return `from "${spec}"`;
    });
    out.push({ where: `${file}:${line}`, source });
  }
  return out;
}

/** What some snippets print (from their own comments), by a line of theirs. */
const PRINTS: { file: string; line: string; prints: RegExp[] }[] = [
  {
    file: "README.md",
    line: "console.log(answer.data); // 42",
    prints: [/^sensors\.vm1\.temp 21\.5$/m, /^42$/m],
  },
  {
    file: "docs/API.md",
    line: `console.log(bus.info?.identity, bus.dataPath);`,
    prints: [/^host ring$/m],
  },
  {
    file: "docs/API.md",
    line: `console.log("called back"`,
    prints: [/^iterated 3$/m, /^called back \[ 1, 2, 3 \] received 3$/m],
  },
  {
    file: "docs/API.md",
    line: "// AbortError ABORTED",
    prints: [/^42$/m, /^true$/m, /^AbortError ABORTED$/m],
  },
  { file: "docs/API.md", line: "console.log(byA + byB", prints: [/^10 true$/m] },
  { file: "docs/API.md", line: "console.log(mine, theirs); // 0 1", prints: [/^0 1$/m] },
  { file: "docs/API.md", line: "// the iterator above sees", prints: [/^status closed$/m] },
  { file: "docs/API.md", line: "const ms = await bus.rtt();", prints: [/^true 0 \d+$/m] },
  { file: "docs/API.md", line: "decodedByHand[0]", prints: [/^1 \[ 1, 2, 3 \] 1$/m] },
];

/**
 * A scratch folder inside the checkout, removed afterwards: a snippet's bare specifiers (e.g.
 * "msgpackr") resolve from where it lies, as in a user's project with the package installed.
 */
function scratch(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(ROOT, ".readme-snippets-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

const all = DOCS.flatMap((file) => snippets(file).map((s) => ({ file, ...s })));

test("readme: the documents have the ts blocks this test runs, and every listed output belongs to one", () => {
  for (const file of DOCS) {
    assert.ok(all.some((s) => s.file === file), `${file} has ts blocks`);
  }
  for (const p of PRINTS) {
    assert.equal(
      all.filter((s) => s.file === p.file && s.source.includes(p.line)).length,
      1,
      `exactly one block of ${p.file} has ${JSON.stringify(p.line)}`,
    );
  }
});

for (const s of all) {
  test(`readme: ${s.where} runs against a real broker`, async () => {
    const lab = await startLab({ shm: true, vms: [] });
    const where = scratch();
    try {
      const source = s.source.replaceAll(SOCKET_IN_DOCS, lab.listen); // substitution 2
      const run = await runClient(source, {
        env: { VBUS_SERVER: lab.listen }, // substitution 3
        killAfterMs: 30_000,
        scriptDir: where.dir,
      });
      assert.equal(
        run.code,
        0,
        `${s.where} exited ${run.code}:\n${run.out}\n--- source:\n${source}`,
      );
      for (const p of PRINTS.filter((p) => p.file === s.file && s.source.includes(p.line))) {
        for (const re of p.prints) {
          assert.match(run.out, re, `${s.where} prints ${re}:\n${run.out}`);
        }
      }
    } finally {
      where.cleanup();
      await lab.close();
    }
  });
}

test("readme: every ts block type-checks (deno check)", () => {
  const { dir, cleanup } = scratch();
  try {
    const files = all.map((s, i) => {
      const f = join(dir, `snippet_${i}.ts`);
      // Each block is a module of its own (top-level await, no shared names).
      writeFileSync(f, `${s.source}\nexport {};\n`);
      return f;
    });
    const r = spawnSync(DENO, ["check", `--config=${join(ROOT, "deno.json")}`, ...files], {
      env: { ...process.env, NO_COLOR: "1" },
      encoding: "utf8",
      timeout: 300_000,
    });
    const named = `${r.stdout}${r.stderr}`.replace(
      /snippet_(\d+)\.ts/g,
      (_m, i: string) => `${all[Number(i)].where} (snippet_${i}.ts)`,
    );
    assert.equal(r.status, 0, named);
  } finally {
    cleanup();
  }
});

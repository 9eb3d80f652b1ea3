#!/usr/bin/env node
// `npm run build`: the npm package's JavaScript and .d.ts, in dist/ (gitignored).
// Deno and Bun run the TypeScript sources directly in this checkout, but Deno refuses to strip
// types under node_modules (ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING), so the installed
// package ships JavaScript. Steps:
// 1. The Deno namespace's types come from the pinned Deno itself (`deno types`), so the FFI
//    backend ffi/deno.ts is checked against the runtime that runs it; bun:ffi's come from
//    @types/bun. Both are devDependencies.
// 2. tsc (typescript, tsconfig.build.json) checks and emits mod.ts, src/ and ffi/; its
//    rewriteRelativeImportExtensions turns literal "./x.ts" imports into "./x.js".
// 3. Relative ".ts" string literals tsc leaves alone (a `new URL("./worker.ts", import.meta.url)`,
//    a computed import, every import in the .d.ts files) become ".js" too; one whose source file exists but whose .js was not
//    emitted fails the build, so a runtime-chosen module cannot go missing from the package.
// 4. Files beside the sources that are not TypeScript (the dashboard's html/css/js) are copied.
// 5. dist/package.json keeps `"type": "module"` and the version for code that reads
//    "../../package.json" relative to itself (process_info.ts), one level deeper in dist/.
import { spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
/** Where step 1 writes the Deno types; tsconfig.build.json names this path. */
const denoTypes = join(root, "node_modules", ".cache", "vbus-build", "deno.d.ts");
/** The source trees the package ships, relative to the repo (mod.ts sits at the top). */
const SOURCE_DIRS = ["src", "ffi"];

function fail(message) {
  console.error(`build: ${message}`);
  process.exit(1);
}

function tool(name) {
  const path = join(root, "node_modules", ".bin", name);
  if (!existsSync(path)) fail(`${path} is missing: run \`npm ci\` first`);
  return path;
}

function walk(dir, out = []) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) walk(path, out);
    else out.push(path);
  }
  return out;
}

rmSync(dist, { recursive: true, force: true });

// 1. Deno's own declarations.
const types = spawnSync(tool("deno"), ["types"], { encoding: "utf8", maxBuffer: 64 << 20 });
if (types.status !== 0) fail(`deno types failed: ${types.stderr}`);
mkdirSync(dirname(denoTypes), { recursive: true });
writeFileSync(denoTypes, types.stdout);

// 2. Type-check and emit.
const tsc = spawnSync(tool("tsc"), ["-p", join(root, "tsconfig.build.json")], {
  cwd: root,
  stdio: "inherit",
});
if (tsc.status !== 0) fail(`tsc failed (exit ${tsc.status})`);

// 3. The specifiers tsc cannot see as imports.
const relativeTs = /(["'`])(\.\.?\/[^"'`\s]*?)\.ts\1/g;
const missing = [];
let rewritten = 0;
for (const file of walk(dist).filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))) {
  const text = readFileSync(file, "utf8");
  const source = join(root, relative(dist, dirname(file)));
  // tsc keeps ".ts" in declarations; ".js" (resolved to the .d.ts beside it) is the form every
  // consumer's TypeScript version and setting understands.
  const emittedAs = file.endsWith(".d.ts") ? ".d.ts" : ".js";
  const out = text.replace(relativeTs, (_all, quote, stem) => {
    // A path that is not a source file next to this one (a doc comment's example written
    // from the repo root, say) is left as it is.
    if (!existsSync(join(source, `${stem}.ts`))) return `${quote}${stem}.ts${quote}`;
    if (!existsSync(join(dirname(file), `${stem}${emittedAs}`))) {
      missing.push(`${relative(dist, file)}: ${stem}.ts`);
    }
    rewritten++;
    return `${quote}${stem}.js${quote}`;
  });
  if (out !== text) writeFileSync(file, out);
}
if (missing.length) {
  fail(
    `referenced but not emitted (add them to tsconfig.build.json "include"):\n  ${
      missing.join("\n  ")
    }`,
  );
}

// 4. Assets beside the sources.
let assets = 0;
for (const dir of SOURCE_DIRS) {
  for (const file of walk(join(root, dir)).filter((f) => !f.endsWith(".ts"))) {
    cpSync(file, join(dist, relative(root, file)));
    assets++;
  }
}

// 5. The package scope of dist/.
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
writeFileSync(
  join(dist, "package.json"),
  JSON.stringify({ name: pkg.name, version: pkg.version, type: "module", private: true }, null, 2) +
    "\n",
);

const emitted = walk(dist);
console.log(
  `build: dist/ has ${emitted.filter((f) => f.endsWith(".js")).length} .js and ` +
    `${emitted.filter((f) => f.endsWith(".d.ts")).length} .d.ts files, ${assets} assets; ` +
    `${rewritten} specifiers rewritten after tsc`,
);

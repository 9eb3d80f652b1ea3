#!/usr/bin/env node
// `npx vbus` entry point: Node cannot run the TypeScript CLI itself, so this starts it under
// Bun (default) or Deno (VBUS_RUNTIME=deno), both installed from npm with the package.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runtime = process.env.VBUS_RUNTIME ?? "bun";
if (runtime !== "bun" && runtime !== "deno") {
  console.error(`vbus: VBUS_RUNTIME must be "bun" or "deno", got "${runtime}"`);
  process.exit(2);
}
const require = createRequire(import.meta.url);
function binary(name) {
  const candidates = [join(root, "node_modules", ".bin", name)];
  try {
    const pkg = dirname(require.resolve(`${name}/package.json`));
    candidates.push(join(pkg, name === "bun" ? "bin/bun.exe" : "deno"));
  } catch { /* not resolvable from here */ }
  return candidates.find((p) => existsSync(p)) ?? name; // else rely on PATH
}
const cli = join(root, "src", "cli", "main.ts");
const args = runtime === "bun"
  ? [cli, ...process.argv.slice(2)]
  : ["run", "-A", "--quiet", `--config=${join(root, "deno.json")}`, cli, ...process.argv.slice(2)];
const child = spawn(binary(runtime), args, { stdio: "inherit" });
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => child.kill(sig));
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
child.on("error", (err) => {
  console.error(`vbus: cannot start ${runtime}: ${err.message}`);
  process.exit(1);
});

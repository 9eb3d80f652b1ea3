#!/usr/bin/env node
// `npm run demo`: the demo under Bun (default) or Deno (VBUS_RUNTIME=deno). With `--vm` (or
// VBUS_DEMO_VM=1) it boots two real QEMU guests instead of simulated ones (root, Debian).
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runtime = process.env.VBUS_RUNTIME ?? "bun";
const wantVm = process.argv.includes("--vm") || process.env.VBUS_DEMO_VM === "1";
const script = join(root, "examples", wantVm ? "vm_demo.ts" : "demo.ts");
const bin = join(root, "node_modules", ".bin", runtime === "deno" ? "deno" : "bun");
const args = runtime === "deno" ? ["run", "-A", "--quiet", script] : [script];
const child = spawn(bin, args, { stdio: "inherit", cwd: root });
child.on("exit", (code) => process.exit(code ?? 1));

/**
 * Who serves the stats: the runtime (`bun/1.4.5`, `deno/2.9.6`) and the vbus version (from the
 * package's package.json), for `vbus_info` and the `/stats` document.
 *
 * @example
 * ```ts
 * import { runtimeDescription, vbusVersion } from "./process_info.ts";
 * console.log(runtimeDescription(), await vbusVersion()); // bun/1.4.5 0.1.0
 * ```
 * @module
 */
import { readFile } from "node:fs/promises";

/** `deno/<version>` or `bun/<version>`. */
export function runtimeDescription(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  if (g.Deno) return `deno/${g.Deno.version.deno}`;
  if (g.Bun) return `bun/${g.Bun.version}`;
  return "js";
}

/** The `version` of vbus's package.json, or "unknown" when it cannot be read. */
export async function vbusVersion(): Promise<string> {
  try {
    const pkg = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8"));
    return typeof pkg.version === "string" ? pkg.version : "unknown";
  } catch {
    return "unknown";
  }
}

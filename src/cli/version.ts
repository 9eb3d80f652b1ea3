/**
 * The vbus version `vbus --version` prints: package.json's, imported statically so that a
 * compiled single-file binary (`bun build --compile`, `deno compile`) carries it with no
 * package.json on disk.
 *
 * @example
 * ```ts
 * import { VERSION } from "./version.ts";
 * console.log(`vbus ${VERSION}`);
 * ```
 * @module
 */
import pkg from "../../package.json" with { type: "json" };

/** The package version, e.g. "0.1.0". */
export const VERSION: string = pkg.version;

/**
 * The `--version` line: vbus's version and the runtime running it.
 *
 * @example
 * ```ts
 * versionLine(); // "vbus 0.1.0 (bun 1.4.5)"
 * ```
 */
export function versionLine(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  const runtime = g.Bun ? `bun ${g.Bun.version}` : g.Deno ? `deno ${g.Deno.version.deno}` : "js";
  return `vbus ${VERSION} (${runtime})`;
}

/**
 * The dashboard's files (src/monitor/dashboard/: index.html, dashboard.js, dashboard.css),
 * read once when the endpoint starts. Plain files, no build step; they load nothing from
 * anywhere but the endpoint itself (its Content-Security-Policy says so too).
 *
 * @example
 * ```ts
 * import { loadDashboard } from "./dashboard_assets.ts";
 * const { html, js, css } = await loadDashboard();
 * ```
 * @module
 */
import { readFile } from "node:fs/promises";

/** The dashboard's files, as text. */
export interface DashboardAssets {
  html: string;
  js: string;
  css: string;
}

/** Read the dashboard's files (rejects naming the file that is missing). */
export async function loadDashboard(): Promise<DashboardAssets> {
  const read = async (name: string) => {
    const url = new URL(`./dashboard/${name}`, import.meta.url);
    try {
      return await readFile(url, "utf8");
    } catch (err) {
      throw new Error(`cannot read the dashboard's ${url.pathname}: ${(err as Error).message}`);
    }
  };
  const [html, js, css] = await Promise.all([
    read("index.html"),
    read("dashboard.js"),
    read("dashboard.css"),
  ]);
  return { html, js, css };
}

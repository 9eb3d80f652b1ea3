/**
 * Guest side: which ivshmem PCI device is vbus's. A guest may have several (QEMU's ivshmem is
 * used by other software too, e.g. Looking Glass), so the first 1af4:1110 device is not
 * necessarily ours, and writing our nonce into another program's shared memory would corrupt
 * it. The rule, in order:
 *
 * 1. An explicit PCI address (`address`, else the `VBUS_IVSHMEM` environment variable, e.g.
 *    `0000:00:04.0` or `00:04.0`) names the device; it must be an ivshmem device.
 * 2. Otherwise the one ivshmem device whose region carries the vbus signature (MAGIC and
 *    LAYOUT_VERSION in the header, see `region_signature.ts`; the broker stamps it when it maps
 *    the VM's file, and every session writes it again).
 * 3. Otherwise, when no device is signed, the one whose header is all zero: a region nobody has
 *    written yet (QEMU created the file before the broker ever mapped it).
 *
 * Anything else (no ivshmem device, two signed ones, two blank ones, only other programs'
 * regions) is an {@link IvshmemScanError} that lists every device found and what it holds,
 * and says how to choose. Reading a header needs a mapping (`read()` of a `resource2` BAR fails
 * with EIO, only mmap works), so the caller passes its `map` function (`mapSharedSync` of
 * `ffi/mod.ts`); the header page is mapped, read and unmapped, nothing is written.
 *
 * `sysfsRoot` points the scan at another directory laid out like `/sys/bus/pci/devices`
 * (`vendor`, `device`, `resource`, `resource2` per device): tests use it with regular files.
 *
 * @example
 * ```ts
 * import { mapSharedSync } from "../../ffi/mod.ts";
 * import { findVbusIvshmem } from "./find_ivshmem.ts";
 * const dev = findVbusIvshmem({ map: mapSharedSync }); // throws IvshmemScanError when unsure
 * const mapping = mapSharedSync(dev.path, dev.size);
 * ```
 * @module
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import process from "node:process";
import { HEADER_SIZE } from "../ring/layout.ts";
import { hasRegionSignature } from "./region_signature.ts";

/** PCI vendor id of QEMU's ivshmem (Red Hat's virtio vendor). */
export const IVSHMEM_VENDOR_ID = 0x1af4;
/** PCI device id of ivshmem-plain and ivshmem-doorbell. */
export const IVSHMEM_DEVICE_ID = 0x1110;
/** Where Linux lists PCI devices. */
export const PCI_DEVICES_DIR = "/sys/bus/pci/devices";
/** The environment variable that names the guest's vbus ivshmem device by PCI address. */
export const IVSHMEM_ENV = "VBUS_IVSHMEM";

/** The ivshmem device a guest maps. */
export interface IvshmemDevice {
  /** PCI address, e.g. `0000:00:04.0`. */
  address: string;
  /** The device's sysfs directory. */
  device: string;
  /** Its BAR2 (`resource2`): the shared memory to map. */
  path: string;
  /** BAR2 size in bytes. */
  size: number;
}

/** What the scan saw in one ivshmem device's header. */
export type IvshmemContent = "vbus" | "blank" | "other" | "unreadable";

/** One ivshmem device the scan looked at. */
export interface IvshmemCandidate extends IvshmemDevice {
  content: IvshmemContent;
  /** Why its header could not be read, for `unreadable`. */
  problem?: string;
}

/** A mapping function: `mapSharedSync` of `ffi/mod.ts`, or anything with its shape. */
export type MapFunction = (path: string, size: number) => { bytes: Uint8Array; unmap(): void };

/** Options of {@link findVbusIvshmem} and {@link listIvshmem}. */
export interface IvshmemScanOptions {
  /** Maps a header page to read it. */
  map: MapFunction;
  /** PCI address of the device to use; default `VBUS_IVSHMEM`, else the rule in the module doc. */
  address?: string;
  /** Directory laid out like /sys/bus/pci/devices. Default that directory. */
  sysfsRoot?: string;
}

/**
 * The scan could not tell which ivshmem device is vbus's; `candidates` says what it found.
 *
 * @example
 * ```ts
 * import { mapSharedSync } from "../../ffi/mod.ts";
 * try {
 *   findVbusIvshmem({ map: mapSharedSync });
 * } catch (err) {
 *   if (err instanceof IvshmemScanError) console.error(err.candidates.map((c) => c.address));
 * }
 * ```
 */
export class IvshmemScanError extends Error {
  constructor(message: string, readonly candidates: IvshmemCandidate[]) {
    super(message);
    this.name = "IvshmemScanError";
  }
}

/**
 * Normalise a PCI address to sysfs form (`0000:00:04.0`); a missing domain means 0000.
 * Throws on anything that is not one.
 *
 * @example
 * ```ts
 * pciAddress("00:04.0"); // "0000:00:04.0"
 * ```
 */
export function pciAddress(text: string): string {
  const m = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/i.exec(text.trim());
  if (!m) {
    throw new IvshmemScanError(
      `"${text}" is not a PCI address (DOMAIN:BUS:SLOT.FUNCTION, e.g. 0000:00:04.0; lspci -D lists them)`,
      [],
    );
  }
  return `${m[1] ?? "0000"}:${m[2]}:${m[3]}.${m[4]}`.toLowerCase();
}

function readHexId(file: string): number | undefined {
  try {
    const n = parseInt(readFileSync(file, "utf8").trim(), 16);
    return Number.isInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** BAR2 size: the third line of `resource` (start end flags), else the size of `resource2`. */
function bar2Size(dir: string): number {
  try {
    const line = readFileSync(`${dir}/resource`, "utf8").split("\n")[2] ?? "";
    const [start, end] = line.trim().split(/\s+/).map((x) => BigInt(x));
    if (end > start) {
      const size = end - start + 1n;
      if (size <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(size);
    }
  } catch { /* no or odd resource file: fall back to the BAR file's size */ }
  try {
    return statSync(`${dir}/resource2`).size;
  } catch {
    return 0;
  }
}

function isIvshmem(dir: string): boolean {
  return readHexId(`${dir}/vendor`) === IVSHMEM_VENDOR_ID &&
    readHexId(`${dir}/device`) === IVSHMEM_DEVICE_ID;
}

function probe(dir: string, address: string, map: MapFunction): IvshmemCandidate {
  const dev: IvshmemDevice = {
    address,
    device: dir,
    path: `${dir}/resource2`,
    size: bar2Size(dir),
  };
  if (dev.size < HEADER_SIZE) {
    return {
      ...dev,
      content: "unreadable",
      problem: `BAR2 is ${dev.size} bytes, smaller than a vbus header`,
    };
  }
  let mapping;
  try {
    mapping = map(dev.path, HEADER_SIZE);
  } catch (err) {
    return { ...dev, content: "unreadable", problem: (err as Error).message };
  }
  try {
    const header = mapping.bytes.subarray(0, HEADER_SIZE);
    if (hasRegionSignature(header)) return { ...dev, content: "vbus" };
    return { ...dev, content: header.every((b) => b === 0) ? "blank" : "other" };
  } finally {
    mapping.unmap();
  }
}

/**
 * Every ivshmem device under `sysfsRoot`, sorted by address, with what its header holds.
 *
 * @example
 * ```ts
 * import { mapSharedSync } from "../../ffi/mod.ts";
 * for (const c of listIvshmem({ map: mapSharedSync })) console.log(c.address, c.content);
 * ```
 */
export function listIvshmem(
  opts: Pick<IvshmemScanOptions, "map" | "sysfsRoot">,
): IvshmemCandidate[] {
  const root = opts.sysfsRoot ?? PCI_DEVICES_DIR;
  let names: string[];
  try {
    names = readdirSync(root).sort();
  } catch (err) {
    throw new IvshmemScanError(`cannot list ${root}: ${(err as Error).message}`, []);
  }
  return names.filter((n) => isIvshmem(`${root}/${n}`)).map((n) =>
    probe(`${root}/${n}`, n, opts.map)
  );
}

function describe(candidates: IvshmemCandidate[]): string {
  const what: Record<IvshmemContent, string> = {
    vbus: "vbus region",
    blank: "blank",
    other: "not vbus: another program's data",
    unreadable: "unreadable",
  };
  return candidates.map((c) =>
    `${c.address} (${c.size} bytes, ${what[c.content]}${c.problem ? `: ${c.problem}` : ""})`
  ).join(", ");
}

function envAddress(): string | undefined {
  try {
    return process.env[IVSHMEM_ENV] || undefined;
  } catch {
    return undefined; // Deno without --allow-env
  }
}

/**
 * Pick the guest's vbus ivshmem device by the rule in the module doc, or throw an
 * {@link IvshmemScanError} that lists what was found.
 *
 * @example
 * ```ts
 * import { mapSharedSync } from "../../ffi/mod.ts";
 * const dev = findVbusIvshmem({ map: mapSharedSync, address: "0000:00:05.0" });
 * ```
 */
export function findVbusIvshmem(opts: IvshmemScanOptions): IvshmemDevice {
  const root = opts.sysfsRoot ?? PCI_DEVICES_DIR;
  const given = opts.address ?? envAddress();
  const candidates = listIvshmem(opts);
  const choose =
    `name it by PCI address with ${IVSHMEM_ENV}=DOMAIN:BUS:SLOT.FUNCTION (or the connect option shm: "${root}/ADDRESS/resource2")`;
  if (given !== undefined) {
    const address = pciAddress(given);
    const hit = candidates.find((c) => c.address === address);
    if (!hit) {
      const found = candidates.length ? describe(candidates) : "none";
      throw new IvshmemScanError(
        `${given === opts.address ? "" : `${IVSHMEM_ENV}=`}${given}: no ivshmem device (PCI ${
          hex(IVSHMEM_VENDOR_ID)
        }:${hex(IVSHMEM_DEVICE_ID)}) at ${address} in ${root}; ivshmem devices found: ${found}`,
        candidates,
      );
    }
    return device(hit);
  }
  if (candidates.length === 0) {
    throw new IvshmemScanError(
      `no ivshmem device (PCI ${hex(IVSHMEM_VENDOR_ID)}:${hex(IVSHMEM_DEVICE_ID)}) in ${root}`,
      candidates,
    );
  }
  const signed = candidates.filter((c) => c.content === "vbus");
  if (signed.length === 1) return device(signed[0]);
  if (signed.length > 1) {
    throw new IvshmemScanError(
      `${signed.length} ivshmem devices hold a vbus region: ${describe(candidates)}; ${choose}`,
      candidates,
    );
  }
  const blank = candidates.filter((c) => c.content === "blank");
  if (blank.length === 1) return device(blank[0]);
  const why = blank.length > 1
    ? `${blank.length} blank ivshmem devices and none holds a vbus region yet`
    : "no ivshmem device holds a vbus region";
  throw new IvshmemScanError(`${why}: ${describe(candidates)}; ${choose}`, candidates);
}

function device(c: IvshmemCandidate): IvshmemDevice {
  return { address: c.address, device: c.device, path: c.path, size: c.size };
}

function hex(n: number): string {
  return n.toString(16).padStart(4, "0");
}

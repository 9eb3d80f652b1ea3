/**
 * libvirt domain XML equivalent to {@link qemuArgs}: a `<devices>` element whose children go into
 * a domain's `<devices>` (`virsh edit DOMAIN`), or one device alone for `virsh attach-device`.
 *
 * - The virtio-serial port is a `<channel type='unix'>` whose `<source mode='bind'>` makes the
 *   socket a listening one (like QEMU's `server=on`; libvirt 9 binds it itself and passes it to
 *   QEMU); the broker connects to it. libvirt adds the virtio-serial controller itself.
 * - The shared memory is a `<shmem>` with `<model type='ivshmem-plain'/>`. libvirt has no way to
 *   give the backing file's path: it always uses `/dev/shm/<name>`. So the configured `shm` path
 *   must be directly inside `/dev/shm/`, and the shmem `name` is its file name
 *   (`shm: "/dev/shm/vbus-vm1"` becomes `<shmem name='vbus-vm1'>`). Any other path is rejected
 *   with an error that says so.
 *
 * @example
 * ```ts
 * import { libvirtXml } from "./libvirt_xml.ts";
 * console.log(libvirtXml({
 *   name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0",
 *   shm: "/dev/shm/vbus-vm1", shmSize: 16 * 1024 * 1024,
 * }));
 * ```
 * @module
 */
import type { VmConfig } from "../broker/config.ts";

/** The subset of {@link VmConfig} the XML depends on. */
export type VmDeviceConfig = Pick<VmConfig, "name" | "socket" | "port" | "shm" | "shmSize">;

/**
 * Escape text for use inside a single- or double-quoted XML attribute or element content.
 *
 * @example
 * ```ts
 * xmlEscape("a'b&c"); // "a&apos;b&amp;c"
 * ```
 */
export function xmlEscape(s: string): string {
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(s)) {
    throw new Error(`${JSON.stringify(s)} contains characters XML cannot hold`);
  }
  return s.replace(
    /[&<>'"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;" })[c]!,
  );
}

/**
 * The libvirt `<shmem name=...>` for a VM: the file name of its `shm` path, which must be directly
 * inside `/dev/shm` (libvirt always backs `ivshmem-plain` with `/dev/shm/<name>`). Returns
 * `undefined` when the VM has no `shm`.
 *
 * @example
 * ```ts
 * libvirtShmemName({ name: "vm1", socket: "/s", port: "org.vbus.0", shm: "/dev/shm/vbus-vm1", shmSize: 1 << 24 });
 * // "vbus-vm1"
 * ```
 */
export function libvirtShmemName(vm: VmDeviceConfig): string | undefined {
  if (vm.shm === undefined) return undefined;
  const m = /^\/dev\/shm\/+([^/]+)$/.exec(vm.shm);
  if (!m || m[1] === "." || m[1] === "..") {
    throw new Error(
      `VM "${vm.name}": shm "${vm.shm}" cannot be expressed in libvirt XML: libvirt's <shmem name='N'> ` +
        `always uses the file /dev/shm/N. Put the VM's shm file directly in /dev/shm ` +
        `(e.g. "/dev/shm/vbus-${vm.name}"), or pass the qemuArgs() flags through <qemu:commandline>.`,
    );
  }
  return m[1];
}

/** The single devices {@link libvirtXml} can print alone (libvirt's element names). */
export const LIBVIRT_DEVICES = ["channel", "shmem"] as const;
/** One of {@link LIBVIRT_DEVICES}. */
export type LibvirtDevice = typeof LIBVIRT_DEVICES[number];

/** Options of {@link libvirtXml}. */
export interface LibvirtXmlOptions {
  /** Print only this device, as a document `virsh attach-device` takes. Default: all, in `<devices>`. */
  device?: LibvirtDevice;
}

/**
 * The `<channel>` element of a VM: the virtio-serial port, QEMU listening on `socket`.
 *
 * @example
 * ```ts
 * libvirtChannelXml({ name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0", shmSize: 1 << 24 });
 * // "<channel type='unix'>\n  <source mode='bind' path='/run/vbus/vm1.sock'/>\n  ..."
 * ```
 */
export function libvirtChannelXml(vm: VmDeviceConfig): string {
  if (!vm || typeof vm !== "object") throw new Error("libvirtXml: expected a VmConfig object");
  if (typeof vm.socket !== "string" || !vm.socket.startsWith("/")) {
    throw new Error(`VM "${vm.name}": socket "${vm.socket}" must be an absolute path for libvirt`);
  }
  if (typeof vm.port !== "string" || !/^[A-Za-z0-9_.-]{1,127}$/.test(vm.port)) {
    throw new Error(`VM "${vm.name}": port "${vm.port}" is not a valid virtio-serial port name`);
  }
  return [
    `<channel type='unix'>`,
    `  <source mode='bind' path='${xmlEscape(vm.socket)}'/>`,
    `  <target type='virtio' name='${xmlEscape(vm.port)}'/>`,
    `</channel>`,
  ].join("\n") + "\n";
}

/**
 * The `<shmem>` element of a VM (ivshmem-plain backed by `/dev/shm/<name>`), or undefined
 * when the VM has no `shm`. libvirt's QEMU driver requires the size to be a power of two of at
 * least 1 MiB, so a smaller `shmSize` (the broker allows 64 KiB) is rejected with an
 * explanation.
 *
 * @example
 * ```ts
 * libvirtShmemXml({ name: "vm1", socket: "/s", port: "org.vbus.0", shm: "/dev/shm/vbus-vm1", shmSize: 1 << 24 });
 * // "<shmem name='vbus-vm1'>\n  <model type='ivshmem-plain'/>\n  <size unit='M'>16</size>\n</shmem>\n"
 * ```
 */
export function libvirtShmemXml(vm: VmDeviceConfig): string | undefined {
  const shmName = libvirtShmemName(vm);
  if (shmName === undefined) return undefined;
  const size = vm.shmSize;
  const MiB = 1024 * 1024;
  if (!Number.isSafeInteger(size) || !Number.isInteger(Math.log2(size)) || size < MiB) {
    throw new Error(
      `VM "${vm.name}": shmSize ${size} bytes cannot be used with libvirt: its QEMU driver needs a ` +
        `power of two of at least 1 MiB for <shmem> (use qemuArgs() for smaller regions)`,
    );
  }
  return [
    `<shmem name='${xmlEscape(shmName)}'>`,
    `  <model type='ivshmem-plain'/>`,
    `  <size unit='M'>${size / MiB}</size>`,
    `</shmem>`,
  ].join("\n") + "\n";
}

/**
 * libvirt domain XML for a VM's vbus devices. By default one `<devices>` element holding the
 * `<channel>` and (with `shm`) the `<shmem>`: its children go into the domain's `<devices>`
 * (`virsh edit DOMAIN`). With `device`, that one element alone: a file `virsh attach-device
 * DOMAIN FILE --config` takes (it attaches exactly one device per call).
 *
 * ```xml
 * <devices>
 *   <channel type='unix'>
 *     <source mode='bind' path='SOCKET'/>
 *     <target type='virtio' name='PORT'/>
 *   </channel>
 *   <shmem name='NAME'>
 *     <model type='ivshmem-plain'/>
 *     <size unit='M'>SIZE_MIB</size>
 *   </shmem>
 * </devices>
 * ```
 *
 * @example
 * ```ts
 * const vm = { name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0", shmSize: 1 << 24 };
 * const all = libvirtXml(vm); // "<devices>\n  <channel type='unix'>..."
 * const port = libvirtXml(vm, { device: "channel" }); // "<channel type='unix'>..."
 * ```
 */
export function libvirtXml(vm: VmDeviceConfig, options: LibvirtXmlOptions = {}): string {
  const channel = libvirtChannelXml(vm);
  const shmem = libvirtShmemXml(vm);
  if (options.device === "channel") return channel;
  if (options.device === "shmem") {
    if (shmem === undefined) {
      throw new Error(`VM "${vm.name}" has no shm in the config: it has no <shmem> device`);
    }
    return shmem;
  }
  if (options.device !== undefined) {
    throw new Error(
      `no libvirt device "${options.device}": choose ${LIBVIRT_DEVICES.join(" or ")}`,
    );
  }
  const inner = channel + (shmem ?? "");
  return `<devices>\n${inner.replace(/^(?=.)/gm, "  ")}</devices>\n`;
}

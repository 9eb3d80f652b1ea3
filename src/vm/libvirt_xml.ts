/**
 * libvirt domain XML fragments equivalent to {@link qemuArgs}: paste them inside the `<devices>`
 * element of a domain (`virsh edit DOMAIN`).
 *
 * - The virtio-serial port is a `<channel type='unix'>` whose `<source mode='bind'>` makes QEMU
 *   create and listen on the socket (like `server=on`); the broker connects to it. libvirt adds the
 *   virtio-serial controller itself.
 * - The shared memory is a `<shmem>` with `<model type='ivshmem-plain'/>`. libvirt has no way to
 *   give the backing file's path: it always uses `/dev/shm/<name>`. So the configured `shm` path
 *   must be directly inside `/dev/shm/`, and the shmem `name` is its file name
 *   (`shm: "/dev/shm/vbus-vm1"` becomes `<shmem name='vbus-vm1'>`). Any other path is rejected
 *   with an error that says so.
 *
 * @example
 * ```ts
 * import { libvirtXml } from "./src/vm/libvirt_xml.ts";
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

/**
 * The `<channel>` (and, with `shm`, `<shmem>`) elements for a VM, indented for a `<devices>` block:
 *
 * ```xml
 * <channel type='unix'>
 *   <source mode='bind' path='SOCKET'/>
 *   <target type='virtio' name='PORT'/>
 * </channel>
 * <shmem name='NAME'>
 *   <model type='ivshmem-plain'/>
 *   <size unit='M'>SIZE_MIB</size>
 * </shmem>
 * ```
 *
 * libvirt's QEMU driver requires the shmem size to be a power of two of at least 1 MiB, so a
 * smaller `shmSize` (the broker allows 64 KiB) is rejected here with an explanation.
 *
 * @example
 * ```ts
 * const xml = libvirtXml({ name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0", shmSize: 16 << 20 });
 * // "<channel type='unix'>\n  <source mode='bind' path='/run/vbus/vm1.sock'/>\n  ..."
 * ```
 */
export function libvirtXml(vm: VmDeviceConfig): string {
  if (!vm || typeof vm !== "object") throw new Error("libvirtXml: expected a VmConfig object");
  if (typeof vm.socket !== "string" || !vm.socket.startsWith("/")) {
    throw new Error(`VM "${vm.name}": socket "${vm.socket}" must be an absolute path for libvirt`);
  }
  if (typeof vm.port !== "string" || !/^[A-Za-z0-9_.-]{1,127}$/.test(vm.port)) {
    throw new Error(`VM "${vm.name}": port "${vm.port}" is not a valid virtio-serial port name`);
  }
  const lines = [
    `<channel type='unix'>`,
    `  <source mode='bind' path='${xmlEscape(vm.socket)}'/>`,
    `  <target type='virtio' name='${xmlEscape(vm.port)}'/>`,
    `</channel>`,
  ];
  const shmName = libvirtShmemName(vm);
  if (shmName !== undefined) {
    const size = vm.shmSize;
    const MiB = 1024 * 1024;
    if (!Number.isSafeInteger(size) || !Number.isInteger(Math.log2(size)) || size < MiB) {
      throw new Error(
        `VM "${vm.name}": shmSize ${size} bytes cannot be used with libvirt: its QEMU driver needs a ` +
          `power of two of at least 1 MiB for <shmem> (use qemuArgs() for smaller regions)`,
      );
    }
    lines.push(
      `<shmem name='${xmlEscape(shmName)}'>`,
      `  <model type='ivshmem-plain'/>`,
      `  <size unit='M'>${size / MiB}</size>`,
      `</shmem>`,
    );
  }
  return lines.join("\n") + "\n";
}

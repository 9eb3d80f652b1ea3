/**
 * QEMU command-line flags that give a guest its vbus devices: a virtio-serial controller with one
 * named port backed by a unix socket QEMU listens on (the broker connects to it), and optionally an
 * ivshmem-plain device backed by a `/dev/shm` file (the shared-memory fast path).
 *
 * Pure functions of the broker's {@link VmConfig}: what you paste into your QEMU command line is
 * exactly what the broker expects, and exactly what the project's micro-VM lab boots with.
 *
 * @example
 * ```ts
 * import { qemuArgs } from "./qemu_args.ts";
 * const args = qemuArgs({
 *   name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0",
 *   shm: "/dev/shm/vbus-vm1", shmSize: 16 * 1024 * 1024,
 * });
 * // spawn("qemu-system-x86_64", [...yourFlags, ...args])
 * ```
 * @module
 */
import type { VmConfig } from "../broker/config.ts";

/** The subset of {@link VmConfig} the device flags depend on. */
export type VmDeviceConfig = Pick<VmConfig, "name" | "socket" | "port" | "shm" | "shmSize">;

/** QEMU object/device ids derived from a VM name (unique per VM, valid QEMU identifiers). */
export interface QemuIds {
  /** `-device virtio-serial-pci,id=...`; its bus is `<serial>.0`. */
  serial: string;
  /** `-chardev socket,id=...`. */
  chardev: string;
  /** `-device virtserialport,id=...`. */
  port: string;
  /** `-object memory-backend-file,id=...`. */
  memdev: string;
  /** `-device ivshmem-plain,id=...`. */
  ivshmem: string;
}

/**
 * Ids used by {@link qemuArgs} for a VM named `name` (prefix `vbus-<name>-`, so several vbus VMs'
 * flags never collide, and a name starting with a digit still yields a valid QEMU id).
 *
 * @example
 * ```ts
 * qemuIds("vm1").serial; // "vbus-vm1-serial"
 * ```
 */
export function qemuIds(name: string): QemuIds {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
    throw new Error(
      `VM name "${name}" must be 1-64 letters, digits, '_' or '-' (it becomes part of QEMU ids)`,
    );
  }
  const p = `vbus-${name}`;
  return {
    serial: `${p}-serial`,
    chardev: `${p}-chr`,
    port: `${p}-port`,
    memdev: `${p}-shm`,
    ivshmem: `${p}-ivshmem`,
  };
}

/**
 * Escape a value for QEMU's `key=value,key=value` option syntax: a literal comma is written `,,`.
 *
 * @example
 * ```ts
 * qemuOptValue("/run/a,b.sock"); // "/run/a,,b.sock"
 * ```
 */
export function qemuOptValue(value: string): string {
  if (/[\0\n]/.test(value)) {
    throw new Error(`QEMU option value ${JSON.stringify(value)} contains NUL or newline`);
  }
  return value.replaceAll(",", ",,");
}

/**
 * Format a byte count the way QEMU's size options read it (`16M`, `64K`, `1G`, else bytes).
 *
 * @example
 * ```ts
 * qemuSize(16 * 1024 * 1024); // "16M"
 * ```
 */
export function qemuSize(bytes: number): string {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new Error(`size ${bytes} must be a positive integer`);
  }
  for (const [unit, mult] of [["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]] as const) {
    if (bytes % mult === 0) return `${bytes / mult}${unit}`;
  }
  return String(bytes);
}

function checkVm(vm: VmDeviceConfig): void {
  if (!vm || typeof vm !== "object") throw new Error("qemuArgs: expected a VmConfig object");
  if (typeof vm.socket !== "string" || vm.socket.length === 0) {
    throw new Error(`VM "${vm.name}": socket (QEMU chardev unix socket path) is required`);
  }
  if (typeof vm.port !== "string" || !/^[A-Za-z0-9_.-]{1,127}$/.test(vm.port)) {
    throw new Error(`VM "${vm.name}": port "${vm.port}" is not a valid virtio-serial port name`);
  }
  if (vm.shm !== undefined) {
    if (typeof vm.shm !== "string" || vm.shm.length === 0) {
      throw new Error(`VM "${vm.name}": shm must be a non-empty path`);
    }
    const s = vm.shmSize;
    if (!Number.isSafeInteger(s) || s <= 0 || !Number.isInteger(Math.log2(s))) {
      throw new Error(`VM "${vm.name}": shmSize ${s} must be a power of two (ivshmem requirement)`);
    }
  }
}

/**
 * The QEMU flags for one VM's vbus devices, as an argv array (no shell quoting needed):
 *
 * ```
 * -device virtio-serial-pci,id=vbus-NAME-serial
 * -chardev socket,id=vbus-NAME-chr,path=SOCKET,server=on,wait=off
 * -device virtserialport,id=vbus-NAME-port,bus=vbus-NAME-serial.0,nr=1,chardev=vbus-NAME-chr,name=PORT
 * -object memory-backend-file,id=vbus-NAME-shm,share=on,mem-path=SHM,size=SIZE   (only with shm)
 * -device ivshmem-plain,id=vbus-NAME-ivshmem,memdev=vbus-NAME-shm                (only with shm)
 * ```
 *
 * QEMU creates and listens on SOCKET (`server=on,wait=off`: the guest boots without waiting for
 * the broker; the broker connects and reconnects). QEMU creates SHM at SIZE if it does not exist
 * (mode 0644, owned by QEMU's user). Whoever can shrink SHM can crash the broker (SIGBUS) and
 * QEMU, so the broker maps it only when the broker's user (or root) owns it and not every user
 * may write it; when QEMU runs as another user, create SHM first as the broker's user with mode
 * 0660 and QEMU's group. The broker keeps `SOCKET.lock` next to SOCKET (one broker per VM).
 * Port number 1 is used because nr 0 of a virtio-serial bus is reserved for a console.
 *
 * @example
 * ```ts
 * const args = qemuArgs({ name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0", shmSize: 16 << 20 });
 * // ["-device", "virtio-serial-pci,id=vbus-vm1-serial", "-chardev", "socket,id=vbus-vm1-chr,path=/run/vbus/vm1.sock,server=on,wait=off", ...]
 * ```
 */
export function qemuArgs(vm: VmDeviceConfig): string[] {
  checkVm(vm);
  const id = qemuIds(vm.name);
  const args = [
    "-device",
    `virtio-serial-pci,id=${id.serial}`,
    "-chardev",
    `socket,id=${id.chardev},path=${qemuOptValue(vm.socket)},server=on,wait=off`,
    "-device",
    `virtserialport,id=${id.port},bus=${id.serial}.0,nr=1,chardev=${id.chardev},name=${vm.port}`,
  ];
  if (vm.shm !== undefined) {
    args.push(
      "-object",
      `memory-backend-file,id=${id.memdev},share=on,mem-path=${qemuOptValue(vm.shm)},size=${
        qemuSize(vm.shmSize)
      }`,
      "-device",
      `ivshmem-plain,id=${id.ivshmem},memdev=${id.memdev}`,
    );
  }
  return args;
}

/**
 * Quote an argv for a POSIX shell (for printing a copy-pasteable command line).
 *
 * @example
 * ```ts
 * const vm = { name: "vm1", socket: "/run/vbus/vm1.sock", port: "org.vbus.0", shmSize: 1 << 24 };
 * console.log(["qemu-system-x86_64", ...qemuArgs(vm)].map(shellQuote).join(" \\\n  "));
 * ```
 */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * The lab's confined guest network: the only place QEMU network flags are made (lab/vm.ts
 * refuses `-netdev`, `-net` and `-nic` in `deviceArgs`). A guest gets one virtio-net NIC on QEMU
 * user networking (slirp) with `restrict=on`: the guest cannot reach the host or anything beyond
 * it, except through the explicit forwards given here, and every forward ends on the host's
 * 127.0.0.1. No address other than 127.0.0.1 can be expressed, so no forward can lead to a real
 * network.
 *
 * - guest -> host (`guestForwards`): a guest connection to `FORWARD_ADDR:guestPort` is carried by
 *   QEMU to host `127.0.0.1:hostPort` (`guestfwd=tcp:10.0.2.100:P-tcp:127.0.0.1:H`). QEMU opens
 *   that host connection once, when it starts (the host side must already listen), and every
 *   guest connection to that guest port shares it: use each guest port for ONE connection per
 *   boot (give a guest several ports when it needs several connections).
 * - host -> guest (`hostForwards`): a host connection to `127.0.0.1:hostPort` reaches the guest
 *   at `GUEST_ADDR:guestPort` (`hostfwd=tcp:127.0.0.1:H-10.0.2.15:P`), one guest connection per
 *   host connection.
 *
 * Inside the guest, lab/guest-init.sh loads virtio_net and configures eth0 statically
 * (`GUEST_ADDR/24`, default route via `GATEWAY_ADDR`; no DHCP, no DNS, no IPv6).
 *
 * @example
 * ```ts
 * import { FORWARD_ADDR, networkArgs } from "./lab/net.ts";
 * networkArgs({ guestForwards: [{ guestPort: 4222, hostPort: 38111 }] });
 * // ["-netdev", "user,id=vbusnet0,restrict=on,ipv6=off,net=10.0.2.0/24,...,guestfwd=tcp:10.0.2.100:4222-tcp:127.0.0.1:38111",
 * //  "-device", "virtio-net-pci,netdev=vbusnet0,romfile="]
 * // in the guest: net.connect({ host: FORWARD_ADDR, port: 4222 })
 * ```
 * @module
 */
import { existsSync } from "node:fs";

/** The guest's own address on eth0 (slirp's first DHCP address, configured statically). */
export const GUEST_ADDR = "10.0.2.15";
/** Prefix length of the guest network. */
export const GUEST_PREFIX = 24;
/** The slirp gateway (the guest's default route). With `restrict=on` nothing answers there. */
export const GATEWAY_ADDR = "10.0.2.2";
/** The guest-side address every guest -> host forward listens on. */
export const FORWARD_ADDR = "10.0.2.100";
/** The only host address a forward may use. */
export const HOST_LOOPBACK = "127.0.0.1";
/** QEMU id of the lab's netdev. */
const NETDEV_ID = "vbusnet0";

/** One guest -> host forward: guest `FORWARD_ADDR:guestPort` -> host `127.0.0.1:hostPort`. */
export interface GuestForward {
  guestPort: number;
  hostPort: number;
}
/** One host -> guest forward: host `127.0.0.1:hostPort` -> guest `GUEST_ADDR:guestPort`. */
export interface HostForward {
  hostPort: number;
  guestPort: number;
}
/** The `network` option of bootGuest: a restricted virtio-net NIC and its forwards. */
export interface GuestNetwork {
  guestForwards?: GuestForward[];
  hostForwards?: HostForward[];
}

function port(p: unknown, what: string): number {
  if (!Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535) {
    throw new Error(`network: ${what} ${JSON.stringify(p)} must be an integer 1-65535`);
  }
  return p as number;
}

/**
 * QEMU flags for a guest's confined network (see the module doc). Throws on a bad port or a
 * guest port used twice.
 *
 * @example
 * ```ts
 * const flags = networkArgs({ hostForwards: [{ hostPort: 40001, guestPort: 7000 }] });
 * ```
 */
export function networkArgs(net: GuestNetwork): string[] {
  const rules: string[] = [];
  const guestPorts = new Set<number>();
  for (const f of net.guestForwards ?? []) {
    const g = port(f?.guestPort, "guestForwards[].guestPort");
    const h = port(f?.hostPort, "guestForwards[].hostPort");
    if (guestPorts.has(g)) throw new Error(`network: guest port ${g} forwarded twice`);
    guestPorts.add(g);
    rules.push(`guestfwd=tcp:${FORWARD_ADDR}:${g}-tcp:${HOST_LOOPBACK}:${h}`);
  }
  const hostPorts = new Set<number>();
  for (const f of net.hostForwards ?? []) {
    const h = port(f?.hostPort, "hostForwards[].hostPort");
    const g = port(f?.guestPort, "hostForwards[].guestPort");
    if (hostPorts.has(h)) throw new Error(`network: host port ${h} forwarded twice`);
    hostPorts.add(h);
    rules.push(`hostfwd=tcp:${HOST_LOOPBACK}:${h}-${GUEST_ADDR}:${g}`);
  }
  return [
    "-netdev",
    [
      `user,id=${NETDEV_ID},restrict=on,ipv6=off`,
      `net=10.0.2.0/${GUEST_PREFIX},host=${GATEWAY_ADDR}`,
      ...rules,
    ].join(","),
    "-device",
    // romfile= (empty): no PXE option ROM, nothing to boot from the network.
    `virtio-net-pci,netdev=${NETDEV_ID},romfile=`,
  ];
}

/** What lab/guest-init.sh reads from the run directory's config to bring up eth0. */
export function guestNetworkConfig(): Record<string, string> {
  return { VBUS_NET_ADDR: `${GUEST_ADDR}/${GUEST_PREFIX}`, VBUS_NET_GW: GATEWAY_ADDR };
}

/**
 * Throws when `deviceArgs` carries network flags of its own: a guest's network comes only from
 * {@link networkArgs}, so its confinement is decided in one place.
 *
 * @example
 * ```ts
 * refuseForeignNetwork(["-device", "virtio-serial-pci"]); // ok
 * ```
 */
export function refuseForeignNetwork(deviceArgs: string[]): void {
  const bad = deviceArgs.find((a, i) =>
    /^--?(netdev|net|nic)$/.test(a) ||
    (deviceArgs[i - 1] === "-device" && /^(virtio-net|e1000|rtl8139|vhost-vsock)/.test(a))
  );
  if (bad !== undefined) {
    throw new Error(
      `bootGuest: deviceArgs may not contain network flags (${bad}); ` +
        "use the network option (lab/net.ts), which confines the guest",
    );
  }
}

/** Path of the host device QEMU's vhost-vsock-pci needs. */
export const VHOST_VSOCK = "/dev/vhost-vsock";

/**
 * Why AF_VSOCK between host and guest cannot work here, or null when it can: QEMU's
 * `vhost-vsock-pci` needs the host kernel's vhost-vsock device.
 *
 * @example
 * ```ts
 * const why = vsockProblem(); // e.g. "/dev/vhost-vsock missing: ..."
 * ```
 */
export function vsockProblem(): string | null {
  if (existsSync(VHOST_VSOCK)) return null;
  return `${VHOST_VSOCK} missing: the host kernel has no vhost-vsock device (module vhost_vsock ` +
    "not built or not loaded), which QEMU's vhost-vsock-pci needs";
}

/**
 * QEMU flags for a vsock device with guest CID `cid` (3 or more; 2 is the host).
 *
 * @example
 * ```ts
 * vsockArgs(3); // ["-device", "vhost-vsock-pci,guest-cid=3"]
 * ```
 */
export function vsockArgs(cid: number): string[] {
  if (!Number.isInteger(cid) || cid < 3 || cid > 0xfffffffe) {
    throw new Error(`vsock: guest CID ${cid} must be an integer >= 3`);
  }
  return ["-device", `vhost-vsock-pci,guest-cid=${cid}`];
}

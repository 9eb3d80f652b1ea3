/**
 * A port is an ordered, reliable byte stream to one peer: a guest's virtio-serial character
 * device, the unix socket of a QEMU chardev, or the broker's host socket. Everything above this
 * interface is independent of where the bytes go and of the runtime.
 *
 * @example
 * ```ts
 * import type { Port } from "./port.ts";
 * function echo(port: Port) {
 *   port.start((chunk) => port.write(chunk), (err) => console.log("gone", err?.message));
 * }
 * ```
 * @module
 */

/**
 * An open byte stream.
 *
 * @example
 * ```ts
 * import type { Port } from "./port.ts";
 * import { connectUnix } from "./socket_port.ts";
 * const port: Port = await connectUnix("/run/vbus/vm1.sock"); // a QEMU chardev socket
 * port.start((chunk) => console.log(chunk.length, "bytes"), (err) => console.log("closed", err));
 * if (!port.write(new Uint8Array([1, 2, 3]))) await port.drained();
 * port.close();
 * ```
 */
export interface Port {
  /** Where the bytes go, for logs and errors (e.g. "/dev/virtio-ports/org.vbus.0"). */
  readonly description: string;
  /**
   * Start reading. `onData` receives chunks the port will not reuse; `onClose` is called exactly
   * once, when the peer is gone (EOF), on an error, or after {@link Port.close}.
   */
  start(onData: (chunk: Uint8Array) => void, onClose: (err?: Error) => void): void;
  /**
   * Queue bytes for writing, in order. The port keeps a reference: do not modify `bytes`
   * afterwards. Returns false when more than the high-water mark is queued.
   */
  write(bytes: Uint8Array): boolean;
  /** Bytes queued for writing and not yet taken by the peer's side of the stream. */
  readonly pending: number;
  /** Resolves when queued bytes fell below the high-water mark (or the port closed). */
  drained(): Promise<void>;
  /** Stop delivering data until {@link Port.resume} (backpressure towards the peer). */
  pause(): void;
  /** Deliver data again after {@link Port.pause}. */
  resume(): void;
  /** Close the stream. Queued bytes are attempted but not guaranteed. */
  close(): void;
}

/**
 * Opens a fresh port; called again for every reconnect. `connect({ transport })` takes one,
 * e.g. to reach a broker through something other than the default device or socket.
 *
 * @example
 * ```ts
 * import { connect } from "../client/bus.ts";
 * import type { PortOpener } from "./port.ts";
 * import { connectUnix } from "./socket_port.ts";
 * const viaSocket: PortOpener = () => connectUnix("/run/vbus/broker.sock");
 * const bus = await connect({ transport: viaSocket });
 * ```
 */
export type PortOpener = () => Promise<Port>;

/** Bytes queued before {@link Port.write} returns false. */
export const PORT_HIGH_WATER_BYTES = 1024 * 1024;

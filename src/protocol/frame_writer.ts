/**
 * Batches frames into few large writes. A port write costs a syscall (and in a guest a VM
 * exit), so frames produced in one turn of the event loop leave as one write. Large payloads
 * are handed to the port by reference instead of being copied into the batch.
 *
 * @example
 * ```ts
 * import { FrameWriter } from "./frame_writer.ts";
 * import { Op } from "./ops.ts";
 * declare const port: import("../port/port.ts").Port;
 * const writer = new FrameWriter(port);
 * writer.frame(Op.Ping, new Uint8Array([0x90]));
 * ```
 * @module
 */
import { setImmediate } from "node:timers";
import type { Port } from "../port/port.ts";
import { EMPTY, FrameHeader, writeFrameHeader } from "./frame.ts";
import { msgHeadMaxLength, writeMsgHead } from "./codec.ts";
import { Op } from "./ops.ts";

/** A batch is written at once when it grows past this. */
export const BATCH_FLUSH_BYTES = 256 * 1024;
/** Payloads at least this large are written by reference, not copied into the batch. */
export const PAYLOAD_BY_REFERENCE_BYTES = 32 * 1024;
const INITIAL_BATCH_BYTES = 16 * 1024;

/** Encodes frames into a batch buffer and writes it to a port. */
export class FrameWriter {
  #port: Port;
  #batch = new Uint8Array(INITIAL_BATCH_BYTES);
  #length = 0;
  #scheduled = false;
  #blocked = false;

  constructor(port: Port) {
    this.#port = port;
  }

  /** True while the port reported it is above its high-water mark. */
  get blocked(): boolean {
    return this.#blocked;
  }

  /** Bytes batched but not yet handed to the port. */
  get batched(): number {
    return this.#length;
  }

  /**
   * Queue a frame. `head` and `payload` are copied, except a large payload, which is kept by
   * reference unless `copyPayload` (for a payload that is only valid during this call).
   */
  frame(
    op: number,
    head: Uint8Array,
    payload: Uint8Array = EMPTY,
    flags = 0,
    copyPayload = false,
  ): void {
    const byReference = !copyPayload && payload.length >= PAYLOAD_BY_REFERENCE_BYTES;
    const need = FrameHeader.LENGTH + head.length + (byReference ? 0 : payload.length);
    this.#reserve(need);
    const b = this.#batch;
    let at = this.#length;
    writeFrameHeader(b, at, op, flags, head.length, payload.length);
    at += FrameHeader.LENGTH;
    b.set(head, at);
    at += head.length;
    if (!byReference) {
      b.set(payload, at);
      at += payload.length;
    }
    this.#length = at;
    this.#queued(byReference ? payload : undefined);
  }

  /** A frame was added to the batch (its payload, if `byReference`, follows it separately). */
  #queued(byReference: Uint8Array | undefined) {
    if (byReference) {
      this.flush();
      this.#write(byReference);
    } else if (this.#length >= BATCH_FLUSH_BYTES) {
      this.flush();
    } else if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /**
   * Queue a MSG frame whose head is spliced from a PUB head's tail (see `writeMsgHead`),
   * written straight into the batch. The payload is copied (a large one unless it stays valid:
   * `copyPayload` false keeps it by reference, as in {@link frame}).
   */
  msg(sid: number, pubTail: Uint8Array, payload: Uint8Array, copyPayload = false): void {
    const byReference = !copyPayload && payload.length >= PAYLOAD_BY_REFERENCE_BYTES;
    this.#reserve(
      FrameHeader.LENGTH + msgHeadMaxLength(pubTail) + (byReference ? 0 : payload.length),
    );
    const b = this.#batch;
    const at = this.#length;
    const headLength = writeMsgHead(b, at + FrameHeader.LENGTH, sid, pubTail);
    writeFrameHeader(b, at, Op.Msg, 0, headLength, payload.length);
    let end = at + FrameHeader.LENGTH + headLength;
    if (!byReference) {
      b.set(payload, end);
      end += payload.length;
    }
    this.#length = end;
    this.#queued(byReference ? payload : undefined);
  }

  /** Queue already-encoded frame bytes as they are (e.g. a frame buffered during reconnect). */
  raw(bytes: Uint8Array): void {
    this.flush();
    this.#write(bytes);
  }

  /**
   * Queue a frame and hand everything batched to the port now: for a doorbell, which a parked
   * peer is waiting for (the caller may be in a loop that never yields to the event loop).
   */
  urgent(op: number, head: Uint8Array): void {
    this.frame(op, head);
    this.flush();
  }

  /** Hand the batch to the port now. */
  flush(): void {
    this.#scheduled = false;
    if (this.#length === 0) return;
    let out: Uint8Array;
    if (this.#length * 4 < this.#batch.length) {
      // A small batch is copied out: the port holds what it is given until the peer reads it,
      // and a peer that does not read must not pin a whole batch buffer per small frame.
      out = this.#batch.slice(0, this.#length);
    } else {
      // The port keeps a reference to what it is given: start a fresh batch buffer.
      out = this.#batch.subarray(0, this.#length);
      this.#batch = new Uint8Array(
        Math.max(INITIAL_BATCH_BYTES, Math.min(this.#batch.length, BATCH_FLUSH_BYTES * 2)),
      );
    }
    this.#length = 0;
    this.#write(out);
  }

  /** Resolves when the port can take more. */
  async ready(): Promise<void> {
    while (this.#blocked) {
      await this.#port.drained();
      this.#blocked = false;
    }
  }

  #write(bytes: Uint8Array) {
    if (!this.#port.write(bytes)) this.#blocked = true;
  }

  #reserve(need: number) {
    if (this.#length + need <= this.#batch.length) return;
    if (this.#length > 0 && this.#length + need > BATCH_FLUSH_BYTES) this.flush();
    if (this.#length + need <= this.#batch.length) return;
    const grown = new Uint8Array(Math.max(this.#batch.length * 2, this.#length + need));
    grown.set(this.#batch.subarray(0, this.#length));
    this.#batch = grown;
  }
}

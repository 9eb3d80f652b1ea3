/**
 * Recovering publishes from a dead session's outbound ring. The broker publishes its consumer
 * position after every record it handled, so when its session ends (a crash, `kill -9`, a
 * reset) the records between that position and ours were never handled: they still sit in
 * shared memory, which outlives the broker. The client copies them out before the next HELLO
 * (the broker re-initialises the region then) and sends them again, in order, on the next
 * session. At most the record the broker was handling when it died is sent twice. (A guest
 * that hung up by itself, e.g. after unanswered PINGs, leaves them instead: a broker still
 * running reads the old ring when the guest's next HELLO arrives. The client counts them as
 * maybe lost then.)
 *
 * Shared memory is writable by the other side, which may be dead or hostile, so nothing read
 * there is trusted: the positions must be aligned and at most one ring apart, the span is
 * copied once into private memory before anything is parsed, every record must lie inside the
 * span, padding only at the ring's end, and every frame must fill its record exactly. The walk
 * is bounded by `capacity / 8` records. The first violation ends the walk: what came before is
 * kept, the rest is reported as lost.
 *
 * @example
 * ```ts
 * import { salvageOutboundRing } from "./ring_salvage.ts";
 * import { ReconnectBuffer } from "./reconnect_buffer.ts";
 * import type { RingChannel } from "../shm/ring_channel.ts";
 * declare const ring: RingChannel; // the ring of the session that just ended
 * const buffer = new ReconnectBuffer(8 << 20);
 * const { region } = ring;
 * const { frames, problem } = salvageOutboundRing(region.bytes, region.tx, ring.maxFrameOut);
 * buffer.addRecovered(frames); // PUB frames as on the port, oldest first
 * if (problem) console.warn(`outbound ring: ${problem}`);
 * ```
 * @module
 */
import { encodeFrame, FrameHeader, parseFrameAt } from "../protocol/frame.ts";
import { encodeValue } from "../protocol/codec.ts";
import { Op } from "../protocol/ops.ts";
import { maxBodyLength, RECORD, recordLength, RecordType } from "../ring/layout.ts";
import type { RingDescriptor } from "../ring/ring.ts";
import type { RingChannel } from "../shm/ring_channel.ts";
import type { RingSessionEnd } from "./delivery_ledger.ts";
import type { ReconnectBuffer } from "./reconnect_buffer.ts";
import type { RingSender } from "./ring_sender.ts";

/** What was recovered from an outbound ring. */
export interface SalvagedRing {
  /** The unread PUB frames, oldest first, each in its own port-ready encoding (no padding). */
  frames: Uint8Array[];
  /** Unread SUB, UNSUB and PING records (not re-sent: a new session resubscribes by itself). */
  skipped: number;
  /** Why the walk stopped early (the ring was damaged), or undefined when it read it all. */
  problem?: string;
}

/**
 * Copy the records the consumer had not read out of the ring `ring` of the region `bytes`
 * and return the PUB frames among them (see the module doc for what is validated).
 * `maxFrameBytes` bounds one frame.
 */
export function salvageOutboundRing(
  bytes: Uint8Array,
  ring: RingDescriptor,
  maxFrameBytes: number,
): SalvagedRing {
  const out: SalvagedRing = { frames: [], skipped: 0 };
  const i32 = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  const cap = ring.capacity, mask = cap - 1;
  // Read each shared word once.
  const tail = Atomics.load(i32, ring.control.PRODUCER_POSITION >> 2) >>> 0;
  const head = Atomics.load(i32, ring.control.CONSUMER_POSITION >> 2) >>> 0;
  const unread = (tail - head) >>> 0;
  if ((head | tail) & (RECORD.ALIGNMENT - 1) || unread > cap) {
    out.problem = `positions out of range (producer ${tail}, consumer ${head}, capacity ${cap})`;
    return out;
  }
  if (unread === 0) return out;
  // One private copy of the unread span (two pieces when it wraps); parsed from here on.
  const span = new Uint8Array(unread);
  const first = head & mask;
  const toEnd = Math.min(unread, cap - first);
  span.set(bytes.subarray(ring.dataOffset + first, ring.dataOffset + first + toEnd));
  if (toEnd < unread) {
    span.set(bytes.subarray(ring.dataOffset, ring.dataOffset + unread - toEnd), toEnd);
  }
  const view = new DataView(span.buffer);
  const maxBody = Math.min(maxBodyLength(cap), maxFrameBytes);
  let at = 0;
  while (at < unread) {
    const index = (first + at) & mask;
    const length = view.getUint32(at + RECORD.LENGTH, true);
    const type = view.getUint16(at + RECORD.TYPE, true);
    if (length > maxBody) return stop(out, `record of ${length} bytes at ${at}`);
    const size = recordLength(length);
    if (size > unread - at) {
      return stop(out, `record of ${size} bytes runs past the producer position`);
    }
    if (size > cap - index) return stop(out, `record of ${size} bytes runs past the ring's end`);
    if (type === RecordType.PADDING) {
      if (size !== cap - index) return stop(out, "padding before the ring's end");
      at += size;
      continue;
    }
    if (type !== RecordType.DATA && type !== RecordType.CONTROL) {
      return stop(out, `record type ${type}`);
    }
    const body = at + RECORD.HEADER_SIZE;
    let frame;
    try {
      frame = parseFrameAt(span, body, length, maxFrameBytes);
    } catch (err) {
      return stop(out, (err as Error).message);
    }
    if (frame.op === Op.Pub) {
      // Ring frames may carry alignment padding between head and payload; the port's may not.
      out.frames.push(
        (frame.flags & FrameHeader.FLAGS_PAD_MASK) === 0
          ? span.subarray(body, body + length)
          : encodeFrame(Op.Pub, frame.head, frame.payload),
      );
    } else out.skipped++;
    at += size;
  }
  return out;
}

function stop(out: SalvagedRing, problem: string): SalvagedRing {
  out.problem = problem;
  return out;
}

/**
 * The session on `ring` ended: take what waits in `sender`'s queue and what the broker had not
 * read of the outbound ring into `buffer`, oldest first, before anything published from now
 * on. Runs before the next HELLO, after which the broker re-initialises the region.
 * `leftInRing`: the guest hung up itself, so a broker that is still alive reads that ring when
 * the next HELLO arrives (re-sending would duplicate all of it; it is counted instead).
 * Returns what the ledger needs, and why the ring could not be read to its end, if it could not.
 *
 * @example
 * ```ts
 * import { recoverRingSession } from "./ring_salvage.ts";
 * import { DeliveryLedger } from "./delivery_ledger.ts";
 * import { ReconnectBuffer } from "./reconnect_buffer.ts";
 * import type { RingSender } from "./ring_sender.ts";
 * import type { RingChannel } from "../shm/ring_channel.ts";
 * declare const ring: RingChannel; // the ring of the session that ended
 * declare const sender: RingSender; // that session's sender on it
 * const buffer = new ReconnectBuffer(8 << 20);
 * const ledger = new DeliveryLedger();
 * const { end, problem } = recoverRingSession(sender, ring, buffer, false);
 * const maybeLost = ledger.sessionEnded(end);
 * if (problem) console.warn(problem, { maybeLost });
 * ```
 */
export function recoverRingSession(
  sender: RingSender,
  ring: RingChannel,
  buffer: ReconnectBuffer,
  leftInRing: boolean,
): { end: RingSessionEnd; problem?: string } {
  const waiting = sender.close();
  const salvaged = salvageOutboundRing(ring.region.bytes, ring.region.tx, ring.maxFrameOut);
  if (!leftInRing) buffer.addRecovered(salvaged.frames);
  let handedBack = 0;
  for (const p of waiting) {
    if (p.op !== Op.Pub) continue; // SUB/UNSUB/PING: the next session resubscribes by itself
    handedBack++;
    if (p.frame) {
      buffer.requeue(p.frame);
      p.resolve(); // a publish encoded when it had to wait: handed over now
      continue;
    }
    try {
      buffer.add(encodeFrame(Op.Pub, p.head, encodeValue(p.value)), p.subject ?? "");
      p.resolve();
    } catch (err) {
      p.reject(err as Error);
    }
  }
  const problem = salvaged.problem === undefined
    ? undefined
    : `the outbound ring could not be read to its end (${salvaged.problem}); ${salvaged.frames.length} publishes recovered before that`;
  return {
    end: {
      accepted: sender.pubsAccepted,
      handedBack,
      recovered: leftInRing ? 0 : salvaged.frames.length,
      leftInRing: leftInRing ? salvaged.frames.length : 0,
      damaged: salvaged.problem !== undefined,
    },
    problem,
  };
}

// The "obj4" workload: a small structured value (an object of four fields) instead of opaque
// bytes, where the codec's cost shows. vbus publishes the object itself (msgpackr encodes it in
// place, the subscriber decodes it); byte-oriented systems get the same object packed and
// unpacked with msgpackr in the client, as their users would do.
import { Packr } from "msgpackr";
import { STRUCTURED } from "./stats.ts";

/** The value published as message `i` of an "obj4" case. */
export function structuredValue(
  i: number,
): { id: number; sensor: string; celsius: number; ok: boolean } {
  return { id: i, sensor: "vm1.cpu.temp", celsius: 21.5 + (i & 7), ok: true };
}

/** True when a received value is an intact {@link structuredValue}. */
export function isStructuredValue(v: unknown): boolean {
  const o = v as { id?: unknown; sensor?: unknown; celsius?: unknown; ok?: unknown } | null;
  return !!o && typeof o.id === "number" && o.sensor === "vm1.cpu.temp" &&
    typeof o.celsius === "number" && o.ok === true;
}

/** msgpackr with default options, for systems that carry bytes. */
export const packr = new Packr();

/** Payload bytes per message for a case size (the encoded object for "obj4"). */
export function payloadBytes(size: number): number {
  return size === STRUCTURED ? packr.pack(structuredValue(123456)).length : size;
}

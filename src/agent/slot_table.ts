/**
 * The agent's table of channels and slots: which local process has which channel id and ring
 * pair, and when an id and its slot are free again (a side has sent and received CLOSE,
 * docs/PROTOCOL.md section 14). Channel `c` uses slot `c - 1` when the broker granted that
 * many slots, else none (that process runs on the port stream).
 *
 * @example
 * ```ts
 * import { SlotTable } from "./slot_table.ts";
 * const t = new SlotTable<string>(2, 1);
 * const a = t.take("svc A"); // { id: 1, slot: 0, ... }
 * const b = t.take("svc B"); // { id: 2, slot: -1 }: only one slot was granted
 * t.take("svc C"); // undefined: both channels are in use
 * t.sentClose(a!); t.gotClose(a!); // channel 1 and slot 0 are free again
 * ```
 * @module
 */

/** One channel of the table. */
export interface ChannelEntry<T> {
  id: number;
  /** Slot index, or -1 for none. */
  slot: number;
  owner: T;
  /** This side sent CLOSE / the broker sent CLOSE. */
  closeSent: boolean;
  closeReceived: boolean;
}

/** See the module doc. */
export class SlotTable<T> {
  #entries = new Map<number, ChannelEntry<T>>();

  /** `channels`: ids 1..channels may be used; `slots`: slots 0..slots-1 exist. */
  constructor(readonly channels: number, readonly slots: number) {}

  /** Channels in use (including those waiting for the broker's CLOSE). */
  get used(): number {
    return this.#entries.size;
  }

  /** A free channel (and its slot) for `owner`, or undefined when all are in use. */
  take(owner: T): ChannelEntry<T> | undefined {
    for (let id = 1; id <= this.channels; id++) {
      if (this.#entries.has(id)) continue;
      const entry: ChannelEntry<T> = {
        id,
        slot: id - 1 < this.slots ? id - 1 : -1,
        owner,
        closeSent: false,
        closeReceived: false,
      };
      this.#entries.set(id, entry);
      return entry;
    }
    return undefined;
  }

  /** The entry of channel `id`. */
  get(id: number): ChannelEntry<T> | undefined {
    return this.#entries.get(id);
  }

  /** Every entry. */
  all(): ChannelEntry<T>[] {
    return [...this.#entries.values()];
  }

  /** This side sent CLOSE; returns true when the channel is now free. */
  sentClose(e: ChannelEntry<T>): boolean {
    e.closeSent = true;
    return this.#release(e);
  }

  /** The broker sent CLOSE; returns true when the channel is now free. */
  gotClose(e: ChannelEntry<T>): boolean {
    e.closeReceived = true;
    return this.#release(e);
  }

  /** Forget everything (the broker connection is gone: its sessions with it). */
  clear(): void {
    this.#entries.clear();
  }

  #release(e: ChannelEntry<T>): boolean {
    if (!e.closeSent || !e.closeReceived) return false;
    if (this.#entries.get(e.id) === e) this.#entries.delete(e.id);
    return true;
  }
}

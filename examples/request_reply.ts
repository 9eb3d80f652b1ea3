/**
 * A request/reply service and its client. Run the service in one guest (or on the host) and
 * the client anywhere else on the bus:
 *
 *   bun examples/request_reply.ts serve          # answers on math.add
 *   bun examples/request_reply.ts ask 2 40       # prints 42
 * @module
 */
import process from "node:process";
import { type Bus, connect, ErrorCode, type Subscription, VbusError } from "../mod.ts";

/** The request shape of `math.add`. */
export interface AddRequest {
  a: number;
  b: number;
}

/**
 * Serve `math.add` in a queue group, so several instances share the load.
 *
 * @example
 * ```ts
 * const bus = await connect();
 * serveAdd(bus);
 * ```
 */
export function serveAdd(bus: Bus): Subscription<AddRequest> {
  return bus.subscribe<AddRequest>("math.add", {
    queue: "math",
    callback: (_err, msg) => {
      const { a, b } = msg.data;
      msg.respond(a + b); // false when it was published without a reply subject
    },
  });
}

/**
 * Ask `math.add`; a clear error when no service runs.
 *
 * @example
 * ```ts
 * console.log(await askAdd(bus, 2, 40)); // 42
 * ```
 */
export async function askAdd(bus: Bus, a: number, b: number): Promise<number> {
  const reply = await bus.request<number>("math.add", { a, b } satisfies AddRequest, {
    timeout: 2000,
  });
  return reply.data;
}

if (import.meta.main) {
  const [mode, a, b] = process.argv.slice(2);
  const bus = await connect({ name: `math-${mode}` });
  if (mode === "serve") {
    serveAdd(bus);
    console.log("serving math.add (Ctrl-C to stop)");
    await bus.closed;
  } else if (mode === "ask") {
    try {
      console.log(await askAdd(bus, Number(a), Number(b)));
    } catch (err) {
      if (err instanceof VbusError && err.code === ErrorCode.NoResponders) {
        console.error("no math.add service is running");
        process.exitCode = 1;
      } else throw err;
    }
    await bus.drain();
  } else {
    console.error("usage: request_reply.ts serve | ask A B");
    process.exitCode = 2;
    await bus.close();
  }
}

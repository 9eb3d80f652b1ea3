/**
 * request({ signal }): an aborted request rejects at once with an ABORTED VbusError named
 * "AbortError" (its cause the signal's reason), its entry is gone (a late reply is ignored),
 * and an already-aborted signal sends nothing.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { delay, startLab, waitFor } from "./helpers.ts";
import { ErrorCode, VbusError } from "../src/protocol/errors.ts";
import { RequestTable } from "../src/client/requests.ts";
import type { Msg } from "../src/client/msg.ts";
import type { StatusEvent } from "../src/client/status.ts";

const aborted = (e: unknown) =>
  e instanceof VbusError && e.code === ErrorCode.Aborted && e.name === "AbortError";

for (const shm of [false, true]) {
  test(`request signal (${shm ? "ring" : "stream"}): aborting rejects at once with AbortError; the late reply is ignored`, async () => {
    const lab = await startLab({ shm, vms: [] });
    try {
      const svc = await lab.host();
      const client = await lab.host();
      let asked = 0;
      svc.subscribe<number>("svc.slow", {
        callback: async (_e, m) => {
          asked++;
          await delay(200);
          m.respond(m.data);
        },
      });
      await svc.flush();
      const errors: StatusEvent[] = [];
      client.on("error", (e) => errors.push(e));
      const ac = new AbortController();
      const t0 = Date.now();
      const req = client.request("svc.slow", 1, { timeout: 5000, signal: ac.signal });
      setTimeout(() => ac.abort(new Error("the user gave up")), 30);
      await assert.rejects(req, (e: unknown) => {
        assert.ok(aborted(e), String(e));
        assert.equal(((e as Error).cause as Error).message, "the user gave up");
        assert.match((e as Error).message, /request to "svc\.slow" was aborted/);
        return true;
      });
      assert.ok(Date.now() - t0 < 1000, "at once, not after the timeout");
      await waitFor(() => asked === 1, "the request was sent");
      await delay(300); // the reply arrives now, for nobody
      assert.deepEqual(errors, [], "a late reply is not an error");
      // The connection goes on answering other requests.
      assert.equal((await client.request<number>("svc.slow", 7, { timeout: 2000 })).data, 7);
    } finally {
      await lab.close();
    }
  });
}

test("request signal: an already aborted signal rejects without sending; a signal aborted after the reply changes nothing", async () => {
  const lab = await startLab({ vms: [] });
  try {
    const svc = await lab.host();
    const client = await lab.host();
    let asked = 0;
    svc.subscribe<number>("svc.count", { callback: (_e, m) => void (asked++, m.respond(m.data)) });
    await svc.flush();
    await assert.rejects(
      client.request("svc.count", 1, { signal: AbortSignal.abort("no") }),
      aborted,
    );
    const ac = new AbortController();
    const reply = await client.request<number>("svc.count", 2, { signal: ac.signal });
    ac.abort(); // after the reply: nothing to cancel
    assert.equal(reply.data, 2);
    await client.flush();
    await svc.flush();
    assert.equal(asked, 1, "the aborted request was never sent");
  } finally {
    await lab.close();
  }
});

test("request signal: the request table forgets a request when it is aborted, answered or timed out", async () => {
  const table = new RequestTable();
  const outcomes: string[] = [];
  const add = (token: string, timeout: number, signal?: AbortSignal) =>
    table.add(
      token,
      `svc.${token}`,
      timeout,
      (m: Msg<unknown>) => outcomes.push(`${token}: ${m.subject}`),
      (e: Error) => outcomes.push(`${token}: ${(e as VbusError).code}`),
      signal,
    );
  const ac = new AbortController();
  add("a", 10_000, ac.signal);
  add("b", 20);
  add("c", 10_000, new AbortController().signal);
  assert.equal(table.size, 3);
  ac.abort();
  assert.equal(table.size, 2);
  await delay(60);
  assert.equal(table.size, 1, "the timed-out one is gone too");
  table.failAll(new VbusError(ErrorCode.Closed, "closed"));
  assert.equal(table.size, 0);
  assert.deepEqual(outcomes, ["a: ABORTED", "b: TIMEOUT", "c: CLOSED"]);
});

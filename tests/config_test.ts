import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, DEFAULT_SHM_SIZE, loadConfig, parseConfig } from "../src/broker/config.ts";
import { tempDir } from "./helpers.ts";

test("config: minimal form with comments and defaults", () => {
  const c = parseConfig(
    `{
    // the broker's host socket
    "listen": "/run/vbus/broker.sock",
    "vms": [{ "name": "vm1", "socket": "/run/vbus/vm1.sock", "shm": "/dev/shm/vbus-vm1" }, ],
  }`,
    "broker.jsonc",
  );
  assert.equal(c.listen, "/run/vbus/broker.sock");
  assert.equal(c.vms[0].port, "org.vbus.0");
  assert.equal(c.vms[0].shmSize, DEFAULT_SHM_SIZE);
  assert.equal(c.vms[0].shm, "/dev/shm/vbus-vm1");
  assert.equal(c.limits.maxSubjectBytes, 256);
});

test("config: errors name the file, the key and the problem", () => {
  const cases: [string, RegExp][] = [
    [`{ "vms": [ }`, /^f\.jsonc: \(syntax, line 1 column \d+\): invalid JSON/],
    [`[]`, /^f\.jsonc: \(root\): must be an object/],
    [`{}`, /^f\.jsonc: vms: must be an array/],
    [`{ "vms": [], "lisen": "x" }`, /^f\.jsonc: lisen: unknown key/],
    [`{ "vms": [{ "socket": "/a" }] }`, /^f\.jsonc: vms\[0\]\.name: is required/],
    [`{ "vms": [{ "name": "a b", "socket": "/a" }] }`, /vms\[0\]\.name: "a b" must be/],
    [
      `{ "vms": [{ "name": "a", "socket": "/a" }, { "name": "a", "socket": "/b" }] }`,
      /vms\[1\]\.name: duplicate VM name "a"/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/a" }, { "name": "b", "socket": "/a" }] }`,
      /vms\[1\]\.socket: socket "\/a" is used by two VMs/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/a", "shmSize": 1000 }] }`,
      /vms\[0\]\.shmSize: must be a power of two/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/a", "permissions": { "publish": ["a.>.b"] } }] }`,
      /vms\[0\]\.permissions\.publish\[0\]: invalid pattern "a\.>\.b"/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/a", "permissions": { "pub": [] } }] }`,
      /vms\[0\]\.permissions\.pub: unknown key/,
    ],
    [
      `{ "vms": [], "limits": { "maxFrameBytes": -1 } }`,
      /limits\.maxFrameBytes: must be a positive integer/,
    ],
  ];
  for (const [text, re] of cases) {
    assert.throws(
      () => parseConfig(text, "f.jsonc"),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
      text,
    );
  }
});

test("config: loadConfig reads a file and reports a missing one", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, "b.json");
    writeFileSync(path, `{ "vms": [{ "name": "vm1", "socket": "/s" }] }`);
    assert.equal((await loadConfig(path)).vms[0].name, "vm1");
    await assert.rejects(loadConfig(join(dir, "nope.json")), /nope\.json: \(file\): cannot read/);
  } finally {
    cleanup();
  }
});

test("config: the VM name host is reserved, in any case", () => {
  for (const name of ["host", "HOST", "Host"]) {
    assert.throws(
      () => parseConfig(`{ "vms": [{ "name": "${name}", "socket": "/a" }] }`, "f.jsonc"),
      (e: Error) =>
        e instanceof ConfigError &&
        new RegExp(`^f\\.jsonc: vms\\[0\\]\\.name: "${name}" is reserved`).test(e.message),
      name,
    );
  }
  assert.equal(
    parseConfig(`{ "vms": [{ "name": "hosts", "socket": "/a" }] }`).vms[0].name,
    "hosts",
  );
});

test("config: paths must be absolute and play one role each (compared after normalising)", () => {
  const cases: [string, RegExp][] = [
    [`{ "listen": "b.sock", "vms": [] }`, /^f\.jsonc: listen: "b\.sock" must be an absolute path/],
    [
      `{ "vms": [{ "name": "a", "socket": "run/a.sock" }] }`,
      /vms\[0\]\.socket: "run\/a\.sock" must be an absolute path/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/a", "shm": "./x" }] }`,
      /vms\[0\]\.shm: "\.\/x" must be an absolute path/,
    ],
    // The broker would connect to its own host socket and serve host clients as "vm1".
    [
      `{ "listen": "/run/vbus/b.sock", "vms": [{ "name": "vm1", "socket": "/run/vbus//./b.sock" }] }`,
      /vms\[0\]\.socket: socket "\/run\/vbus\/b\.sock" is the broker's own listen socket/,
    ],
    // One memory file mapped into two guests is a channel between them that bypasses the broker.
    [
      `{ "vms": [{ "name": "a", "socket": "/a", "shm": "/dev/shm/x" }, { "name": "b", "socket": "/b", "shm": "/dev/shm/../shm/x" }] }`,
      /vms\[1\]\.shm: shm "\/dev\/shm\/x" is used by two VMs \(vms\[0\]\.shm too\)/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/x/a" }, { "name": "b", "socket": "/x/a/" }] }`,
      /vms\[1\]\.socket: socket "\/x\/a" is used by two VMs/,
    ],
    [
      `{ "vms": [{ "name": "a", "socket": "/a", "shm": "/b" }, { "name": "b", "socket": "/b" }] }`,
      /vms\[1\]\.socket: socket "\/b" is already used as vms\[0\]\.shm/,
    ],
    [
      `{ "listen": "/l", "vms": [{ "name": "a", "socket": "/a", "shm": "/l" }] }`,
      /vms\[0\]\.shm: shm "\/l" is already used as listen/,
    ],
  ];
  for (const [text, re] of cases) {
    assert.throws(
      () => parseConfig(text, "f.jsonc"),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
      text,
    );
  }
  const c = parseConfig(
    `{ "listen": "/run//vbus/b.sock", "vms": [{ "name": "a", "socket": "/run/vbus/./a.sock", "shm": "/dev/shm/x/" }] }`,
  );
  assert.equal(c.listen, "/run/vbus/b.sock");
  assert.equal(c.vms[0].socket, "/run/vbus/a.sock");
  assert.equal(c.vms[0].shm, "/dev/shm/x");
});

test("config: permissions.block, false by default for VMs, true for host clients", () => {
  const c = parseConfig(`{ "vms": [
    { "name": "a", "socket": "/a", "permissions": { "publish": ["a.>"] } },
    { "name": "b", "socket": "/b", "permissions": { "block": true } },
    { "name": "c", "socket": "/c" },
  ] }`);
  assert.equal(c.vms[0].permissions?.block, false);
  assert.equal(c.vms[1].permissions?.block, true);
  assert.equal(c.vms[2].permissions?.block ?? false, false);
  assert.equal(c.hostPermissions?.block, true, "host clients without permissions may block");
  const h = parseConfig(`{ "host": { "permissions": { "subscribe": [">"] } }, "vms": [] }`);
  assert.equal(h.hostPermissions?.block, true);
  const off = parseConfig(`{ "host": { "permissions": { "block": false } }, "vms": [] }`);
  assert.equal(off.hostPermissions?.block, false);
  assert.throws(
    () =>
      parseConfig(
        `{ "vms": [{ "name": "a", "socket": "/a", "permissions": { "block": "yes" } }] }`,
        "f.jsonc",
      ),
    /f\.jsonc: vms\[0\]\.permissions\.block: must be true or false/,
  );
});

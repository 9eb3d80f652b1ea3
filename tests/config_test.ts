import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, DEFAULT_SHM_SIZE, loadConfig, parseConfig } from "../src/broker/config.ts";
import { tempDir } from "./helpers.ts";

test("config: minimal form with comments and defaults", () => {
  const c = parseConfig(`{
    // the broker's host socket
    "listen": "/run/vbus/broker.sock",
    "vms": [{ "name": "vm1", "socket": "/run/vbus/vm1.sock", "shm": "/dev/shm/vbus-vm1" }, ],
  }`, "broker.jsonc");
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
    [`{ "vms": [{ "name": "a", "socket": "/a" }, { "name": "a", "socket": "/b" }] }`, /vms\[1\]\.name: duplicate VM name "a"/],
    [`{ "vms": [{ "name": "a", "socket": "/a" }, { "name": "b", "socket": "/a" }] }`, /vms\[1\]\.socket: socket "\/a" is used by two VMs/],
    [`{ "vms": [{ "name": "a", "socket": "/a", "shmSize": 1000 }] }`, /vms\[0\]\.shmSize: must be a power of two/],
    [`{ "vms": [{ "name": "a", "socket": "/a", "permissions": { "publish": ["a.>.b"] } }] }`, /vms\[0\]\.permissions\.publish\[0\]: invalid pattern "a\.>\.b"/],
    [`{ "vms": [{ "name": "a", "socket": "/a", "permissions": { "pub": [] } }] }`, /vms\[0\]\.permissions\.pub: unknown key/],
    [`{ "vms": [], "limits": { "maxFrameBytes": -1 } }`, /limits\.maxFrameBytes: must be a positive integer/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => parseConfig(text, "f.jsonc"), (e: Error) => e instanceof ConfigError && re.test(e.message), text);
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

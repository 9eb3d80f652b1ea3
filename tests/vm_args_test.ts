// qemuArgs / libvirtXml: exact flags, escaping, errors; libvirt XML well-formedness and, when
// libvirt's virt-xml-validate is installed (Debian: libvirt-clients + libxml2-utils, installed by
// lab/setup.sh), validation against libvirt's own schemas: the <devices> snippet and each single
// device (what `virsh attach-device` takes) against its device definitions, and whole domains.
// Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { qemuArgs, qemuIds, qemuOptValue, qemuSize, shellQuote } from "../src/vm/qemu_args.ts";
import {
  LIBVIRT_DEVICES,
  libvirtChannelXml,
  libvirtShmemName,
  libvirtShmemXml,
  libvirtXml,
  xmlEscape,
} from "../src/vm/libvirt_xml.ts";
import { parseConfig, type VmConfig } from "../src/broker/config.ts";

const base: VmConfig = {
  name: "vm1",
  socket: "/run/vbus/vm1.sock",
  port: "org.vbus.0",
  shmSize: 16 << 20,
};
const withShm: VmConfig = { ...base, shm: "/dev/shm/vbus-vm1" };

test("qemuArgs: virtio-serial controller, socket chardev and named port", () => {
  assert.deepEqual(qemuArgs(base), [
    "-device",
    "virtio-serial-pci,id=vbus-vm1-serial",
    "-chardev",
    "socket,id=vbus-vm1-chr,path=/run/vbus/vm1.sock,server=on,wait=off",
    "-device",
    "virtserialport,id=vbus-vm1-port,bus=vbus-vm1-serial.0,nr=1,chardev=vbus-vm1-chr,name=org.vbus.0",
  ]);
});

test("qemuArgs: ivshmem-plain backed by the shm file when shm is set", () => {
  const args = qemuArgs(withShm);
  assert.equal(args.length, 10);
  assert.deepEqual(args.slice(6), [
    "-object",
    "memory-backend-file,id=vbus-vm1-shm,share=on,mem-path=/dev/shm/vbus-vm1,size=16M",
    "-device",
    "ivshmem-plain,id=vbus-vm1-ivshmem,memdev=vbus-vm1-shm",
  ]);
  assert.match(qemuArgs({ ...withShm, shmSize: 65536 })[7], /,size=64K$/);
  assert.match(qemuArgs({ ...withShm, shmSize: 2 ** 30 })[7], /,size=1G$/);
});

test("qemuArgs: config defaults flow through (port org.vbus.0, 16 MiB)", () => {
  const cfg = parseConfig(
    `{ "vms": [ { "name": "a-1", "socket": "/s/a.sock", "shm": "/dev/shm/a" } ] }`,
  );
  const args = qemuArgs(cfg.vms[0]);
  assert.ok(
    args.includes(
      "virtserialport,id=vbus-a-1-port,bus=vbus-a-1-serial.0,nr=1,chardev=vbus-a-1-chr,name=org.vbus.0",
    ),
  );
  assert.ok(
    args.includes("memory-backend-file,id=vbus-a-1-shm,share=on,mem-path=/dev/shm/a,size=16M"),
  );
});

test("qemuArgs: commas in paths are doubled (QEMU option escaping)", () => {
  const args = qemuArgs({ ...withShm, socket: "/run/a,b.sock", shm: "/dev/shm/x,y" });
  assert.equal(args[3], "socket,id=vbus-vm1-chr,path=/run/a,,b.sock,server=on,wait=off");
  assert.equal(
    args[7],
    "memory-backend-file,id=vbus-vm1-shm,share=on,mem-path=/dev/shm/x,,y,size=16M",
  );
  assert.equal(qemuOptValue("a,,b"), "a,,,,b");
});

test("qemuArgs: clear errors for bad input", () => {
  assert.throws(() => qemuArgs({ ...base, name: "bad name" }), /VM name "bad name"/);
  assert.throws(() => qemuArgs({ ...base, socket: "" }), /socket/);
  assert.throws(() => qemuArgs({ ...base, port: "has space" }), /port "has space"/);
  assert.throws(() => qemuArgs({ ...withShm, shmSize: 3000 }), /power of two/);
  assert.throws(() => qemuOptValue("a\nb"), /newline/);
  assert.throws(() => qemuSize(0), /positive/);
});

test("qemuIds, qemuSize, shellQuote helpers", () => {
  assert.equal(qemuIds("9x").serial, "vbus-9x-serial");
  assert.equal(qemuSize(3 * 1024 * 1024), "3M");
  assert.equal(qemuSize(1000), "1000");
  assert.equal(shellQuote("plain/path,x=1"), "plain/path,x=1");
  assert.equal(shellQuote("it's"), `'it'\\''s'`);
});

// ---------------------------------------------------------------- libvirt XML

interface El {
  name: string;
  attrs: Record<string, string>;
  children: El[];
  text: string;
}

/** Minimal strict XML parser (elements, quoted attributes, text, the 5 predefined entities). */
function parseXml(xml: string): El[] {
  const root: El = { name: "#root", attrs: {}, children: [], text: "" };
  const stack: El[] = [root];
  const unescape = (s: string) => {
    if (/&(?!(amp|lt|gt|apos|quot);)/.test(s)) {
      throw new Error(`bad entity in ${JSON.stringify(s)}`);
    }
    return s.replace(
      /&(amp|lt|gt|apos|quot);/g,
      (_, e) => ({ amp: "&", lt: "<", gt: ">", apos: "'", quot: '"' } as Record<string, string>)[e],
    );
  };
  const re =
    /<\/([A-Za-z][\w:.-]*)\s*>|<([A-Za-z][\w:.-]*)((?:\s+[A-Za-z][\w:.-]*\s*=\s*(?:'[^'<]*'|"[^"<]*"))*)\s*(\/?)>|([^<]+)|(<)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(xml))) {
    const top = stack[stack.length - 1];
    if (m[6]) {
      throw new Error(`malformed tag at offset ${m.index}: ${xml.slice(m.index, m.index + 40)}`);
    }
    if (m[5] !== undefined) {
      top.text += unescape(m[5]);
    } else if (m[1]) {
      if (top.name !== m[1]) throw new Error(`</${m[1]}> closes <${top.name}>`);
      stack.pop();
    } else {
      const attrs: Record<string, string> = {};
      const are = /([A-Za-z][\w:.-]*)\s*=\s*(?:'([^']*)'|"([^"]*)")/g;
      let a: RegExpExecArray | null;
      while ((a = are.exec(m[3]))) {
        if (a[1] in attrs) throw new Error(`duplicate attribute ${a[1]}`);
        attrs[a[1]] = unescape(a[2] ?? a[3]);
      }
      const el: El = { name: m[2], attrs, children: [], text: "" };
      top.children.push(el);
      if (!m[4]) stack.push(el);
    }
  }
  if (stack.length !== 1) throw new Error(`unclosed <${stack[stack.length - 1].name}>`);
  if (root.text.trim()) throw new Error("text outside elements");
  return root.children;
}
const child = (el: El, name: string) => {
  const c = el.children.filter((x) => x.name === name);
  assert.equal(c.length, 1, `<${el.name}> should have exactly one <${name}>`);
  return c[0];
};

test("libvirtXml: one <devices> element by default; a channel-only VM has just the channel", () => {
  const top = parseXml(libvirtXml(base));
  assert.equal(top.length, 1, "one root element");
  assert.equal(top[0].name, "devices");
  assert.deepEqual(top[0].children.map((e) => e.name), ["channel"]);
  const ch = top[0].children[0];
  assert.deepEqual(ch.attrs, { type: "unix" });
  assert.deepEqual(child(ch, "source").attrs, { mode: "bind", path: "/run/vbus/vm1.sock" });
  assert.deepEqual(child(ch, "target").attrs, { type: "virtio", name: "org.vbus.0" });
  assert.equal(
    libvirtXml(base),
    `<devices>\n${libvirtChannelXml(base).replace(/^/gm, "  ").trimEnd()}\n</devices>\n`,
  );
});

test("libvirtXml: shmem named after the /dev/shm file, ivshmem-plain, size in MiB", () => {
  const top = parseXml(libvirtXml(withShm));
  assert.deepEqual(top[0].children.map((e) => e.name), ["channel", "shmem"]);
  const shm = top[0].children[1];
  assert.deepEqual(shm.attrs, { name: "vbus-vm1" });
  assert.deepEqual(child(shm, "model").attrs, { type: "ivshmem-plain" });
  const size = child(shm, "size");
  assert.deepEqual(size.attrs, { unit: "M" });
  assert.equal(size.text, "16");
  assert.equal(libvirtShmemName(withShm), "vbus-vm1");
  assert.equal(libvirtShmemName(base), undefined);
  assert.equal(libvirtShmemXml(base), undefined);
});

test("libvirtXml: --device prints exactly one element, the one virsh attach-device takes", () => {
  for (const device of LIBVIRT_DEVICES) {
    const xml = libvirtXml(withShm, { device });
    const els = parseXml(xml);
    assert.equal(els.length, 1, `${device}: one root element`);
    assert.equal(els[0].name, device);
    assert.equal(xml, device === "channel" ? libvirtChannelXml(withShm) : libvirtShmemXml(withShm));
  }
  assert.throws(() => libvirtXml(base, { device: "shmem" }), /VM "vm1" has no shm in the config/);
  assert.throws(
    () => libvirtXml(base, { device: "disk" as "shmem" }),
    /no libvirt device "disk": choose channel or shmem/,
  );
});

test("libvirtXml: escaping and clear errors", () => {
  const els = parseXml(
    libvirtXml({ ...base, socket: "/run/it's&<x>.sock" }, { device: "channel" }),
  );
  assert.equal(child(els[0], "source").attrs.path, "/run/it's&<x>.sock");
  assert.equal(xmlEscape(`<'&">`), "&lt;&apos;&amp;&quot;&gt;");
  assert.throws(
    () => libvirtXml({ ...withShm, shm: "/var/lib/vbus/vm1.shm" }),
    /always uses the file \/dev\/shm\/N/,
  );
  assert.throws(() => libvirtXml({ ...withShm, shm: "/dev/shm/sub/x" }), /\/dev\/shm/);
  assert.throws(() => libvirtXml({ ...withShm, shmSize: 65536 }), /at least 1 MiB/);
  assert.throws(() => libvirtXml({ ...base, socket: "relative.sock" }), /absolute path/);
});

function whichSync(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** libvirt's own RelaxNG grammar for domains (Debian: /usr/share/libvirt/schemas, libvirt-clients). */
const LIBVIRT_SCHEMAS = "/usr/share/libvirt/schemas";
const validator = whichSync("virt-xml-validate") && whichSync("xmllint") &&
  existsSync(join(LIBVIRT_SCHEMAS, "domaincommon.rng"));
const skipReason = validator
  ? false
  : "virt-xml-validate, xmllint or libvirt's schemas not installed (Debian packages " +
    "libvirt-clients and libxml2-utils; `sudo bash lab/setup.sh` installs them)";
if (skipReason) console.log(`SKIP libvirt schema validation: ${skipReason}`);

test(
  "libvirtXml: libvirt's schemas accept the <devices> snippet, each single device, and a domain made of them",
  {
    skip: skipReason,
  },
  () => {
    const dir = mkdtempSync(join(tmpdir(), "vbus-xml-"));
    try {
      // A grammar whose root may be libvirt's own <devices>, <channel> or <shmem> definition:
      // what `virsh attach-device` parses is one device element of the domain grammar.
      const grammar = join(dir, "device.rng");
      writeFileSync(
        grammar,
        `<grammar xmlns="http://relaxng.org/ns/structure/1.0" datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">\n` +
          `  <include href="${join(LIBVIRT_SCHEMAS, "domaincommon.rng")}"/>\n` +
          `  <start><choice><ref name="devices"/><ref name="channel"/><ref name="shmem"/></choice></start>\n` +
          `</grammar>\n`,
      );
      const validateDevice = (what: string, xml: string) => {
        const file = join(dir, "device.xml");
        writeFileSync(file, xml);
        const r = spawnSync("xmllint", ["--noout", "--relaxng", grammar, file], {
          encoding: "utf8",
        });
        return {
          ok: r.status === 0,
          why: `${what}: xmllint said:\n${r.stdout}${r.stderr}\n${xml}`,
        };
      };
      for (
        const [what, xml] of [
          ["<devices> with channel and shmem", libvirtXml(withShm)],
          ["<devices> with the channel only", libvirtXml(base)],
          ["--device channel", libvirtXml(withShm, { device: "channel" })],
          ["--device shmem", libvirtXml(withShm, { device: "shmem" })],
        ]
      ) {
        const r = validateDevice(what, xml);
        assert.ok(r.ok, r.why);
      }
      assert.equal(
        validateDevice(
          "bogus model",
          libvirtShmemXml(withShm)!.replace("ivshmem-plain", "ivshmem-bogus"),
        ).ok,
        false,
        "the device grammar accepted an invalid model: the check is not working",
      );

      const domain = (devices: string) =>
        `<domain type='kvm'>\n  <name>vbus-test</name>\n  <memory unit='MiB'>256</memory>\n` +
        `  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n  </os>\n` +
        devices.replace(/^/gm, "  ") + `</domain>\n`;
      const other = { ...base, name: "b", socket: "/run/b.sock", port: "org.vbus.1" };
      const cases: [string, string][] = [
        ["channel", libvirtXml(base)],
        ["channel+shmem", libvirtXml(withShm)],
        [
          "two VMs' devices in one <devices>",
          `<devices>\n${libvirtXml(withShm, { device: "channel" })}${
            libvirtXml(withShm, { device: "shmem" })
          }` +
          `${libvirtXml(other, { device: "channel" })}</devices>\n`,
        ],
      ];
      for (const [what, devices] of cases) {
        const file = join(dir, "domain.xml");
        writeFileSync(file, domain(devices));
        const r = spawnSync("virt-xml-validate", [file, "domain"], { encoding: "utf8" });
        assert.equal(
          r.status,
          0,
          `${what}: virt-xml-validate failed:\n${r.stdout}${r.stderr}\n${domain(devices)}`,
        );
      }
      // and the validator does reject a broken one (so a pass means something)
      writeFileSync(
        join(dir, "bad.xml"),
        domain(libvirtXml(withShm).replace("ivshmem-plain", "ivshmem-bogus")),
      );
      const bad = spawnSync("virt-xml-validate", [join(dir, "bad.xml"), "domain"], {
        encoding: "utf8",
      });
      assert.notEqual(
        bad.status,
        0,
        "virt-xml-validate accepted an invalid model: the check is not working",
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

// qemuArgs / libvirtXml: exact flags, escaping, errors; libvirt XML well-formedness and, when
// libvirt's virt-xml-validate is installed (Debian: libvirt-clients + libxml2-utils, installed by
// lab/setup.sh), validation of a whole domain embedding the fragments against libvirt's schemas.
// Runs under `deno test -A` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { qemuArgs, qemuIds, qemuOptValue, qemuSize, shellQuote } from "../src/vm/qemu_args.ts";
import { libvirtShmemName, libvirtXml, xmlEscape } from "../src/vm/libvirt_xml.ts";
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

test("libvirtXml: channel only, well-formed, right elements", () => {
  const els = parseXml(libvirtXml(base));
  assert.equal(els.length, 1);
  const ch = els[0];
  assert.equal(ch.name, "channel");
  assert.deepEqual(ch.attrs, { type: "unix" });
  assert.deepEqual(child(ch, "source").attrs, { mode: "bind", path: "/run/vbus/vm1.sock" });
  assert.deepEqual(child(ch, "target").attrs, { type: "virtio", name: "org.vbus.0" });
});

test("libvirtXml: shmem named after the /dev/shm file, ivshmem-plain, size in MiB", () => {
  const els = parseXml(libvirtXml(withShm));
  assert.deepEqual(els.map((e) => e.name), ["channel", "shmem"]);
  const shm = els[1];
  assert.deepEqual(shm.attrs, { name: "vbus-vm1" });
  assert.deepEqual(child(shm, "model").attrs, { type: "ivshmem-plain" });
  const size = child(shm, "size");
  assert.deepEqual(size.attrs, { unit: "M" });
  assert.equal(size.text, "16");
  assert.equal(libvirtShmemName(withShm), "vbus-vm1");
  assert.equal(libvirtShmemName(base), undefined);
});

test("libvirtXml: escaping and clear errors", () => {
  const els = parseXml(libvirtXml({ ...base, socket: "/run/it's&<x>.sock" }));
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

const validator = whichSync("virt-xml-validate") && whichSync("xmllint");
const skipReason = validator
  ? false
  : "virt-xml-validate or xmllint not installed (Debian packages " +
    "libvirt-clients and libxml2-utils; `sudo bash lab/setup.sh` installs them)";
if (skipReason) console.log(`SKIP libvirt schema validation: ${skipReason}`);

test("libvirtXml: a domain embedding the fragments passes libvirt's virt-xml-validate", {
  skip: skipReason,
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "vbus-xml-"));
  try {
    const domain = (devices: string) =>
      `<domain type='kvm'>\n  <name>vbus-test</name>\n  <memory unit='MiB'>256</memory>\n` +
      `  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n  </os>\n  <devices>\n` +
      devices.replace(/^/gm, "    ") + `  </devices>\n</domain>\n`;
    const cases: [string, string][] = [
      ["channel", libvirtXml(base)],
      ["channel+shmem", libvirtXml(withShm)],
      [
        "two VMs' fragments",
        libvirtXml(withShm) +
        libvirtXml({ ...base, name: "b", socket: "/run/b.sock", port: "org.vbus.1" }),
      ],
    ];
    for (const [what, frag] of cases) {
      const file = join(dir, "domain.xml");
      writeFileSync(file, domain(frag));
      const r = spawnSync("virt-xml-validate", [file, "domain"], { encoding: "utf8" });
      assert.equal(
        r.status,
        0,
        `${what}: virt-xml-validate failed:\n${r.stdout}${r.stderr}\n${domain(frag)}`,
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
});

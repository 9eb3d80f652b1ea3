#!/usr/bin/env bash
# vbus micro-VM lab setup: installs what the lab needs (only if missing) and builds
#   lab/build/vmlinux          uncompressed guest kernel (PVH entry, boots with qboot in ~4 s under TCG)
#   lab/build/initramfs.cpio.gz busybox-static + virtio/9p modules (+ virtio_net, vsock: loaded on
#                              request) + lab/guest-init.sh as /init
#   lab/build/stamp            what was built from what (lab/vm.ts compares it to decide staleness)
# Idempotent: a second run with nothing changed only checks and exits.
# Usage: sudo bash lab/setup.sh [--force]
# Env:   VBUS_LAB_KERNEL=<version>  pick a kernel from /boot (default: the newest vmlinuz-*)
#        VBUS_LAB_NO_APT=1          never call apt-get (fail if something is missing)
set -euo pipefail

t0=$(date +%s.%N)
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD="$LAB_DIR/build"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

say() { printf '[lab/setup] %s\n' "$*"; }
die() { printf '[lab/setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages
REQUIRED=(qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils)
# Optional: virt-xml-validate (libvirt-clients) + xmllint (libxml2-utils) let tests/vm_args_test.ts
# validate the generated libvirt XML against libvirt's own RelaxNG schemas.
OPTIONAL=(libvirt-clients libxml2-utils)

missing_pkgs() {
  local p out=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || out+=("$p")
  done
  echo "${out[@]:-}"
}

apt_install() {
  # DPkg::Lock::Timeout: wait for another apt/dpkg (shared machines) instead of failing.
  if [[ ! -d /var/lib/apt/lists ]] || [[ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@" >/dev/null
}

need=$(missing_pkgs "${REQUIRED[@]}")
if [[ -n "$need" ]]; then
  [[ "${VBUS_LAB_NO_APT:-}" == 1 ]] && die "missing packages: $need (VBUS_LAB_NO_APT=1)"
  [[ $EUID -eq 0 ]] || die "missing packages: $need; run as root: sudo bash $0"
  say "installing: $need"
  apt_install $need || die "apt-get install $need failed"
else
  say "packages present: ${REQUIRED[*]}"
fi
opt=$(missing_pkgs "${OPTIONAL[@]}")
if [[ -n "$opt" && "${VBUS_LAB_NO_APT:-}" != 1 && $EUID -eq 0 ]]; then
  say "installing optional (libvirt XML validation): $opt"
  apt_install $opt || say "WARNING: could not install $opt; libvirt XML validation will be skipped"
fi

# ---------------------------------------------------------------- kernel choice
if [[ -n "${VBUS_LAB_KERNEL:-}" ]]; then
  KVER="$VBUS_LAB_KERNEL"
else
  KVER=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n1)
fi
[[ -n "$KVER" && -f "/boot/vmlinuz-$KVER" ]] || die "no /boot/vmlinuz-* found (is linux-image-amd64 installed?)"
[[ -r "/boot/vmlinuz-$KVER" ]] || die "cannot read /boot/vmlinuz-$KVER (Debian installs it mode 0600): run as root"
MODDIR="/lib/modules/$KVER"
[[ -f "$MODDIR/modules.dep" ]] || die "$MODDIR/modules.dep missing: kernel $KVER has no modules installed"
[[ -f /usr/share/qemu/qboot.rom ]] || die "/usr/share/qemu/qboot.rom missing (package qemu-system-data?)"
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing (package busybox-static)"
! ldd "$BUSYBOX" >/dev/null 2>&1 ||
  die "$BUSYBOX is not statically linked (install busybox-static, not busybox)"

# Identity of what we would build: kernel version + contents of this script and the guest init.
INPUT_HASH=$(cat "$LAB_DIR/setup.sh" "$LAB_DIR/guest-init.sh" | sha256sum | cut -c1-16)
WANT_STAMP="kernel=$KVER inputs=$INPUT_HASH"
if [[ $FORCE == 0 && -f "$BUILD/stamp" && -f "$BUILD/vmlinux" && -f "$BUILD/initramfs.cpio.gz" ]] &&
  [[ "$(cat "$BUILD/stamp")" == "$WANT_STAMP" ]]; then
  say "build up to date ($WANT_STAMP)"
  say "done in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
  exit 0
fi

mkdir -p "$BUILD"
WORK=$(mktemp -d "$BUILD/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- vmlinux
# Same method as the kernel's scripts/extract-vmlinux: find the compressed stream's magic bytes in
# the bzImage and decompress from there; keep the first candidate that yields an ELF file.
extract_vmlinux() {
  local img=$1 out=$2 magic tool pos
  for spec in "fd377a585a00:xz -dc" "28b52ffd:zstd -dc" "1f8b08:gzip -dc"; do
    magic=${spec%%:*}
    tool=${spec#*:}
    command -v "${tool%% *}" >/dev/null || continue
    # grep -obUaP prints byte offsets of every match
    local pat
    pat=$(echo "$magic" | sed 's/../\\x&/g')
    for pos in $(LC_ALL=C grep -obUaP "$pat" "$img" 2>/dev/null | cut -d: -f1); do
      tail -c +$((pos + 1)) "$img" | $tool >"$out" 2>/dev/null || true
      if [[ -s "$out" ]] && head -c 4 "$out" | grep -q $'\x7fELF'; then
        echo "$pos ${tool%% *}"
        return 0
      fi
    done
  done
  return 1
}
say "extracting uncompressed vmlinux from /boot/vmlinuz-$KVER"
found=$(extract_vmlinux "/boot/vmlinuz-$KVER" "$WORK/vmlinux") ||
  die "could not find a compressed ELF kernel inside /boot/vmlinuz-$KVER"
say "  stream at byte ${found% *}, decompressed with ${found#* } ($(du -h "$WORK/vmlinux" | cut -f1))"

# ---------------------------------------------------------------- initramfs
# Three load lists: the base set /init always loads, and the network and vsock sets it loads only
# when the boot asks for them (lab/net.ts). Each list holds only what the lists before it lack.
WANT_MODULES=(virtio_pci virtio_console 9pnet_virtio 9p)
NET_MODULES=(virtio_net)
VSOCK_MODULES=(vmw_vsock_virtio_transport)
declare -A SEEN=()
ORDER=()
dep_of() { # prints the dependency list of module path $1 (relative to MODDIR)
  awk -v m="$1:" '$1 == m { for (i = 2; i <= NF; i++) print $i }' "$MODDIR/modules.dep"
}
path_of() { # module name -> path relative to MODDIR
  local n=$1 alt=${1//_/-}
  grep -E "(^|/)($n|$alt)\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -n1 | cut -d: -f1
}
visit() { # depth-first: dependencies first (modules.dep lists them with the deepest last)
  local p=$1 deps d i
  [[ -n "${SEEN[$p]:-}" ]] && return 0
  SEEN[$p]=1
  mapfile -t deps < <(dep_of "$p")
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do visit "${deps[$i]}"; done
  ORDER+=("$p")
}
resolve_list() { # module names -> ORDER (paths, load order), skipping what earlier lists have
  local m p
  ORDER=()
  for m in "$@"; do
    p=$(path_of "$m")
    [[ -n "$p" ]] || die "module $m not found in $MODDIR/modules.dep"
    visit "$p"
  done
}
resolve_list "${WANT_MODULES[@]}"
BASE_ORDER=("${ORDER[@]}")
resolve_list "${NET_MODULES[@]}"
NET_ORDER=("${ORDER[@]}")
resolve_list "${VSOCK_MODULES[@]}"
VSOCK_ORDER=("${ORDER[@]}")

ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,proc,sys,dev,tmp,run,newroot,vbusrun,modules,etc}
cp "$BUSYBOX" "$ROOT/bin/busybox"
cp "$LAB_DIR/guest-init.sh" "$ROOT/init"
chmod 755 "$ROOT/init" "$ROOT/bin/busybox"
SIG_MAGIC='~Module signature appended~'
add_module() { # copy module path $1 into the initramfs (decompressed, unsigned), append to list $2
  local p=$1 list=$2 name src f size siglen
  name=$(basename "$p")
  src="$MODDIR/$p"
  case "$name" in
  *.ko.xz) xz -dc "$src" >"$ROOT/modules/${name%.xz}"; name=${name%.xz} ;;
  *.ko.zst) zstd -qdc "$src" >"$ROOT/modules/${name%.zst}"; name=${name%.zst} ;;
  *.ko.gz) gzip -dc "$src" >"$ROOT/modules/${name%.gz}"; name=${name%.gz} ;;
  *) cp "$src" "$ROOT/modules/$name" ;;
  esac
  # Strip the appended signature (checking RSA under TCG is slow). Layout at the end of the file:
  # [signature][struct module_signature, 12 bytes, sig_len = big-endian u32 in its last 4][magic, 28].
  # Skipped when the kernel enforces signatures.
  f="$ROOT/modules/$name"
  if ! grep -q '^CONFIG_MODULE_SIG_FORCE=y' "/boot/config-$KVER" 2>/dev/null &&
    [[ "$(tail -c 28 "$f")" == "$SIG_MAGIC"* ]]; then
    size=$(stat -c %s "$f")
    siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print ($1*16777216)+($2*65536)+($3*256)+$4}')
    if ((siglen > 0 && siglen < size)); then
      truncate -s $((size - 28 - 12 - siglen)) "$f"
    fi
  fi
  echo "$name" >>"$ROOT/modules/$list"
}
: >"$ROOT/modules/order"
: >"$ROOT/modules/net.order"
: >"$ROOT/modules/vsock.order"
for p in "${BASE_ORDER[@]}"; do add_module "$p" order; done
for p in "${NET_ORDER[@]}"; do add_module "$p" net.order; done
for p in "${VSOCK_ORDER[@]}"; do add_module "$p" vsock.order; done
say "  modules (load order): $(tr '\n' ' ' <"$ROOT/modules/order")"
say "  network modules: $(tr '\n' ' ' <"$ROOT/modules/net.order"); vsock modules: $(tr '\n' ' ' <"$ROOT/modules/vsock.order")"

(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$WORK/initramfs.cpio.gz"
mv "$WORK/vmlinux" "$BUILD/vmlinux"
mv "$WORK/initramfs.cpio.gz" "$BUILD/initramfs.cpio.gz"
rm -f "$BUILD/accel.json" # the kernel may have changed: redo the accelerator probe
echo "$WANT_STAMP" >"$BUILD/stamp"
say "built $BUILD/vmlinux ($(du -h "$BUILD/vmlinux" | cut -f1)) and initramfs.cpio.gz ($(du -h "$BUILD/initramfs.cpio.gz" | cut -f1)) for kernel $KVER"
say "done in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"

#!/bin/busybox sh
# /init of the vbus lab initramfs (built by lab/setup.sh; booted by lab/vm.ts).
#
# 1. load the virtio + 9p modules (modules/order, modules.dep order); with VBUS_NET_ADDR in the
#    config also virtio_net (modules/net.order) and eth0 (static address, default route, lo up);
#    with VBUS_VSOCK=1 the virtio vsock transport (modules/vsock.order)
# 2. mount the host root read-only over 9p (tag "hostroot") on /newroot
# 3. mount the per-boot run directory (writable 9p, tag "vbusrun"), path from vbus.run=<path>;
#    it holds: config (shell variables), binds (host paths to re-expose, one per line),
#    shares ("TAG PATH" writable 9p shares, one per line), script.sh (the command to run)
# 4. bind /proc /sys /dev, tmpfs on /tmp /run /dev/shm, re-expose binds hidden by those tmpfs
# 5. create /dev/virtio-ports/NAME -> ../vportNpM (no udev here)
# 6. chroot, run script.sh with cwd = VBUS_CWD under an in-guest timeout
# 7. print "VBUS-EXIT-CODE=<n>", write it to <run>/exit_code, poweroff -f
# Console markers (parsed by lab/vm.ts): VBUS-INIT, VBUS-READY, VBUS-TIMEOUT, VBUS-ERROR, VBUS-EXIT-CODE.

/bin/busybox mkdir -p /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

uptime_s() { cut -d' ' -f1 /proc/uptime; }
finish() {
  echo "$1" >/vbusrun/exit_code 2>/dev/null
  sync
  echo "VBUS-EXIT-CODE=$1"
  poweroff -f
  sleep 5
}
fail() {
  echo "VBUS-ERROR: $*"
  finish 250
}

echo "VBUS-INIT uptime=$(uptime_s)"

for m in $(cat /modules/order); do
  insmod "/modules/$m" || fail "insmod $m failed"
done

P9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$P9,cache=loose,ro" hostroot /newroot || fail "cannot mount 9p tag hostroot (is -virtfs ...mount_tag=hostroot given?)"

RUN=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
  vbus.run=*) RUN="${arg#vbus.run=}" ;;
  esac
done
VBUS_TIMEOUT=60
VBUS_CWD=/
VBUS_PORTS=""
VBUS_DEADLINE=""
VBUS_NET_ADDR=""
VBUS_NET_GW=""
VBUS_VSOCK=""
if [ -n "$RUN" ]; then
  mount -t 9p -o "$P9" vbusrun /vbusrun || fail "cannot mount 9p tag vbusrun (run directory $RUN)"
  [ -f /vbusrun/config ] && . /vbusrun/config
fi

ip link set lo up 2>/dev/null
# The NIC (lab/net.ts): QEMU user networking with restrict=on; static address, no DHCP/DNS.
if [ -n "$VBUS_NET_ADDR" ]; then
  for m in $(cat /modules/net.order); do
    insmod "/modules/$m" || fail "insmod $m failed"
  done
  t=0
  while [ ! -e /sys/class/net/eth0 ]; do
    t=$((t + 1))
    [ "$t" -ge 100 ] && fail "no eth0 5 s after loading virtio_net (is the network option's -device given?)"
    usleep 50000
  done
  ip addr add "$VBUS_NET_ADDR" dev eth0 || fail "ip addr add $VBUS_NET_ADDR dev eth0 failed"
  ip link set eth0 up || fail "ip link set eth0 up failed"
  ip route add default via "$VBUS_NET_GW" dev eth0 || fail "ip route add default via $VBUS_NET_GW failed"
  echo "VBUS-NET eth0 $VBUS_NET_ADDR via $VBUS_NET_GW"
fi
if [ "$VBUS_VSOCK" = 1 ]; then
  for m in $(cat /modules/vsock.order); do
    insmod "/modules/$m" || fail "insmod $m failed"
  done
fi

# Stage read-only binds now: host paths under /tmp, /run, /dev/shm vanish once the tmpfs go on.
i=0
if [ -f /vbusrun/binds ]; then
  while IFS= read -r p; do
    [ -z "$p" ] && continue
    i=$((i + 1))
    mkdir -p "/stage/$i"
    mount --bind "/newroot$p" "/stage/$i" || fail "bind: host path $p not visible in the guest"
    echo "$p" >"/stage/$i.path"
  done </vbusrun/binds
fi

mount --bind /proc /newroot/proc
mount --bind /sys /newroot/sys
mount --bind /dev /newroot/dev
mkdir -p /dev/shm /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm

n=0
while [ "$n" -lt "$i" ]; do
  n=$((n + 1))
  p=$(cat "/stage/$n.path")
  mkdir -p "/newroot$p" 2>/dev/null
  mount --bind "/stage/$n" "/newroot$p" || fail "bind: cannot mount $p in the guest (parent not writable?)"
done
if [ -f /vbusrun/shares ]; then
  while read -r tag p; do
    [ -z "$tag" ] && continue
    mkdir -p "/newroot$p" 2>/dev/null
    mount -t 9p -o "$P9" "$tag" "/newroot$p" || fail "cannot mount writable share $tag at $p"
  done </vbusrun/shares
fi
if [ -n "$RUN" ]; then
  mkdir -p "/newroot$RUN" 2>/dev/null
  mount --bind /vbusrun "/newroot$RUN" || fail "cannot expose run directory $RUN"
fi

# virtio-serial port names appear asynchronously in sysfs; no udev, so make the links ourselves.
mkdir -p /dev/virtio-ports
t=0
while :; do
  for d in /sys/class/virtio-ports/vport*; do
    [ -e "$d/name" ] || continue
    name=$(cat "$d/name")
    [ -n "$name" ] && [ ! -e "/dev/virtio-ports/$name" ] && ln -s "../${d##*/}" "/dev/virtio-ports/$name"
  done
  all=1
  for want in $VBUS_PORTS; do
    [ -e "/dev/virtio-ports/$want" ] || all=0
  done
  [ "$all" = 1 ] && break
  t=$((t + 1))
  [ "$t" -ge 100 ] && {
    echo "VBUS-ERROR: virtio ports missing after 5 s (want: $VBUS_PORTS; have: $(ls /dev/virtio-ports))"
    break
  }
  usleep 50000
done

mkdir -p /newroot/tmp/home
# In-guest bound: VBUS_TIMEOUT seconds, shortened to end a little before the host's own kill
# (VBUS_DEADLINE, host epoch seconds; the guest clock comes from the RTC = host time) so that a
# slow boot still gets a clean VBUS-TIMEOUT/VBUS-EXIT-CODE instead of a host-side SIGKILL.
if [ -n "$VBUS_DEADLINE" ]; then
  left=$((VBUS_DEADLINE - $(date +%s)))
  [ "$left" -lt "$VBUS_TIMEOUT" ] && VBUS_TIMEOUT=$left
  [ "$VBUS_TIMEOUT" -lt 1 ] && VBUS_TIMEOUT=1
fi
echo "VBUS-READY uptime=$(uptime_s) timeout=${VBUS_TIMEOUT}s"
start=$(cut -d. -f1 /proc/uptime)
timeout -s TERM -k 2 "$VBUS_TIMEOUT" chroot /newroot /usr/bin/env -i \
  PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/tmp/home TERM=dumb LANG=C.UTF-8 \
  /bin/sh -c 'cd "$1" || exit 251; exec /bin/sh "$2" </dev/null' vbus "$VBUS_CWD" "$RUN/script.sh"
code=$?
end=$(cut -d. -f1 /proc/uptime)
if [ $((end - start)) -ge "$VBUS_TIMEOUT" ] && [ "$code" -ge 128 ]; then
  echo "VBUS-TIMEOUT after ${VBUS_TIMEOUT}s (in-guest limit)"
fi
finish "$code"

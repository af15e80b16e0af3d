#!/bin/sh
# Runs inside the nested lane's L1 for scripts/bench/clone.sh's last rows: how long a Linux clone
# takes from its start to answering its first HTTP request at its new address, vmm against QEMU
# (`-incoming`) in the same L1, with the same guest and the same vmm-agent inside it.
#
# The guest: Debian's generic kernel, the L2 initramfs with qemu_fw_cfg, the ext4 root image with
# init.sh's `web` scenario (busybox httpd: GET /cgi-bin/host answers the hostname) and vmm-agent,
# which reads the identity channel (fw_cfg opt/vmm/identity) and applies hostname, MAC, address,
# route and a gratuitous ARP when the generation in it changes. 256 MiB, one vCPU, virtio-blk and
# virtio-net over PCI, a VM generation ID, for both VMMs.
#   ours:  vmm template create (TAP of its own, --hostname web-template --ip 10.0.3.10/24), saved
#          at "web: ready"; each run: exec of `vmm run --clone-of web --net tap=hN,bridge=br0
#          --hostname web-hN --ip 10.0.3.(20+N)`.
#   qemu:  qemu-system-x86_64 -M pc -accel kvm, RAM on a share=on file, booted with an identity file
#          of the same form as vmm's (1024 bytes, NUL-padded) on fw_cfg; saved at "web: ready" (stop,
#          x-ignore-shared, migrate to exec:cat > STATE). Each run: a new identity file and a TAP
#          already on br0 (both made before the clock starts: this favours QEMU), then exec of
#          qemu-system-x86_64 -incoming defer with the RAM file mapped share=off, the root image
#          with snapshot=on (QEMU's own thin overlay) and a new vmgenid GUID; on its QMP pipe:
#          migrate-set-capabilities x-ignore-shared and events, migrate-incoming exec:cat STATE,
#          and cont once the MIGRATION event says completed.
# The clock: /proc/uptime (10 ms) read by the shell itself. "start": before the exec. "resume": ours,
# start + the "restored in X ms (since main)" vmm prints (its exec → main is left in, against us);
# QEMU, when its RESUME event is first seen in its QMP output (polled). "answer": when curl first
# gets the clone's own hostname from http://ADDRESS/cgi-bin/host; curl is run back to back (each
# try ~0.1–0.3 s of L1 time; a try before the address is up waits in ARP, and the agent's
# gratuitous ARP releases it). Between runs each clone is stopped and waited for.
# Prints one line per run: "http-bench: VMM run=N start_to_answer=MS resume_to_answer=MS
# restore=MS tries=K agent=MS" (agent: what vmm-agent reported for applying the identity).
# usage: clone-http-inner.sh RUNS
runs=${1:-5}
kernel=/files/vmlinuz-generic initrd=/files/initramfs-generic.cpio
ipr=/files/bin/ip
qemu=/files/bin/qemu-system-x86_64
work=/tmp/http-bench
rm -rf "$work"
mkdir -p "$work"
export VMM_STATE_DIR="$work/state"
export TMPDIR="$work"
cmdline="console=ttyS0 quiet vmm.root=/dev/vda vmm.scenario=web"
fail=0
bad() { echo "http-bench: FAIL $*"; fail=1; }
show() { sed 's/^/  | /' "$@"; }
# stamp VAR: VAR = L1's uptime in ms (no fork: read is the shell's own).
stamp() { read -r _u _r </proc/uptime; _c=${_u%.*}${_u#*.}; eval "$1=\$((_c * 10))"; }
# wait_host ADDRESS HOSTNAME SECONDS: until http://ADDRESS/cgi-bin/host says HOSTNAME; tries in $tries.
wait_host() {
  stamp _now; _end=$((_now + $3 * 1000)); tries=0
  while :; do
    tries=$((tries + 1))
    [ "$(curl -s --connect-timeout 2 --max-time 3 "http://$1/cgi-bin/host")" = "$2" ] && return 0
    stamp _now; [ "$_now" -lt "$_end" ] || return 1
  done
}
# wait_file FILE PATTERN SECONDS
wait_file() {
  _n=0
  while ! grep -aq "$2" "$1" 2>/dev/null; do
    _n=$((_n + 1)); [ $_n -le $(($3 * 10)) ] || return 1; sleep 0.1
  done
}
agent_ms() { grep -a "vmm-agent: applied generation" "$1" 2>/dev/null | tail -1 | sed -n 's/.* in \([0-9.]*\) ms.*/\1/p'; }
cleanup() {
  for d in "$VMM_STATE_DIR"/run/*; do [ -d "$d" ] && vmm stop --timeout 0 "$(basename "$d")" >/dev/null 2>&1; done
  pkill -9 -f qemu-system-x86_64 2>/dev/null
}
trap cleanup EXIT

ip link add br0 address 02:00:00:00:00:01 type bridge && ip addr add 10.0.3.1/24 dev br0 && ip link set br0 up || { bad "cannot make br0"; exit 1; }

# ---- ours: the template.
cp /files/rootfs.ext4 "$work/root.img"
vmm template create web --kernel "$kernel" --initrd "$initrd" --memory 256M --cmdline "$cmdline" \
  --disk path="$work/root.img" --net tap=tweb0 --hostname web-template --ip 10.0.3.10/24 --gateway 10.0.3.1 \
  --ready-on "web: ready" --timeout 300 --console "file:$work/template.console" >"$work/template.out" 2>&1 ||
  { bad "vmm template create"; show "$work/template.out" "$work/template.console"; exit 1; }
echo "http-bench: vmm template ready"

# ---- qemu: the template.
# identity FILE NAME HOSTNAME IP MAC: an identity channel file as vmm writes it (devices/fw_cfg.cpp:
# key=value lines, NUL-padded to 1024 bytes), with a new generation.
identity() {
  {
    printf 'id=%s\nname=%s\ngeneration=%s\nmac0=%s\nhostname=%s\nip=%s\ngateway=10.0.3.1\nseed=%s\ntime=%s\n' \
      "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" "$2" "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
      "$5" "$3" "$4" "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" "$(date +%s)"
    head -c 1024 /dev/zero
  } | head -c 1024 >"$1"
}
guid() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | sed 's/^\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)/\1-\2-\3-\4-/'; }
qt=$work/qemu-template
mkdir -p "$qt"
cp /files/rootfs.ext4 "$work/qroot.img"
# -cpu host: what KVM offers, as vmm gives its guests.
qcommon="-L /files/qemu -accel kvm -cpu host -smp 1 -m 256M -nodefaults -no-user-config -display none
  -kernel $kernel -initrd $initrd -device virtio-blk-pci,drive=d0"
# qemu_monitor DIR: FIFOs DIR/mon.in and DIR/mon.out for -qmp pipe:DIR/mon; fd 3 writes commands,
# DIR/mon.log collects the answers and events.
qemu_monitor() {
  mkfifo "$1/mon.in" "$1/mon.out"
  exec 3<>"$1/mon.in"
  cat 0<>"$1/mon.out" >"$1/mon.log" &
  catpid=$!
  qmp '{"execute":"qmp_capabilities"}'
}
qmp() { echo "$1" >&3; }
ignore_shared='{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-ignore-shared","state":true}]}}'
ignore_shared_events='{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-ignore-shared","state":true},{"capability":"events","state":true}]}}'
qemu_monitor_end() { exec 3>&-; kill "$catpid" 2>/dev/null; wait "$catpid" 2>/dev/null; rm -f "$1/mon.in" "$1/mon.out"; }
identity "$qt/identity" web-template web-template 10.0.3.10/24 52:54:00:10:00:01
"$ipr" tuntap add dev qt0 mode tap && "$ipr" link set qt0 up || { bad "cannot make qt0"; exit 1; }
qemu_monitor "$qt"
# shellcheck disable=SC2086
"$qemu" $qcommon -M pc,memory-backend=mem -object "memory-backend-file,id=mem,size=256M,mem-path=$qt/ram,share=on" \
  -append "$cmdline" -drive "file=$work/qroot.img,format=raw,if=none,id=d0" \
  -netdev tap,id=n0,ifname=qt0,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=52:54:00:10:00:01,romfile= \
  -fw_cfg "name=opt/vmm/identity,file=$qt/identity" -device vmgenid,guid="$(guid)" \
  -serial "file:$qt/console" -qmp "pipe:$qt/mon" 2>"$qt/qemu.err" &
qpid=$!
if ! wait_file "$qt/console" "web: ready" 300; then
  bad "QEMU template did not get ready"; show "$qt/qemu.err" "$qt/console"; exit 1
fi
qmp '{"execute":"stop"}'
qmp "$ignore_shared"
qmp "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $qt/state\"}}"
n=0
while :; do
  qmp '{"execute":"query-migrate"}'; sleep 0.2
  grep -aq '"status": "completed"' "$qt/mon.log" && break
  n=$((n + 1))
  [ $n -lt 300 ] && ! grep -aq '"status": "failed"\|"error"' "$qt/mon.log" || { bad "QEMU template save"; show "$qt/mon.log" "$qt/qemu.err"; exit 1; }
done
qmp '{"execute":"quit"}'
wait "$qpid"
qemu_monitor_end "$qt"
"$ipr" link del qt0
echo "http-bench: qemu template ready ($(grep -a "vmm-agent: applied" "$qt/console" | tail -1 | tr -d '\r'))"

# ---- the runs, alternating.
ours_run() {
  name=h$1 addr=10.0.3.$((20 + $1))
  stamp t0
  vmm run --clone-of web --name "$name" --net "tap=$name,bridge=br0" --hostname "web-$name" --ip "$addr" \
    --console "file:$work/$name.console" </dev/null >"$work/$name.out" 2>&1 &
  pid=$!
  if ! wait_host "$addr" "web-$name" 60; then
    bad "ours run $1: web-$name never answered at $addr"; show "$work/$name.out" "$work/$name.console"; return
  fi
  stamp t1
  restore=$(sed -n 's/.*restored in \([0-9.]*\) ms.*/\1/p' "$work/$name.out" | cut -d. -f1)
  echo "http-bench: ours run=$1 start_to_answer=$((t1 - t0)) resume_to_answer=$((t1 - t0 - ${restore:-0})) restore=${restore:-?} tries=$tries agent=$(agent_ms "$work/$name.console")"
  vmm stop --timeout 0 "$name" >"$work/$name.stop" 2>&1 || { bad "vmm stop $name"; show "$work/$name.stop"; kill -9 "$pid"; }
  wait "$pid"
}
qemu_run() {
  name=q$1 addr=10.0.3.$((40 + $1)) mac=52:54:00:10:01:$(printf %02x "$1")
  d=$work/$name
  mkdir -p "$d"
  identity "$d/identity" "$name" "web-$name" "$addr/24" "$mac"
  "$ipr" tuntap add dev "$name" mode tap && "$ipr" link set "$name" master br0 up || { bad "cannot make $name"; return; }
  qemu_monitor "$d"
  stamp t0
  # shellcheck disable=SC2086
  "$qemu" $qcommon -M pc,memory-backend=mem -object "memory-backend-file,id=mem,size=256M,mem-path=$qt/ram,share=off" \
    -append "$cmdline" -drive "file=$work/qroot.img,format=raw,if=none,id=d0,snapshot=on" \
    -netdev "tap,id=n0,ifname=$name,script=no,downscript=no" -device virtio-net-pci,netdev=n0,mac=52:54:00:10:00:01,romfile= \
    -fw_cfg "name=opt/vmm/identity,file=$d/identity" -device vmgenid,guid="$(guid)" \
    -serial "file:$d/console" -qmp "pipe:$d/mon" -incoming defer 2>"$d/qemu.err" &
  qpid=$!
  qmp "$ignore_shared_events"
  qmp "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"exec:cat $qt/state\"}}"
  # The template was stopped when saved, so its clone waits paused once the state is in (the
  # MIGRATION event says completed); cont, and the RESUME event says it runs.
  _end=$((t0 + 60000)) _sent=0
  while :; do
    grep -aq '"event": "RESUME"' "$d/mon.log" && break
    if [ $_sent = 0 ] && grep -aq '"status": "completed"' "$d/mon.log"; then qmp '{"execute":"cont"}'; _sent=1; fi
    stamp tr
    [ "$tr" -lt "$_end" ] && kill -0 "$qpid" 2>/dev/null ||
      { bad "qemu run $1: not running after 60 s"; show "$d/mon.log" "$d/qemu.err"; kill -9 "$qpid"; qemu_monitor_end "$d"; return; }
  done
  stamp tr
  if ! wait_host "$addr" "web-$name" 60; then
    bad "qemu run $1: web-$name never answered at $addr"; show "$d/qemu.err" "$d/console"
  else
    stamp t1
    echo "http-bench: qemu run=$1 start_to_answer=$((t1 - t0)) resume_to_answer=$((t1 - tr)) restore=$((tr - t0)) tries=$tries agent=$(agent_ms "$d/console")"
  fi
  qmp '{"execute":"quit"}'
  wait "$qpid"
  qemu_monitor_end "$d"
  "$ipr" link del "$name"
}
# The first of each is a warm-up (page cache, the first exec of each binary).
i=0
while [ $i -le "$runs" ]; do
  ours_run $i
  qemu_run $i
  i=$((i + 1))
done
exit $fail

#!/bin/sh
# A pause, a snapshot and a fork while frames flood the VM's TAP. The frames are longer than the
# guest's receive buffers (the TAP's MTU is 9000, the test guest's buffers 2 KiB), so the device reads
# each and drops it, its buffers staying the driver's: the flood is consumed as fast as it comes,
# paused guest or not. Each operation must complete within 20 s, and the guest answer ARP after.
# (One sender here does not outpace the device's reads, so this does not reach the bounds that
# would keep an endless flood from holding the I/O thread or a pause: a receive pass reads one
# ring's worth, unit test "receive: a pass reads one ring's worth of frames ..."; Machine::quiesce
# serves at most a few rounds of what is ready.)
# Runs in a network namespace of its own (unless VMM_TEST_INSIDE says it is in one already, or in a
# machine of its own: the nested lane's L1). FLOOD: tests/guest/frame-flood.c's program.
# usage: pause-flood.sh VMM TESTGUEST FLOOD [--needs-kvm]
vmm=$1 guest=$2 flood=$3
if [ "${4:-}" = --needs-kvm ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  echo "SKIP: /dev/kvm is not usable here"; exit 77
fi
if [ -z "${VMM_TEST_INSIDE:-}" ]; then  # (set when it runs itself again inside its namespace)
  ns=vmmflood$$
  ip netns add $ns || { echo "SKIP: cannot create a network namespace"; exit 77; }
  # No IPv6 on the TAP: its own frames would be the guest's first (see net-scenario.sh).
  ip netns exec $ns sh -c 'for c in all default; do
    [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6 || exit 1; done'
  ip netns exec $ns env VMM_TEST_INSIDE=1 sh "$0" "$vmm" "$guest" "$flood"
  status=$?
  ip netns delete $ns
  exit $status
fi

work=$(mktemp -d /var/tmp/vmm-flood.XXXXXX)
export VMM_STATE_DIR="$work/state"
tap=floodtap0
fail=0
bad() { echo "pause-flood: FAIL: $*"; fail=1; }
flooder=
cleanup() {
  [ -n "$flooder" ] && kill $flooder 2>/dev/null
  for c in $(ls "$VMM_STATE_DIR/run" 2>/dev/null); do "$vmm" stop "$c" --timeout 0 >/dev/null 2>&1; done
  wait
  rm -rf "$work"
}
trap cleanup EXIT

# Frames of 3000 bytes, broadcast into the TAP from the host side as fast as they go, until killed.
"$vmm" run --kernel "$guest" --memory 64M --cmdline net-serve --name flood --net "tap=$tap" --console stdio \
  </dev/null >"$work/out" 2>"$work/err" &
i=0
until grep -q "net-serve: ready" "$work/out" 2>/dev/null && [ -S "$VMM_STATE_DIR/run/flood/api.sock" ]; do
  i=$((i + 1))
  [ $i -gt 300 ] && { cat "$work/err"; bad "the VM did not start"; exit 1; }
  sleep 0.1
done
ip addr add 10.0.2.1/24 dev $tap
ip link set $tap mtu 9000 up
"$flood" $tap &
flooder=$!
# (The TAP's tx: what vmm read from it. Within 1 s on the direct lane; L1's TCG is slower.)
i=0
until [ "$(cat /sys/class/net/$tap/statistics/tx_packets)" -gt 1000 ] || [ $i -ge 100 ]; do
  i=$((i + 1)); sleep 0.1
done
read_by_vmm=$(cat /sys/class/net/$tap/statistics/tx_packets)
[ "$read_by_vmm" -gt 1000 ] || bad "the device did not read the flood ($read_by_vmm frames in 10 s)"

# Each operation within 20 s.
timed() {
  timeout 20 "$vmm" "$@" >"$work/op" 2>&1
  st=$?
  [ $st = 0 ] || { cat "$work/op"; bad "vmm $1 under a flood: status $st"; }
}
timed pause flood
timed resume flood
timed snapshot flood "$work/tmpl"
[ -f "$work/tmpl/manifest.json" ] || bad "the snapshot wrote no template"
timed fork flood --net "tap=fk{i}" --ip 10.0.2.50
kill $flooder
wait $flooder 2>/dev/null
flooder=
# The guest still answers.
busybox arping -c 1 -w 10 -I $tap 10.0.2.2 >"$work/arping" 2>&1 || { cat "$work/arping"; bad "the guest no longer answers ARP"; }
[ $fail = 0 ] && echo "pause-flood: OK (pause, resume, snapshot and fork while the device read and dropped $read_by_vmm+ frames)"
exit $fail

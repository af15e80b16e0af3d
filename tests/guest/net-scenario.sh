#!/bin/sh
# The test guest's virtio-net scenarios against a TAP, in either lane (POSIX sh; busybox's ip and
# arping work in both). net-echo: the host arpings the guest (10.0.2.2) from the TAP (10.0.2.1) and
# must get three replies. net-send: the guest sends three ARP frames after the host's first frame,
# and the host's side of the TAP must count them (rx_packets, rx_bytes).
# usage: net-scenario.sh VMM TESTGUEST net-echo|net-send [--netns] [--needs-kvm]
#   --netns   run in a network namespace of its own, removed afterwards (on a shared host)
vmm=$1 guest=$2 scenario=$3
shift 3
netns=0
for a in "$@"; do
  case "$a" in
    --netns) netns=1 ;;
    --needs-kvm) { [ -r /dev/kvm ] && [ -w /dev/kvm ]; } || { echo "SKIP: /dev/kvm is not usable here"; exit 77; } ;;
  esac
done
if [ $netns = 1 ]; then
  ns=vmmtest$$
  ip netns add $ns || { echo "SKIP: cannot create a network namespace"; exit 77; }
  # IPv6 off in the namespace before the TAP exists (see below); the namespace is ours to change.
  ip netns exec $ns sh -c 'for c in all default; do
    [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6 || exit 1; done' ||
    { ip netns delete $ns; echo "net-scenario $scenario: FAIL: cannot turn IPv6 off in $ns"; exit 1; }
  ip netns exec $ns sh "$0" "$vmm" "$guest" "$scenario"
  status=$?
  ip netns delete $ns
  exit $status
fi

tap=tgtap0 mac=52:54:00:00:00:02
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$vmm" run --kernel "$guest" --memory 64M --cmdline "$scenario" --net "tap=$tap,mac=$mac" \
  </dev/null >"$work/out" 2>"$work/err" &
pid=$!
i=0
until ip link show $tap >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -gt 300 ] && break; sleep 0.1
done
# No IPv6 on the TAP: the frames it would send on link-up (router solicitations, MLD reports, DAD)
# would reach the guest before ours. The TAP inherits it from the default, which the caller turned
# off before the TAP existed (the namespace above; L1's testguest-net.sh); a write to the TAP's own
# setting raced with its creation (the interface is listed before its conf directory exists).
if [ -d /proc/sys/net/ipv6 ] && [ "$(cat /proc/sys/net/ipv6/conf/default/disable_ipv6)" != 1 ]; then
  echo "net-scenario $scenario: FAIL: IPv6 is on by default here"; kill $pid; wait $pid; exit 1
fi
ip addr add 10.0.2.1/24 dev $tap
ip link set $tap up
fail=0
bad() { echo "net-scenario $scenario: FAIL: $*"; fail=1; }
case "$scenario" in
  net-echo)
    busybox arping -c 3 -w 30 -I $tap 10.0.2.2 >"$work/arping" 2>&1
    cat "$work/arping"
    grep -qi "received 3 re" "$work/arping" || bad "arping did not get 3 replies" ;;
  net-send)
    stats=/sys/class/net/$tap/statistics
    packets=$(cat $stats/rx_packets) bytes=$(cat $stats/rx_bytes)
    busybox arping -c 1 -w 2 -I $tap 10.0.2.9 >/dev/null 2>&1  # any frame starts the guest
    i=0
    until grep -q "net-send: sent" "$work/out"; do
      i=$((i + 1)); [ $i -gt 100 ] && break; sleep 0.1
    done
    sleep 0.5
    dp=$(( $(cat $stats/rx_packets) - packets )) db=$(( $(cat $stats/rx_bytes) - bytes ))
    echo "net-send: the host's side of $tap received $dp frames, $db bytes"
    [ $dp -ge 3 ] && [ $db -ge 180 ] || bad "the host did not receive the guest's 3 frames"
    busybox arping -c 1 -w 2 -I $tap 10.0.2.9 >/dev/null 2>&1 ;;  # lets the guest finish
esac
i=0
while kill -0 $pid 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 300 ] && { kill $pid; bad "the guest did not finish"; break; }
  sleep 0.1
done
wait $pid
status=$?
[ $status = 1 ] || bad "exit status $status, expected 1 (the guest's 0)"
grep -q "net: mac $mac" "$work/out" || bad "the guest did not read its MAC from the config space"
if [ $fail != 0 ]; then
  echo "--- console ---"; cat "$work/out"; echo "--- stderr ---"; cat "$work/err"
else
  grep "$scenario:" "$work/out"
  echo "net-scenario $scenario: PASS"
fi
exit $fail

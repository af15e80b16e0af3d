#!/bin/sh
# Runs inside the nested lane's L1: the test guest's virtio-net scenarios against a TAP
# (tests/guest/net-scenario.sh; L1 is a network of its own, so no namespace is needed), then a
# pause, a snapshot and a fork while oversized frames flood the TAP (tests/guest/pause-flood.sh,
# guest.pause_flood's checks; frame-flood in /files/bin).
# No IPv6 on the TAPs made from now on: its link-up chatter (router solicitations, MLD reports)
# would reach the guest ahead of the host's frames (net-scenario.sh also turns it off per TAP).
for c in all default; do
  [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6
done
fail=0
for s in net-echo net-send; do
  sh /files/net-scenario.sh /files/bin/vmm /files/testguest.elf $s || fail=1
done
mkdir -p /var/tmp
VMM_TEST_INSIDE=1 sh /files/pause-flood.sh /files/bin/vmm /files/testguest.elf /files/bin/frame-flood || fail=1
[ $fail = 0 ] && echo "testguest-net: PASS"
exit $fail

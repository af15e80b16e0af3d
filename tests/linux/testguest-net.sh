#!/bin/sh
# Runs inside the nested lane's L1: the test guest's virtio-net scenarios against a TAP
# (tests/guest/net-scenario.sh; L1 is a network of its own, so no namespace is needed).
fail=0
for s in net-echo net-send; do
  sh /files/net-scenario.sh /files/bin/vmm /files/testguest.elf $s || fail=1
done
[ $fail = 0 ] && echo "testguest-net: PASS"
exit $fail

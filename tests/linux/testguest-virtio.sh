#!/bin/sh
# Runs inside the nested lane's L1: every virtio-blk scenario of the test guest
# (tests/guest/blk-scenarios.txt) through tests/guest/blk-scenario.sh, on real KVM semantics.
cd /files || exit 1
fail=0 n=0
while IFS='|' read -r scenario image text err; do
  case "$scenario" in ''|'#'*) continue ;; esac
  n=$((n + 1))
  sh /files/blk-scenario.sh /files/bin/vmm /files/testguest.elf /files/base.img "/files/$image.img" \
    "$scenario" "$text" "$err" || fail=1
done </files/blk-scenarios.txt
echo "testguest-virtio: $n scenarios"
[ $fail = 0 ] && echo "testguest-virtio: PASS"
exit $fail

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
# The same device on a qcow2 overlay (the engine on its worker thread, copy-on-write from a raw file).
for scenario in blk-read blk-write blk-verify blk-flush hostile-past-end; do
  line=$(grep "^$scenario|" /files/blk-scenarios.txt)
  image=$(echo "$line" | cut -d'|' -f2) text=$(echo "$line" | cut -d'|' -f3) err=$(echo "$line" | cut -d'|' -f4)
  n=$((n + 1))
  BLK_QCOW2=1 sh /files/blk-scenario.sh /files/bin/vmm /files/testguest.elf /files/base.img "/files/$image.img" \
    "$scenario" "$text" "$err" || fail=1
done </dev/null
# A disk whose flush fails (on failfs, a FUSE file system): raw, and a qcow2 overlay.
for q in 0 1; do
  n=$((n + 1))
  BLK_QCOW2=$q sh /files/blk-flush-error.sh /files/bin/vmm /files/testguest.elf /files/bin/failfs || fail=1
done
echo "testguest-virtio: $n scenarios"
[ $fail = 0 ] && echo "testguest-virtio: PASS"
exit $fail

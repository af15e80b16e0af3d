#!/bin/sh
# Runs inside the nested lane's L1: the unit tests that need a real /dev/kvm (skipped on a machine
# without one): the VM and vCPU tests, a whole machine captured and restored, a vCPU's KVM stats.
tc='vm:*,snapshot: a running machine*,kvm_stats: a fresh vCPU*'
unit_tests -tc="$tc" >/tmp/unit.out 2>&1
st=$?
cat /tmp/unit.out
[ $st = 0 ] || exit 1
if grep -q VMM_SKIP /tmp/unit.out; then echo "unit-tests: FAIL: skipped although L1 has /dev/kvm"; exit 1; fi
n=$(unit_tests -tc="$tc" -ltc | grep -cE '^(vm|snapshot|kvm_stats):')
[ "$n" -ge 7 ] || { echo "unit-tests: FAIL: only $n test cases matched"; exit 1; }
echo "unit-tests: PASS ($n test cases)"

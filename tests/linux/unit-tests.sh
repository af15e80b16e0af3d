#!/bin/sh
# Runs inside the nested lane's L1: the unit tests that need a real /dev/kvm (VM and vCPU tests,
# skipped on a machine without one).
unit_tests -tc='vm:*' || exit 1
if unit_tests -tc='vm:*' | grep -q VMM_SKIP; then echo "unit-tests: FAIL: skipped although L1 has /dev/kvm"; exit 1; fi
echo "unit-tests: PASS"

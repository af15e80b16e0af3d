#!/bin/sh
# Runs inside the nested lane's L1: live fork and the control API on real KVM
# (tests/guest/fork-scenario.sh, the same checks as guest.fork on the direct lane; curl in /files/bin).
# The scenario's own watchdog gets 270 s here (L1 is slow; run.sh ends L1 at 300 s).
VMM_TEST_LIMIT=${VMM_TEST_LIMIT:-270} PATH=/files/bin:$PATH sh /files/fork-scenario.sh /files/bin/vmm /files/testguest.elf

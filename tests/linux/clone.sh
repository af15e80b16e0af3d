#!/bin/sh
# Runs inside the nested lane's L1: templates and clones of the test guest on real KVM
# (tests/guest/clone-scenario.sh, the same checks as guest.clone on the direct lane).
VMM_CLONE_COUNT=8 sh /files/clone-scenario.sh /files/bin/vmm /files/testguest.elf

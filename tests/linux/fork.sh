#!/bin/sh
# Runs inside the nested lane's L1: live fork and the control API on real KVM
# (tests/guest/fork-scenario.sh, the same checks as guest.fork on the direct lane; curl in /files/bin).
PATH=/files/bin:$PATH sh /files/fork-scenario.sh /files/bin/vmm /files/testguest.elf

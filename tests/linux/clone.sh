#!/bin/sh
# Runs inside the nested lane's L1: templates and clones of the test guest on real KVM
# (tests/guest/clone-scenario.sh, the same checks as guest.clone on the direct lane), then a linked
# clone, a template and a full clone on a full file system (tests/guest/enospc-scenario.sh,
# guest.enospc's checks; qemu-img in /files/bin).
VMM_CLONE_COUNT=8 sh /files/clone-scenario.sh /files/bin/vmm /files/testguest.elf || exit 1
mkdir -p /var/tmp
PATH=/files/bin:$PATH sh /files/enospc-scenario.sh /files/bin/vmm /files/testguest.elf

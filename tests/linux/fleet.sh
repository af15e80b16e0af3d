#!/bin/sh
# Runs inside the nested lane's L1: fleets on real KVM (tests/guest/fleet-scenario.sh, the same
# checks as guest.fleet on the direct lane, with 10 clones: L1 has 2 GiB and two TCG vCPUs, and 20 idle clones
# there slowed each other to minutes per console line).
VMM_FLEET_COUNT=10 sh /files/fleet-scenario.sh /files/bin/vmm /files/testguest.elf

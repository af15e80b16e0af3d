#!/bin/sh
# Runs inside the nested lane's L1: clones of the test guest on networks (bridge, source-MAC filter,
# namespaces, a live fork and a warm pool on the bridge; tests/guest/clone-net-scenario.sh, the same
# checks as guest.clone_net on the direct lane). ip, bridge and nft come from the host.
sh /files/clone-net-scenario.sh /files/bin/vmm /files/testguest.elf

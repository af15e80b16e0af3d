#!/usr/bin/env bash
# Fuzzes the kernel loaders (tests/fuzz/kernel_fuzz.cpp, vmm/boot: ELF, PVH, bzImage, initrd,
# command line) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-kernel.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh kernel [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" kernel "$@"
